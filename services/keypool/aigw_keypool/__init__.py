"""aigw keypool service."""
