"""aigw chatd service."""
