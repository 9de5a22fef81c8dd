"""aigw admin console."""
