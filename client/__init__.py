"""cleanroom.client."""
