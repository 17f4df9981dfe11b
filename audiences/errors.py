"""The error of a single identifier value (shared by the normalization modules)."""

from __future__ import annotations


class InvalidIdentifier(ValueError):
    """A value that cannot be normalized; ``reason`` is a short key used for counting in reports."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
