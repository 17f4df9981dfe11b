"""The matching error vocabulary.

``ProtocolError`` covers messages that are well-typed but wrong for the
session (wrong round, bad sequence number, more data than declared);
``InvalidPointError`` (in ``x25519``) covers bad curve points. Both are
``ValueError`` subclasses so callers that only care about "bad input" can
catch one type; the server maps each to a gRPC status in one place.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that does not fit the session's current round or state."""


class PolicyViolation(ValueError):
    """A request the privacy policy refuses (set too small, quota spent)."""
