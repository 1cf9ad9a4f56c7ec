"""Domain errors of the service core; the servicer maps each class to one gRPC status code, in one place."""

from __future__ import annotations


class CharlmError(Exception):
    """Base class: a message a person can act on, and a machine-readable reason (google.rpc.ErrorInfo)."""

    reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata


class InvalidArgument(CharlmError):
    """A request field is out of range or malformed (INVALID_ARGUMENT); ``field`` names it."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}", reason, field=field)
        self.field = field


class NotFound(CharlmError):
    """Unknown model or session (NOT_FOUND). Reasons: MODEL_NOT_FOUND, SESSION_NOT_FOUND, SESSION_EXPIRED,
    SESSION_EVICTED."""

    reason = "NOT_FOUND"


class SessionBusy(CharlmError):
    """The session already has a stream in progress (ABORTED)."""

    reason = "SESSION_BUSY"


class ResourceExhausted(CharlmError):
    """A server limit was reached: streams, sessions, sizes (RESOURCE_EXHAUSTED)."""

    reason = "RESOURCE_EXHAUSTED"


class FailedPrecondition(CharlmError):
    """The request is valid but the state does not allow it (FAILED_PRECONDITION)."""

    reason = "FAILED_PRECONDITION"


class Unavailable(CharlmError):
    """The server is draining and takes no new work (UNAVAILABLE)."""

    reason = "DRAINING"


class Unauthenticated(CharlmError):
    """The call carries no bearer token, or one the server does not accept (UNAUTHENTICATED)."""

    reason = "UNAUTHENTICATED"
