"""Reference (plaintext) computations and small test utilities."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from cleanroom.audiences.reference import plaintext_match, row_digests

__all__ = ["eventually", "plaintext_match", "row_digests", "sha"]


def eventually(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``predicate`` holds (a bounded poll on observable state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sha(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
