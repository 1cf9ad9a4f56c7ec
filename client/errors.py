"""Client exceptions: one class per gRPC status family, keeping the code, message and ErrorInfo reason."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from charlm.v1.metadata import REQUEST_ID_KEY
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


def request_id_in(metadata: Iterable[Any] | None) -> str | None:
    """The ``x-request-id`` value in a call's trailing metadata, or None."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return str(value)
    return None


class CharlmError(Exception):
    """A failed call: ``code`` (grpc.StatusCode), ``message``, the server's ErrorInfo ``reason``/``metadata``, and
    the call's ``request_id``, the one the server logs it under (None for an error raised before sending, or when
    no server answered)."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.request_id = request_id

    @property
    def status(self) -> str:
        """The status code's name, e.g. ``"NOT_FOUND"`` (``"UNKNOWN"`` when there is none)."""
        return self.code.name if self.code is not None else "UNKNOWN"

    @property
    def field(self) -> str | None:
        """The request field the server named, if any (INVALID_ARGUMENT errors)."""
        return self.metadata.get("field")

    def __str__(self) -> str:
        tag = f"{self.status}, {self.reason}" if self.reason and self.reason != self.status else self.status
        return f"{self.message} ({tag}{f'; request id {self.request_id}' if self.request_id else ''})"


class InvalidArgument(CharlmError):
    """A request field is out of range or malformed (INVALID_ARGUMENT, OUT_OF_RANGE)."""


class NotFound(CharlmError):
    """Unknown model or session; ``reason`` tells SESSION_NOT_FOUND from SESSION_EXPIRED/SESSION_EVICTED."""


class SessionBusy(CharlmError):
    """The session already has a stream in progress (ABORTED)."""


class ResourceExhausted(CharlmError):
    """A server limit was reached: streams, sessions, sizes (RESOURCE_EXHAUSTED)."""


class FailedPrecondition(CharlmError):
    """The request is valid but the state does not allow it (FAILED_PRECONDITION)."""


class Unavailable(CharlmError):
    """The server cannot be reached or is draining (UNAVAILABLE)."""


class DeadlineExceeded(CharlmError):
    """The call's deadline passed before it finished (DEADLINE_EXCEEDED)."""


class Cancelled(CharlmError):
    """The call was cancelled (CANCELLED)."""


class Unauthenticated(CharlmError):
    """Missing or rejected credentials (UNAUTHENTICATED, PERMISSION_DENIED)."""


class ServerError(CharlmError):
    """Any other status: INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS."""


_BY_CODE: dict[grpc.StatusCode, type[CharlmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ABORTED: SessionBusy,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}


def _error_info(trailing: object) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata packed in the google.rpc.Status trailer, or ("", {})."""
    for key, value in trailing or ():  # type: ignore[attr-defined]
        if key != _DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason, dict(info.metadata)
    return "", {}


def from_rpc_error(err: grpc.RpcError, rpc: str = "", request_id: str | None = None) -> CharlmError:
    """Converts a sync or asyncio gRPC error to the matching CharlmError subclass; ``rpc`` names the call.

    ``request_id`` is the id the client sent: the error's when its trailers carry none (a deadline or cancel
    on the client's side ends the call without the server's trailers, though the server logged it), except
    for UNAVAILABLE without trailers (no server answered)."""
    code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
    # Some servicers (the standard health one) set only a code; str(err) would be the call object's repr.
    message = err.details() if hasattr(err, "details") else None
    if not message:
        message = f"{rpc or 'the call'} failed with {code.name if code else 'an unknown status'} and no message"
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    reason, metadata = _error_info(trailing)
    cls = _BY_CODE.get(code, ServerError) if code is not None else ServerError
    rid = request_id_in(trailing)
    if rid is None and code != grpc.StatusCode.UNAVAILABLE:
        rid = request_id
    return cls(message, code, reason, metadata, rid)


def invalid_argument(field: str, message: str) -> InvalidArgument:
    """The error the server would send for a bad ``field``, raised locally before a request is sent."""
    return InvalidArgument(f"{field}: {message}", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                           {"field": field})
