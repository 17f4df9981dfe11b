"""The project's error vocabulary, shared by every layer and both parties.

Raise these where the caller can act on the message: it reaches the client
as it is (a gRPC status or an HTTP problem response, mapped once per
transport at the edge: ``server/grpc_api.py`` and ``server/rest.py``). Any
other exception, a ``ValueError`` from a bug included, is an internal error:
the client gets a reference id and the details go to the brand node's log.

None of these classes knows a transport: a state machine or a service raises
``NotFound`` and never a status code.
"""

from __future__ import annotations


class CleanroomError(Exception):
    """An error whose message is meant for the caller: what was wrong, how to fix it."""


class InvalidInput(CleanroomError, ValueError):
    """The caller's input is wrong: a message, a file, a parameter.

    A ``ValueError`` too, so code that validates input the Python way keeps
    catching it; the transports only ever show the message of this class.
    """


class ProtocolError(InvalidInput):
    """A message that does not fit the session's current round or state."""


class Unauthenticated(CleanroomError):
    """No credentials, or credentials the node does not know."""


class PermissionDenied(CleanroomError):
    """Known credentials whose role may not do this."""


class NotFound(CleanroomError):
    """No such object for this tenant (another tenant's objects are never found)."""


class AlreadyExists(CleanroomError):
    """An object of that name exists and the request did not ask to replace it."""


class FailedPrecondition(CleanroomError):
    """The request is well-formed but the current state refuses it."""


class PolicyViolation(FailedPrecondition):
    """A request the privacy policy refuses (set too small, mode not allowed)."""


class BudgetExceeded(FailedPrecondition):
    """A differential-privacy release would overspend the epsilon budget."""


class ResourceExhausted(CleanroomError):
    """A quota is spent or a limit reached; it says when it renews where it can."""


class Aborted(CleanroomError):
    """The operation was interrupted by a concurrent one; retrying may succeed."""


__all__ = [
    "Aborted",
    "AlreadyExists",
    "BudgetExceeded",
    "CleanroomError",
    "FailedPrecondition",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "PolicyViolation",
    "ProtocolError",
    "ResourceExhausted",
    "Unauthenticated",
]
