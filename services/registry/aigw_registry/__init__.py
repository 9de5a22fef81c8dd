"""aigw registry service."""
