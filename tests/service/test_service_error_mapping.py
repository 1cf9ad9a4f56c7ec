"""The servicer's one error-mapping place: every domain error has its code; a bug is INTERNAL, never UNKNOWN."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service import errors
from service.dataplane import DataPlane
from service.logs import Call
from service.metrics import Metrics
from service.servicer import Servicer, _rpc


class Aborted(Exception):
    """What a real context.abort_with_status raises."""


class Context:
    """Records the trailing metadata an RPC sets and the status it aborts with (as a grpc.aio context would)."""

    status: grpc.Status | None = None
    trailing: tuple[tuple[str, str], ...] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "test"), ("x-request-id", "req-42"))

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


class Failing(Servicer):
    """Two RPCs, unary and streaming, that raise what they are given, on a session of a model."""

    def __init__(self) -> None:
        super().__init__(cast(DataPlane, None), Metrics(), access_log=True)

    @_rpc
    async def Unary(self, request: BaseException, context: Any, call: Call) -> None:
        call.model, call.session_id = "tiny-lstm:1", "0123456789abcdef" * 2
        raise request

    @_rpc
    async def Streaming(self, request: BaseException, context: Any, call: Call) -> AsyncIterator[int]:
        call.model, call.session_id = "tiny-lstm:1", "0123456789abcdef" * 2
        yield 1
        raise request


def error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    trailing = dict(status.trailing_metadata)
    rich = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info) and rich.code == status.code.value[0] and rich.message == status.details
    return info


@pytest.mark.parametrize(("error", "code", "reason"), [
    (errors.InvalidArgument("sampling.top_p", "1.5 is outside (0, 1]"), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_ARGUMENT"),
    (errors.NotFound("session 'x' expired", "SESSION_EXPIRED"), grpc.StatusCode.NOT_FOUND, "SESSION_EXPIRED"),
    (errors.SessionBusy("busy"), grpc.StatusCode.ABORTED, "SESSION_BUSY"),
    (errors.ResourceExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (errors.FailedPrecondition("other model", field="model"), grpc.StatusCode.FAILED_PRECONDITION,
     "FAILED_PRECONDITION"),
    (errors.Unavailable("draining"), grpc.StatusCode.UNAVAILABLE, "DRAINING"),
    (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (errors.CharlmError("odd"), grpc.StatusCode.INTERNAL, "INTERNAL"),
    (ZeroDivisionError("a bug"), grpc.StatusCode.INTERNAL, "INTERNAL"),
])
@pytest.mark.parametrize("streaming", [False, True])
async def test_each_error_maps_to_its_status(error: Exception, code: grpc.StatusCode, reason: str,
                                             streaming: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    svc, context = Failing(), Context()
    with pytest.raises(Aborted):
        if streaming:
            async for _ in svc.Streaming(error, context):
                pass
        else:
            await svc.Unary(error, context)
    assert context.status is not None and context.status.code == code
    assert context.trailing == (("x-request-id", "req-42"),)  # set at the start, and in the abort's trailers too
    assert ("x-request-id", "req-42") in context.status.trailing_metadata  # type: ignore[attr-defined]
    info = error_info(context.status)
    assert info.reason == reason and info.domain == "charlm"
    if isinstance(error, errors.InvalidArgument):
        assert info.metadata["field"] == "sampling.top_p" and "sampling.top_p" in context.status.details
    rpc = "Streaming" if streaming else "Unary"
    if isinstance(error, ZeroDivisionError):
        assert "Traceback" in caplog.text and "ZeroDivisionError" in caplog.text  # logged for whoever debugs it
        bug = next(r for r in caplog.records if r.exc_info)
        assert (bug.rpc, bug.model, bug.session) == (rpc, "tiny-lstm:1", "01234567")  # type: ignore[attr-defined]
        assert bug.request_id == "req-42" and "request id req-42" in bug.getMessage()  # type: ignore[attr-defined]
        assert "0123456789abcdef" not in caplog.text  # never the whole id: it is a bearer capability
    assert svc._metrics.requests.labels(rpc, code.name)._value.get() == 1
    assert svc._metrics.request_seconds.labels(rpc)._sum.get() > 0
    (line,) = [r for r in caplog.records if r.name == "service.access"]
    assert (line.rpc, line.code, line.session, line.request_id) == (  # type: ignore[attr-defined]
        rpc, code.name, "01234567", "req-42")
    assert str(error) in line.error  # type: ignore[attr-defined]
