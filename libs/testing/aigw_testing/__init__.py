"""Test support for aigw."""
