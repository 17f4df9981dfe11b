"""cleanroom.proto."""
