"""cleanroom.server."""
