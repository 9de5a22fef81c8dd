"""Shared code for the aigw services."""

__version__ = "0.1.0"
