"""The data plane without gRPC: a consumer that goes away mid-stream, and Chat's cancel between two replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.config import EngineConfig, Limits, SessionConfig
from service.dataplane import DataPlane
from service.errors import SessionBusy
from service.registry import Registry
from service.requests import (
    ChatAction,
    ChatCancel,
    ChatFeed,
    ChatGenerate,
    ChatOpen,
    Done,
    FeedChunk,
    GenerateRequest,
)
from service.runtime import RuntimeConfig
from service.sessions import InMemorySessionStore
from service.types import Chunk, GenerateParams, Sampling

LONG = GenerateParams(Sampling(temperature=1.0, seed=3), max_chars=60_000)


@pytest.fixture
async def dataplane(model_repo: Path) -> AsyncIterator[DataPlane]:
    registry = Registry.load(model_repo, RuntimeConfig(), EngineConfig(), "tiny-lstm")
    await registry.start()
    yield DataPlane(registry, InMemorySessionStore(SessionConfig()), Limits())
    await registry.close()


async def test_a_generation_closed_midway_lets_its_session_go_only_after_the_lane(dataplane: DataPlane) -> None:
    engine = dataplane.registry.default.engine
    session = await dataplane.create_session(prime="The ")
    for _ in range(5):
        gen = dataplane.generate(GenerateRequest(params=LONG, session_id=session.id))
        for _ in range(3):
            assert isinstance(await anext(gen), Chunk)
        # What the garbage collector does to a streaming handler's generator that gRPC dropped when its client
        # cancelled: close this layer alone. The layers below must close first, the lease last.
        await gen.aclose()
        assert not session.busy
        assert engine.active_streams == 0  # no lane still holds the state the next request is handed


async def test_a_chat_cancel_sent_right_after_a_reply_is_for_the_next_one(dataplane: DataPlane) -> None:
    queue: asyncio.Queue[ChatAction | None] = asyncio.Queue()

    async def actions() -> AsyncIterator[ChatAction]:
        while (action := await queue.get()) is not None:
            yield action

    for action in (ChatOpen(), ChatFeed("The keeper "), ChatGenerate(GenerateParams(max_chars=5))):
        queue.put_nowait(action)
    finishes = []
    async for event in dataplane.chat(actions()):
        if not isinstance(event, Done):
            continue
        finishes.append(event.finish)
        if len(finishes) == 1:  # the client has the first reply's end: it asks for a long one and cancels it
            queue.put_nowait(ChatGenerate(LONG))
            queue.put_nowait(ChatCancel())
            await asyncio.sleep(0.01)  # (both arrive before the turn loop is pulled again)
        else:
            queue.put_nowait(None)
    assert [f.reason for f in finishes] == ["length", "cancelled"]
    assert finishes[1].generated_chars < LONG.max_chars


async def test_a_request_for_a_session_whose_stream_is_ending_waits_for_it(dataplane: DataPlane) -> None:
    session = await dataplane.create_session(prime="The ")
    gen = dataplane.generate(GenerateRequest(params=LONG, session_id=session.id))
    for _ in range(3):
        await anext(gen)
    closing = asyncio.create_task(gen.aclose())  # the client pressed "stop"...
    await asyncio.sleep(0)
    assert session.busy and session.ending
    short = GenerateParams(Sampling(temperature=1.0, seed=4), max_chars=5)
    text = [e.text async for e in dataplane.generate(GenerateRequest(params=short, session_id=session.id))
            if isinstance(e, Chunk)]  # ...and at once "go on": served once the first has let go, not ABORTED
    assert len("".join(text)) == 5 and closing.done()


async def chunks(*items: FeedChunk) -> AsyncIterator[FeedChunk]:
    for item in items:
        yield item


async def test_a_request_for_a_session_whose_feed_was_cancelled_waits_for_it(dataplane: DataPlane) -> None:
    session = await dataplane.create_session(prime="The ")
    text = "the king is dead, long live the king. " * 500
    feeding = asyncio.create_task(dataplane.feed(chunks(FeedChunk(text, session.id))))
    while not session.busy:  # the Feed holds the session; its text is in a lane
        await asyncio.sleep(0)
    await asyncio.sleep(0.002)
    feeding.cancel()  # what gRPC does to a handler's task when its client cancels
    await asyncio.sleep(0)
    assert session.stream_ending and not feeding.done()  # its lane may still write the state
    fed = await dataplane.feed(chunks(FeedChunk("and ", session.id)))  # waits (ms), not ABORTED
    assert feeding.cancelled() and fed.result.chars_consumed == 4
    assert session.state.chars_consumed < len("The ") + len(text) + 4  # the cancelled Feed was cut off


async def test_a_session_busy_with_a_running_stream_is_still_refused(dataplane: DataPlane) -> None:
    session = await dataplane.create_session(prime="The ")
    gen = dataplane.generate(GenerateRequest(params=LONG, session_id=session.id))
    await anext(gen)
    with pytest.raises(SessionBusy):
        await anext(dataplane.generate(GenerateRequest(params=LONG, session_id=session.id)))
    await gen.aclose()
