"""``orderflow bench``: orders per second end to end against the ceiling of this machine."""
