"""The gRPC servicer: with service/convert.py, the only place protobuf meets service types; errors become status
codes here alone."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors
from service.convert import (
    chat_actions,
    chat_event_to_pb,
    fed_to_pb,
    feed_chunks,
    generated_to_pb,
    params_from_pb,
    session_to_pb,
)
from service.dataplane import DataPlane
from service.logs import REQUEST_ID, Call, log_access
from service.metrics import Metrics
from service.requestid import attach, request_id, with_id
from service.requests import (
    Done,
    GenerateRequest,
)
from service.sessions import Session
from service.types import Chunk

log = logging.getLogger(__name__)

# The one place where domain errors become status codes.
_CODES: list[tuple[type[errors.CharlmError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.SessionBusy, grpc.StatusCode.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
]


def _status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> grpc.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="charlm", metadata=metadata))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def _code(e: BaseException) -> grpc.StatusCode:
    """The status of an RPC that raised ``e``: CANCELLED for a cancelled task, INTERNAL for our bugs."""
    if isinstance(e, errors.CharlmError):
        return next((c for cls, c in _CODES if isinstance(e, cls)), grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL if isinstance(e, Exception) else grpc.StatusCode.CANCELLED


def _message(e: BaseException) -> str:
    """Why an RPC failed, in a few words, for the access log."""
    if isinstance(e, errors.CharlmError):
        return e.message
    return f"{type(e).__name__}: {e}" if isinstance(e, Exception) else "cancelled"


async def _abort(e: Exception, context: Any, call: Call) -> None:  # grpc-stubs lack the aio context
    """Aborts the RPC with the rich status for ``e`` (never UNKNOWN); unexpected errors are logged."""
    if isinstance(e, errors.CharlmError):
        await abort(e, context, call.request_id)
        return
    fields = call.fields()  # rpc, request id, model, session: who hit the bug
    log.exception("unexpected error in %s (request id %s, model %r, session %r)", call.rpc, call.request_id,
                  fields.get("model", ""), fields.get("session", ""), extra=fields)
    status = _status(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}", "INTERNAL", {})
    await context.abort_with_status(with_id(status, call.request_id))


async def abort(e: errors.CharlmError, context: Any, rid: str = "") -> None:
    """Aborts a call with the rich status for ``e`` and its request id in the trailers (also for calls refused
    before the servicer: service/auth.py)."""
    status = _status(_code(e), e.message, e.reason, {k: str(v) for k, v in e.metadata.items()})
    await context.abort_with_status(with_id(status, rid))


def _call(name: str, context: Any) -> Call:
    """The Call record of an RPC just begun; its request id is the task's from now on (REQUEST_ID)."""
    call = Call(name, request_id(context.invocation_metadata()))
    REQUEST_ID.set(call.request_id)  # (each RPC runs in a task of its own: this reaches no other call)
    return call


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Maps errors to statuses, measures and (with --access-log) logs the finished RPC; for unary and streaming
    responses. ``fn`` gets the RPC's Call record to fill in as a fourth argument. The call's request id goes
    back in its trailers (service/requestid.py)."""
    name = fn.__name__

    async def fail(self: Servicer, e: BaseException, context: Any, call: Call) -> None:
        # Counted before aborting: abort sends the status, and a client may scrape /metrics right after.
        self._finished(call, _code(e).name, _message(e))
        if isinstance(e, Exception):
            await _abort(e, context, call)

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self: Servicer, request: Any, context: Any) -> AsyncIterator[Any]:
            call = _call(name, context)
            try:
                attach(context, call.request_id)
                async with contextlib.aclosing(fn(self, request, context, call)) as items:  # (see DataPlane.generate)
                    async for item in items:
                        yield item
            except BaseException as e:
                await fail(self, e, context, call)
                raise
            self._finished(call, "OK")
        return stream

    @functools.wraps(fn)
    async def unary(self: Servicer, request: Any, context: Any) -> Any:
        call = _call(name, context)
        try:
            attach(context, call.request_id)
            response = await fn(self, request, context, call)
        except BaseException as e:
            await fail(self, e, context, call)
            raise
        self._finished(call, "OK")
        return response
    return unary


# ---------------------------------------------------------------- the service

class Servicer(charlm_pb2_grpc.TextGenerationServicer):
    """charlm.v1.TextGeneration over a DataPlane. Each RPC fills in its Call once, never per message."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, access_log: bool = False) -> None:
        self._dp = dataplane
        self._metrics = metrics
        self._access_log = access_log

    def _finished(self, call: Call, code: str, error: str = "") -> None:
        seconds = time.perf_counter() - call.started
        self._metrics.request(call.rpc, code, seconds)
        if self._access_log:
            log_access(call, code, seconds, error)

    @_rpc
    async def Generate(self, request: pb.GenerateRequest, context: Any,
                       call: Call) -> AsyncIterator[pb.GenerateResponse]:
        call.model, call.session_id = request.model, request.session_id
        params = params_from_pb(request.sampling, request.max_chars, request.stop, request.logprobs)
        event: Chunk | Done | None = None
        last: Chunk | None = None
        req = GenerateRequest(request.model, request.prompt, params, request.session_id)
        async with contextlib.aclosing(self._dp.generate(req)) as events:
            async for event in events:
                if isinstance(event, Chunk) and event.final:
                    last = event  # its Finish comes next, at once: both leave in one message (one gRPC send)
                    continue
                yield generated_to_pb(event, last)
        if isinstance(event, Done):  # the last event: read once the stream has ended, not per message
            call.model, f = event.model, event.finish
            call.chars_consumed, call.chars_generated = f.prompt_chars, f.generated_chars

    @_rpc
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any, call: Call) -> pb.Session:
        call.model = request.model
        session = await self._dp.create_session(request.model, request.prime, request.ttl_seconds)
        call.model, call.session_id, call.chars_consumed = session.model, session.id, session.state.chars_consumed
        return session_to_pb(session)

    @_rpc
    async def GetSession(self, request: pb.GetSessionRequest, context: Any, call: Call) -> pb.Session:
        call.session_id = request.session_id
        return self._described(call, self._dp.get_session(request.session_id))

    @_rpc
    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any,
                           call: Call) -> pb.ListSessionsResponse:
        call.model = request.model
        return pb.ListSessionsResponse(sessions=[session_to_pb(s) for s in self._dp.list_sessions(request.model)])

    @_rpc
    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: Any,
                            call: Call) -> pb.DeleteSessionResponse:
        call.session_id = request.session_id
        self._dp.delete_session(request.session_id)
        return pb.DeleteSessionResponse()

    @_rpc
    async def ForkSession(self, request: pb.ForkSessionRequest, context: Any, call: Call) -> pb.Session:
        call.session_id = request.session_id  # the source; the fork's own id is the client's to keep
        return self._described(call, self._dp.fork_session(request.session_id, request.ttl_seconds))

    @staticmethod
    def _described(call: Call, session: Session) -> pb.Session:
        call.model = session.model
        return session_to_pb(session)

    @_rpc
    async def Feed(self, request_iterator: AsyncIterator[pb.FeedRequest], context: Any,
                   call: Call) -> pb.FeedResponse:
        fed = await self._dp.feed(feed_chunks(request_iterator, call))
        call.model, call.session_id, call.chars_consumed = fed.model, fed.session_id, fed.result.chars_consumed
        return fed_to_pb(fed)

    @_rpc
    async def Chat(self, request_iterator: AsyncIterator[pb.ChatRequest], context: Any,
                   call: Call) -> AsyncIterator[pb.ChatResponse]:
        async with contextlib.aclosing(self._dp.chat(chat_actions(request_iterator, call))) as events:
            opened = cast(Session, await anext(events))  # always the session first: the loop need not look
            call.model, call.session_id, start = opened.model, opened.id, opened.state.chars_consumed
            yield chat_event_to_pb(opened)
            last: Chunk | None = None
            async for event in events:
                if isinstance(event, Chunk) and event.final:
                    last = event  # (as in Generate)
                    continue
                yield chat_event_to_pb(event, last)
                last = None
        call.chars_consumed = opened.state.chars_consumed - start  # fed and generated: what the state advanced

    @_rpc
    async def ListModels(self, request: pb.ListModelsRequest, context: Any, call: Call) -> pb.ListModelsResponse:
        models, default = self._dp.list_models()
        return pb.ListModelsResponse(models=[m.info for m in models], default_model=default.spec)

    @_rpc
    async def GetModel(self, request: pb.GetModelRequest, context: Any, call: Call) -> pb.ModelInfo:
        call.model = request.model
        model = self._dp.get_model(request.model)
        call.model = model.spec
        return model.info
