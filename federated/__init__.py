"""cleanroom.federated."""
