"""The brand node's error vocabulary and its single mapping to gRPC status.

Services raise these (or ``ValueError`` for bad input, which includes the
matching ``ProtocolError`` and ``InvalidPointError``); only ``status_for``
decides what a client sees. Unexpected exceptions become INTERNAL with a
reference id, and their details go to the log, never to the client.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from cleanroom.matching.errors import PolicyViolation

log = logging.getLogger("cleanroom.server")


class CleanroomError(Exception):
    """Base of errors that carry their own client-facing status."""

    code = grpc.StatusCode.INTERNAL


class Unauthenticated(CleanroomError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CleanroomError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(CleanroomError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CleanroomError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CleanroomError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class BudgetExceeded(FailedPrecondition):
    """A differential-privacy release would overspend the epsilon budget."""


class ResourceExhausted(CleanroomError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(CleanroomError):
    code = grpc.StatusCode.ABORTED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for ``exc``."""
    if isinstance(exc, CleanroomError):
        return exc.code, str(exc)
    if isinstance(exc, PolicyViolation):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (reference {ref}); see the brand node's log"
