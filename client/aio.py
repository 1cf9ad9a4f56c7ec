"""The asyncio client: the same surface as ``Client`` with ``await``/``async for``, over one grpc.aio channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import convert
from client.connection import CallMetadata, ConnectOptions, aio_channel
from client.errors import CharlmError, ServerError, Unavailable, from_rpc_error
from client.generation import AsyncGeneration
from client.streams import feed_async
from client.sync import CHAT_CLOSE_WAIT_S, build_options
from client.types import FeedResult, ModelInfo, ModelList, Sampling, SessionInfo


class AsyncClient:
    """Asyncio charlm client; create it inside the running loop, ``async with AsyncClient(target) as c:``."""

    def __init__(self, target: str | None = None, options: ConnectOptions | None = None, **overrides: Any) -> None:
        self.options = build_options(target, options, overrides)
        self._channel = aio_channel(self.options)
        self._stub = charlm_pb2_grpc.TextGenerationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = CallMetadata.of(self.options)

    async def _unary(self, rpc: str, request: Any, timeout: float | None, request_id: str | None = None) -> Any:
        # rpc: a TextGeneration method's name, or "Health.Check"; errors name it when the server gives no message
        method = self._health.Check if rpc == "Health.Check" else getattr(self._stub, rpc)
        metadata, rid = self._metadata.for_call(request_id)
        try:
            return await method(request, timeout=timeout or self.options.timeout, metadata=metadata)
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
    ) -> AsyncGeneration:
        """Starts sampling after ``prompt``; ``async for text in client.generate(...)``."""
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty, seed)
        request = convert.generate_request(prompt, model, sampling, max_chars, stop, session_id, logprobs)
        metadata, rid = self._metadata.for_call(request_id)
        call = self._stub.Generate(request, timeout=timeout or self.options.stream_timeout, metadata=metadata)
        return AsyncGeneration(call.__aiter__(), call.cancel, rid)

    async def feed(self, text: str | Iterable[str], *, session_id: str = "", model: str = "",
                   timeout: float | None = None, request_id: str | None = None) -> FeedResult:
        """Streams text (a string or an iterable of chunks) into a session, or scores it on a fresh state.

        The deadline is ``timeout``, else ``options.stream_timeout`` (none by default); an exception raised by
        the iterable is raised here as it is.
        """
        requests = convert.feed_stream(convert.text_chunks(text), session_id, model)
        metadata, rid = self._metadata.for_call(request_id)
        timeout = timeout or self.options.stream_timeout
        return convert.feed_result(await feed_async(self._stub.Feed, requests, timeout, metadata, rid))

    async def create_session(self, model: str = "", prime: str = "", ttl_seconds: int = 0,
                             timeout: float | None = None, *, request_id: str | None = None) -> AsyncSession:
        """Creates a session; ``async with await client.create_session() as s:`` deletes it on exit."""
        request = convert.create_session_request(model, prime, ttl_seconds)
        return AsyncSession(self, convert.session(await self._unary("CreateSession", request, timeout, request_id)))

    async def get_session(self, session_id: str, timeout: float | None = None, *,
                          request_id: str | None = None) -> SessionInfo:
        """Describes a session."""
        request = pb.GetSessionRequest(session_id=session_id)
        return convert.session(await self._unary("GetSession", request, timeout, request_id))

    async def list_sessions(self, model: str = "", timeout: float | None = None, *,
                            request_id: str | None = None) -> list[SessionInfo]:
        """Live sessions, optionally only those of one model."""
        response = await self._unary("ListSessions", pb.ListSessionsRequest(model=model), timeout, request_id)
        return [convert.session(s) for s in response.sessions]

    async def delete_session(self, session_id: str, timeout: float | None = None, *,
                             request_id: str | None = None) -> None:
        """Deletes a session and frees its state."""
        await self._unary("DeleteSession", pb.DeleteSessionRequest(session_id=session_id), timeout, request_id)

    async def fork_session(self, session_id: str, ttl_seconds: int = 0, timeout: float | None = None, *,
                           request_id: str | None = None) -> AsyncSession:
        """A new session holding a copy of ``session_id``'s state."""
        request = convert.fork_session_request(session_id, ttl_seconds)
        return AsyncSession(self, convert.session(await self._unary("ForkSession", request, timeout, request_id)))

    async def chat(self, session_id: str = "", model: str = "", ttl_seconds: int = 0,
                   timeout: float | None = None, *, request_id: str | None = None) -> AsyncChat:
        """Opens a bidirectional Chat on a session (a new one of ``model`` when no id is given)."""
        opening = convert.chat_open(session_id, model, ttl_seconds)  # checked before the stream starts
        metadata, rid = self._metadata.for_call(request_id)
        call = self._stub.Chat(timeout=timeout or self.options.stream_timeout, metadata=metadata)
        chat = AsyncChat(call, rid)
        await chat._open(opening)
        return chat

    async def models(self, timeout: float | None = None, *, request_id: str | None = None) -> ModelList:
        """Every served model and the default one."""
        return convert.model_list(await self._unary("ListModels", pb.ListModelsRequest(), timeout, request_id))

    async def model(self, name: str = "", timeout: float | None = None, *, request_id: str | None = None
                    ) -> ModelInfo:  # fmt: skip
        """One model (``"name"`` or ``"name:version"``; empty = the default)."""
        return convert.model_info(await self._unary("GetModel", pb.GetModelRequest(model=name), timeout, request_id))

    async def health(self, service: str = "", timeout: float | None = None, *, request_id: str | None = None) -> str:
        """The standard health status: "SERVING", "NOT_SERVING", ... ("" = the whole server)."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary("Health.Check", request, timeout, request_id)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel connects; raises Unavailable after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(f"could not connect to {self.options.target} within {timeout:g}s",
                              grpc.StatusCode.UNAVAILABLE) from None

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSession:
    """A server-side session; ``async with await client.create_session() as s:`` deletes it on exit."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> str:
        """The server-issued session id."""
        return self.info.id

    def generate(self, prompt: str = "", **kwargs: Any) -> AsyncGeneration:
        """``AsyncClient.generate`` continuing this session."""
        return self.client.generate(prompt, session_id=self.id, **kwargs)

    async def feed(self, text: str | Iterable[str], timeout: float | None = None, *,
                   request_id: str | None = None) -> FeedResult:
        """Advances this session over text and scores it."""
        return await self.client.feed(text, session_id=self.id, timeout=timeout, request_id=request_id)

    async def chat(self, timeout: float | None = None, *, request_id: str | None = None) -> AsyncChat:
        """A Chat stream on this session."""
        return await self.client.chat(session_id=self.id, timeout=timeout, request_id=request_id)

    async def fork(self, ttl_seconds: int = 0, timeout: float | None = None, *,
                   request_id: str | None = None) -> AsyncSession:
        """A new session with a copy of this one's state."""
        return await self.client.fork_session(self.id, ttl_seconds, timeout, request_id=request_id)

    async def refresh(self, timeout: float | None = None, *, request_id: str | None = None) -> SessionInfo:
        """Fetches the session's current description."""
        self.info = await self.client.get_session(self.id, timeout, request_id=request_id)
        return self.info

    async def delete(self, timeout: float | None = None, *, request_id: str | None = None) -> None:
        """Deletes the session; already gone is fine."""
        try:
            await self.client.delete_session(self.id, timeout, request_id=request_id)
        except CharlmError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()


class AsyncChat:
    """One bidirectional Chat stream (asyncio): ``await feed(text)``, ``async for t in chat.generate(...)``."""

    def __init__(self, call: Any, request_id: str) -> None:
        self._call = call
        self._reply: AsyncGeneration | None = None  # the latest reply, perhaps not read to its end
        self.session: SessionInfo | None = None
        self.request_id = request_id  # the stream's id, as the server logs it

    async def _open(self, opening: pb.ChatOpen) -> None:
        await self._write(pb.ChatRequest(open=opening))
        self.session = convert.session((await self._expect("opened")).opened)

    async def _write(self, request: pb.ChatRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Chat", self.request_id) from None

    async def _expect(self, event: str) -> pb.ChatResponse:
        try:
            response = await self._call.read()
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Chat", self.request_id) from None
        if response is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise ServerError("the chat stream ended unexpectedly", grpc.StatusCode.INTERNAL)
        if response.WhichOneof("event") != event:
            raise ServerError(f"chat: expected '{event}', got '{response.WhichOneof('event')}'",
                              grpc.StatusCode.INTERNAL)
        return response

    async def _replies(self) -> AsyncIterator[pb.GenerateResponse]:
        while True:
            generated = (await self._expect("generated")).generated
            yield generated
            if generated.HasField("finish"):
                return

    async def _finish_reply(self) -> None:
        # As Chat._finish_reply: what is left of an unfinished reply is read before the next turn.
        reply, self._reply = self._reply, None
        if reply is not None and reply.finish is None:
            async for _ in reply.chunks():
                pass

    async def feed(self, text: str) -> FeedResult:
        """Feeds text (the user's turn) and returns the server's acknowledgement with its score."""
        await self._finish_reply()
        await self._write(pb.ChatRequest(feed=text))
        return convert.feed_result((await self._expect("fed")).fed)

    async def generate(self, *, max_chars: int = 200, temperature: float | None = None, top_k: int = 0,
                       top_p: float = 0.0, repetition_penalty: float = 0.0, seed: int | None = None,
                       stop: Sequence[str] = (), logprobs: bool = False) -> AsyncGeneration:
        """Asks for a reply; iterate the result for its chunks (the next turn first reads what is left of it)."""
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty, seed)
        request = convert.chat_generate(sampling, max_chars, stop, logprobs)
        await self._finish_reply()
        await self._write(request)
        self._reply = AsyncGeneration(self._replies(), self.cancel, self.request_id)
        return self._reply

    async def cancel(self) -> None:
        """Stops the reply in progress; it finishes with reason "cancelled" and the chat goes on."""
        await self._write(pb.ChatRequest(cancel=pb.ChatCancel()))

    async def close(self) -> None:
        """Ends the stream; the session itself stays on the server. As ``Chat.close``: with every reply read, the
        server ends the stream (OK); a reply left unread is cancelled."""
        with contextlib.suppress(grpc.RpcError):  # the stream may have ended already
            await self._call.done_writing()
        if self._reply is None or self._reply.finish is not None:
            with contextlib.suppress(TimeoutError, grpc.RpcError):
                await asyncio.wait_for(self._call.code(), CHAT_CLOSE_WAIT_S)
        self._call.cancel()

    async def __aenter__(self) -> AsyncChat:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
