"""The blocking client: one channel, plain Python types in and out, CharlmError on failure."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import convert
from client.connection import CallMetadata, ConnectOptions, sync_channel
from client.errors import CharlmError, ServerError, Unavailable, from_rpc_error
from client.generation import Generation
from client.streams import feed_blocking
from client.types import FeedResult, ModelInfo, ModelList, Sampling, SessionInfo

CHAT_CLOSE_WAIT_S = 1.0  # how long closing a chat waits for the server to end it, before cancelling it


def build_options(target: str | None, options: ConnectOptions | None, overrides: dict[str, Any]) -> ConnectOptions:
    """Options from an explicit object, a target and field overrides; target defaults to CHARLM_TARGET."""
    opts = options or ConnectOptions()
    if target is not None:
        overrides = {**overrides, "target": target}
    return dataclasses.replace(opts, **overrides)


class Client:
    """Synchronous charlm client: ``Client("127.0.0.1:50051")``; use as a context manager to close the channel."""

    def __init__(self, target: str | None = None, options: ConnectOptions | None = None, **overrides: Any) -> None:
        self.options = build_options(target, options, overrides)
        self._channel = sync_channel(self.options)
        self._stub = charlm_pb2_grpc.TextGenerationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = CallMetadata.of(self.options)

    def _unary(self, rpc: str, request: Any, timeout: float | None, request_id: str | None = None) -> Any:
        # rpc: a TextGeneration method's name, or "Health.Check"; errors name it when the server gives no message
        method = self._health.Check if rpc == "Health.Check" else getattr(self._stub, rpc)
        metadata, rid = self._metadata.for_call(request_id)
        try:
            return method(request, timeout=timeout or self.options.timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e, rpc, rid) from None

    def generate(
        self,
        prompt: str = "",
        *,
        model: str = "",
        max_chars: int = 200,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        repetition_penalty: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        session_id: str = "",
        logprobs: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generation:
        """Starts sampling after ``prompt``; iterate the result for text chunks as they arrive."""
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty, seed)
        request = convert.generate_request(prompt, model, sampling, max_chars, stop, session_id, logprobs)
        metadata, rid = self._metadata.for_call(request_id)
        call = self._stub.Generate(request, timeout=timeout or self.options.stream_timeout, metadata=metadata)
        return Generation(call, call.cancel, rid)

    def feed(self, text: str | Iterable[str], *, session_id: str = "", model: str = "",
             timeout: float | None = None, request_id: str | None = None) -> FeedResult:
        """Streams text (a string or an iterable of chunks) into a session, or scores it on a fresh state.

        The deadline is ``timeout``, else ``options.stream_timeout`` (none by default): a long text takes long.
        An exception raised by the iterable is raised here as it is.
        """
        requests = convert.feed_stream(convert.text_chunks(text), session_id, model)
        metadata, rid = self._metadata.for_call(request_id)
        response = feed_blocking(self._stub.Feed, requests, timeout or self.options.stream_timeout, metadata, rid)
        return convert.feed_result(response)

    def create_session(self, model: str = "", prime: str = "", ttl_seconds: int = 0,
                       timeout: float | None = None, *, request_id: str | None = None) -> Session:
        """Creates a session (optionally primed with text); ``with client.create_session() as s:`` deletes it."""
        request = convert.create_session_request(model, prime, ttl_seconds)
        return Session(self, convert.session(self._unary("CreateSession", request, timeout, request_id)))

    def get_session(self, session_id: str, timeout: float | None = None, *,
                    request_id: str | None = None) -> SessionInfo:
        """Describes a session."""
        request = pb.GetSessionRequest(session_id=session_id)
        return convert.session(self._unary("GetSession", request, timeout, request_id))

    def list_sessions(self, model: str = "", timeout: float | None = None, *,
                      request_id: str | None = None) -> list[SessionInfo]:
        """Live sessions, optionally only those of one model."""
        response = self._unary("ListSessions", pb.ListSessionsRequest(model=model), timeout, request_id)
        return [convert.session(s) for s in response.sessions]

    def delete_session(self, session_id: str, timeout: float | None = None, *, request_id: str | None = None) -> None:
        """Deletes a session and frees its state."""
        self._unary("DeleteSession", pb.DeleteSessionRequest(session_id=session_id), timeout, request_id)

    def fork_session(self, session_id: str, ttl_seconds: int = 0, timeout: float | None = None, *,
                     request_id: str | None = None) -> Session:
        """A new session holding a copy of ``session_id``'s state."""
        request = convert.fork_session_request(session_id, ttl_seconds)
        return Session(self, convert.session(self._unary("ForkSession", request, timeout, request_id)))

    def session(self, session_id: str, timeout: float | None = None, *, request_id: str | None = None) -> Session:
        """A handle on an existing session (fetches its description)."""
        return Session(self, self.get_session(session_id, timeout, request_id=request_id))

    def chat(self, session_id: str = "", model: str = "", ttl_seconds: int = 0, timeout: float | None = None, *,
             request_id: str | None = None) -> Chat:
        """Opens a bidirectional Chat on a session (a new one of ``model`` when no id is given)."""
        opening = convert.chat_open(session_id, model, ttl_seconds)
        metadata, rid = self._metadata.for_call(request_id)
        return Chat(self._stub, opening, metadata, timeout or self.options.stream_timeout, rid)

    def models(self, timeout: float | None = None, *, request_id: str | None = None) -> ModelList:
        """Every served model and the default one."""
        return convert.model_list(self._unary("ListModels", pb.ListModelsRequest(), timeout, request_id))

    def model(self, name: str = "", timeout: float | None = None, *, request_id: str | None = None) -> ModelInfo:
        """One model (``"name"`` or ``"name:version"``; empty = the default)."""
        return convert.model_info(self._unary("GetModel", pb.GetModelRequest(model=name), timeout, request_id))

    def health(self, service: str = "", timeout: float | None = None, *, request_id: str | None = None) -> str:
        """The standard health status: "SERVING", "NOT_SERVING", ... ("" = the whole server)."""
        response = self._unary("Health.Check", health_pb2.HealthCheckRequest(service=service), timeout, request_id)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects; raises Unavailable after ``timeout`` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"could not connect to {self.options.target} within {timeout:g}s",
                              grpc.StatusCode.UNAVAILABLE) from None

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A server-side session; ``with client.create_session(...) as s:`` deletes it on exit."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self.client = client
        self.info = info  # as last seen; refresh() fetches it again

    @property
    def id(self) -> str:
        """The server-issued session id."""
        return self.info.id

    def generate(self, prompt: str = "", **kwargs: Any) -> Generation:
        """``Client.generate`` continuing this session."""
        return self.client.generate(prompt, session_id=self.id, **kwargs)

    def feed(self, text: str | Iterable[str], timeout: float | None = None, *,
             request_id: str | None = None) -> FeedResult:
        """Advances this session over text and scores it."""
        return self.client.feed(text, session_id=self.id, timeout=timeout, request_id=request_id)

    def chat(self, timeout: float | None = None, *, request_id: str | None = None) -> Chat:
        """A Chat stream on this session."""
        return self.client.chat(session_id=self.id, timeout=timeout, request_id=request_id)

    def fork(self, ttl_seconds: int = 0, timeout: float | None = None, *, request_id: str | None = None) -> Session:
        """A new session with a copy of this one's state."""
        return self.client.fork_session(self.id, ttl_seconds, timeout, request_id=request_id)

    def refresh(self, timeout: float | None = None, *, request_id: str | None = None) -> SessionInfo:
        """Fetches the session's current description."""
        self.info = self.client.get_session(self.id, timeout, request_id=request_id)
        return self.info

    def delete(self, timeout: float | None = None, *, request_id: str | None = None) -> None:
        """Deletes the session; already gone (expired, evicted, deleted) is fine."""
        try:
            self.client.delete_session(self.id, timeout, request_id=request_id)
        except CharlmError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


class Chat:
    """One bidirectional Chat stream: ``feed(text)`` then ``generate(...)``, in turns; ``cancel()`` from anywhere."""

    def __init__(self, stub: Any, opening: pb.ChatOpen, metadata: Any, timeout: float | None, request_id: str) -> None:
        # Requests flow through a queue so feed/generate/cancel can be issued while responses are read.
        self._requests: queue.SimpleQueue[pb.ChatRequest | None] = queue.SimpleQueue()
        self._requests.put(pb.ChatRequest(open=opening))
        self._call = stub.Chat(iter(self._requests.get, None), timeout=timeout, metadata=metadata)
        self._reply: Generation | None = None  # the latest reply, perhaps not read to its end
        self.request_id = request_id  # the stream's id, as the server logs it
        self.session = convert.session(self._expect("opened").opened)

    def _next(self) -> pb.ChatResponse:
        try:
            return next(self._call)
        except StopIteration:
            raise ServerError("the chat stream ended unexpectedly", grpc.StatusCode.INTERNAL) from None
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Chat", self.request_id) from None

    def _expect(self, event: str) -> pb.ChatResponse:
        response = self._next()
        if response.WhichOneof("event") != event:
            raise ServerError(f"chat: expected '{event}', got '{response.WhichOneof('event')}'",
                              grpc.StatusCode.INTERNAL)
        return response

    def _replies(self) -> Iterator[pb.GenerateResponse]:
        while True:
            generated = self._expect("generated").generated
            yield generated
            if generated.HasField("finish"):
                return

    def _finish_reply(self) -> None:
        # A reply left unfinished (a `with` block or a loop left early) still has messages on the way, up to its
        # finish (soon after a cancel): read them here, or the next turn would take them for its own answer.
        reply, self._reply = self._reply, None
        if reply is not None and reply.finish is None:
            for _ in reply.chunks():
                pass

    def feed(self, text: str) -> FeedResult:
        """Feeds text (the user's turn) and waits for the server's acknowledgement with its score."""
        self._finish_reply()
        self._requests.put(pb.ChatRequest(feed=text))
        return convert.feed_result(self._expect("fed").fed)

    def generate(self, *, max_chars: int = 200, temperature: float | None = None, top_k: int = 0,
                 top_p: float = 0.0, repetition_penalty: float = 0.0, seed: int | None = None,
                 stop: Sequence[str] = (), logprobs: bool = False) -> Generation:
        """Asks for a reply; iterate the result for its chunks (the next turn first reads what is left of it)."""
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty, seed)
        request = convert.chat_generate(sampling, max_chars, stop, logprobs)
        self._finish_reply()
        self._requests.put(request)
        self._reply = Generation(self._replies(), self.cancel, self.request_id)
        return self._reply

    def cancel(self) -> None:
        """Stops the reply in progress; its stream ends with finish reason "cancelled" and the chat goes on."""
        self._requests.put(pb.ChatRequest(cancel=pb.ChatCancel()))

    def close(self) -> None:
        """Ends the stream; the session itself stays on the server (delete it separately). With every reply read
        to its end, the server ends the stream itself (OK in its access log and metrics); a reply left unread is
        cancelled."""
        self._requests.put(None)
        if self._reply is None or self._reply.finish is not None:
            with contextlib.suppress(grpc.FutureTimeoutError):
                self._call.exception(timeout=CHAT_CLOSE_WAIT_S)  # (waits for the call's end: its status)
        self._call.cancel()

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
