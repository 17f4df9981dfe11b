"""cleanroom.matching."""
