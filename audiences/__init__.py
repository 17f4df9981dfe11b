"""cleanroom.audiences."""
