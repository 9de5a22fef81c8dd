"""aigw gateway service."""
