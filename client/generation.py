"""Generation streams: iterators over text chunks whose ``finish`` summary is set when the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import grpc
from charlm.v1 import charlm_pb2 as pb

from client import convert
from client.errors import ServerError, from_rpc_error
from client.types import Chunk, Finish


class _Record:
    """What sync and asyncio generations share: the text, log-probabilities and summary received so far."""

    def __init__(self, request_id: str | None = None) -> None:
        self.finish: Finish | None = None  # set by the last message
        self.logprobs: list[float] = []  # filled only when logprobs were requested
        self.request_id = request_id  # the call's id, as the server logs it (the client sends it)
        self._texts: list[str] = []
        self._cancelled = False

    @property
    def text(self) -> str:
        """All text received so far."""
        return "".join(self._texts)

    def _take(self, msg: pb.GenerateResponse, as_text: bool) -> str | Chunk | None:
        # What the iterator yields for one message: its text (plain iteration), its Chunk, or None (no text).
        # Per message, on the load generator's hot path: no Chunk built where only the text is wanted.
        if msg.HasField("finish"):
            self.finish = convert.finish(msg.finish)
        text = msg.text
        if not text:
            return None
        self._texts.append(text)
        if msg.logprobs:
            self.logprobs.extend(msg.logprobs)
        return text if as_text else convert.chunk(msg)

    def _check_finished(self) -> Finish:
        if self.finish is None:
            raise ServerError("the generation stream ended without a finish summary", grpc.StatusCode.INTERNAL)
        return self.finish

    def _quiet(self, err: grpc.RpcError) -> bool:
        # A cancel() we asked for ends the stream with CANCELLED: that is not an error for the caller.
        return self._cancelled and getattr(err, "code", lambda: None)() == grpc.StatusCode.CANCELLED


class Generation(_Record):
    """Iterate for text chunks (``str``); after exhaustion ``finish`` holds the summary.

    ``for text in gen`` yields each message's text as it arrives; ``gen.chunks()`` yields ``Chunk``
    objects with log-probabilities; ``gen.result()`` drains the stream and returns the ``Finish``.
    """

    def __init__(self, responses: Iterator[pb.GenerateResponse], cancel: Callable[[], Any],
                 request_id: str | None = None) -> None:  # fmt: skip
        super().__init__(request_id)
        self._responses = responses
        self._cancel = cancel

    def chunks(self) -> Iterator[Chunk]:
        """Chunks as they arrive; raises a CharlmError if the call fails."""
        return cast(Iterator[Chunk], self._items(as_text=False))

    def __iter__(self) -> Iterator[str]:
        return cast(Iterator[str], self._items(as_text=True))

    def _items(self, as_text: bool) -> Iterator[str | Chunk]:
        try:
            for msg in self._responses:
                item = self._take(msg, as_text)
                if item is not None:
                    yield item
        except grpc.RpcError as e:
            if not self._quiet(e):
                raise from_rpc_error(e, request_id=self.request_id) from None

    def result(self) -> Finish:
        """Consumes the rest of the stream and returns its summary."""
        for _ in self:
            pass
        return self._check_finished()

    def cancel(self) -> None:
        """Stops the generation (Generate: the call ends; Chat: the server finishes with reason "cancelled")."""
        self._cancelled = True
        self._cancel()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.finish is None:  # left unfinished: stop it (a Chat reads the rest before its next turn)
            self.cancel()


class AsyncGeneration(_Record):
    """The asyncio twin of ``Generation``: ``async for text in gen``; ``await gen.result()``; ``async with``."""

    def __init__(
        self, responses: AsyncIterator[pb.GenerateResponse], cancel: Callable[[], Any], request_id: str | None = None
    ) -> None:
        super().__init__(request_id)
        self._responses = responses
        self._cancel = cancel

    def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks as they arrive; raises a CharlmError if the call fails."""
        return cast(AsyncIterator[Chunk], self._items(as_text=False))

    def __aiter__(self) -> AsyncIterator[str]:
        # One generator between the caller and gRPC's, not two: each layer costs every message a resumption.
        return cast(AsyncIterator[str], self._items(as_text=True))

    async def _items(self, as_text: bool) -> AsyncIterator[str | Chunk]:
        try:
            async for msg in self._responses:
                item = self._take(msg, as_text)
                if item is not None:
                    yield item
        except grpc.RpcError as e:
            if not self._quiet(e):
                raise from_rpc_error(e, request_id=self.request_id) from None
        except asyncio.CancelledError:
            # grpc.aio ends a call we cancelled with CancelledError; only a cancel of our own task propagates.
            task = asyncio.current_task()
            if not self._cancelled or (task is not None and task.cancelling()):
                raise

    async def result(self) -> Finish:
        """Consumes the rest of the stream and returns its summary."""
        async for _ in self:
            pass
        return self._check_finished()

    async def cancel(self) -> None:
        """Stops the generation (see ``Generation.cancel``)."""
        self._cancelled = True
        outcome = self._cancel()
        if hasattr(outcome, "__await__"):
            await outcome

    async def __aenter__(self) -> AsyncGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.finish is None:  # left unfinished: stop it (a Chat reads the rest before its next turn)
            await self.cancel()
