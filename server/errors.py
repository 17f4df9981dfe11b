"""What the brand node's transports share about errors: the internal-error reference.

The error vocabulary itself is ``cleanroom.proto.errors`` (transport-free);
each transport maps it once at its edge (``grpc_api.status_for``,
``rest``'s problem responses). Anything outside that vocabulary is an
internal error: :func:`internal_reference` logs it with its traceback under a
fresh reference id, and the client sees only the id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TypeVar

from cleanroom.proto.errors import CleanroomError

T = TypeVar("T")

log = logging.getLogger("cleanroom.server")


def internal_reference(exc: BaseException) -> str:
    """Log ``exc`` under a new reference id and return the id (never its text)."""
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return ref


def internal_message(ref: str) -> str:
    return f"internal error (reference {ref}); see the brand node's log"


def nearest(table: Mapping[type[CleanroomError], T], exc: BaseException) -> T | None:
    """``table``'s entry for ``exc``'s class or its nearest ancestor; None outside it."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]  # type: ignore[index]
    return None
