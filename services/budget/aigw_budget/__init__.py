"""aigw budget service."""
