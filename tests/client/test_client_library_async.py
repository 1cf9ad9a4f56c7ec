"""The asyncio client against the real server: the same surface as the sync client, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from fixtures.charlm_client import PROMPT
from fixtures.server import RunningServer

from client import AsyncClient, DeadlineExceeded, InvalidArgument, NotFound, Unavailable


async def test_generate_and_concurrent_streams(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        await client.wait_ready()
        gen = client.generate(PROMPT, max_chars=40, seed=4)
        texts = [t async for t in gen]
        assert gen.finish is not None and gen.finish.reason == "length" and len("".join(texts)) == 40

        async def one(seed: int) -> str:
            g = client.generate(PROMPT, max_chars=40, seed=seed)
            await g.result()
            return g.text

        batched = await asyncio.gather(*(one(s) for s in (4, 5, 4)))
        assert batched[0] == batched[2] == gen.text  # same seed alone or batched
        assert batched[1] != gen.text


async def test_sessions_feed_and_context_manager(server: RunningServer, tiny_text: str) -> None:
    async with AsyncClient(server.target) as client:
        async with await client.create_session(model="tiny-gru", prime=PROMPT) as session:
            fed = await session.feed([" lit", " the stove"])
            assert fed.session_id == session.id and fed.chars_consumed == len(" lit the stove")
            fork = await session.fork()
            async with fork:
                assert (await fork.refresh()).chars_consumed == len(PROMPT) + len(" lit the stove")
                await fork.generate(max_chars=7).result()
            assert fork.id not in {s.id for s in await client.list_sessions()}
        with pytest.raises(NotFound) as gone:
            await client.get_session(session.id)
        assert gone.value.reason == "SESSION_NOT_FOUND"
        scored = await client.feed(tiny_text[:300], model="tiny-gru")
        assert scored.chars_scored == 299 and scored.bits_per_char > 0


async def test_chat_cancel_and_continue(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        chat = await client.chat(model="tiny-rnn")
        async with chat:
            assert chat.session is not None and chat.session.model == "tiny-rnn:1"
            await chat.feed(PROMPT)
            long = await chat.generate(max_chars=60000)
            async for _ in long:
                await long.cancel()
            assert long.finish is not None and long.finish.reason == "cancelled"
            short = await chat.generate(max_chars=12, seed=1)
            assert (await short.result()).generated_chars == 12 == len(short.text)
        await client.delete_session(chat.session.id)


async def test_models_health_and_errors(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        listing = await client.models()
        assert listing.default_model in {m.spec for m in listing.models}
        assert (await client.model("tiny-rnn:1")).architecture == "rnn"
        assert await client.health() == "SERVING"
        with pytest.raises(InvalidArgument) as bad:
            await client.generate(PROMPT, top_p=1.5).result()
        assert bad.value.field == "sampling.top_p"
        with pytest.raises(NotFound) as missing:
            await client.generate(PROMPT, model="nope").result()
        assert missing.value.reason == "MODEL_NOT_FOUND"
    async with AsyncClient("127.0.0.1:1", retries=1) as down:
        with pytest.raises(Unavailable):
            await down.health()


async def test_generate_cancel_ends_the_stream_quietly(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        gen = client.generate(PROMPT, max_chars=60000)
        async for _ in gen:
            await gen.cancel()
        assert gen.finish is None and 0 < len(gen.text) < 60000
        assert await client.health() == "SERVING"  # the channel is fine after a cancelled call


async def test_feed_deadline_and_the_iterables_own_exception(server: RunningServer) -> None:
    def slow() -> Iterator[str]:
        yield PROMPT
        time.sleep(0.8)  # blocks the loop, as a slow sync iterable does; the deadline runs on regardless
        yield " and"

    def failing() -> Iterator[str]:
        yield PROMPT
        raise RuntimeError("the disk is on fire")

    async with AsyncClient(server.target, timeout=0.3) as client:
        assert (await client.feed(slow())).chars_consumed == len(PROMPT) + 4  # no deadline by default
        with pytest.raises(DeadlineExceeded):
            await client.feed(slow(), timeout=0.3)
        with pytest.raises(RuntimeError, match="the disk is on fire"):  # not asyncio.CancelledError
            await client.feed(failing())
        assert await client.health() == "SERVING"


async def test_chat_next_turn_reads_what_is_left_and_async_with_cancels(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        chat = await client.chat(model="tiny-rnn")
        async with chat:
            await chat.feed(PROMPT)
            async with await chat.generate(max_chars=5000) as first:
                await anext(aiter(first))
            assert (await chat.feed("x\n")).chars_consumed == 2
            assert first.finish is not None and first.finish.reason == "cancelled"
            second = await chat.generate(max_chars=300)
            async for _ in second:
                break
            assert (await chat.feed("y\n")).chars_consumed == 2
            assert second.finish is not None and second.finish.reason == "length"
        await client.delete_session(chat.session.id)
        async with client.generate(PROMPT, max_chars=60000) as gen:
            await anext(aiter(gen))
        assert gen.finish is None and 0 < len(gen.text) < 60000  # cancelled on leaving the block


async def test_every_unary_method_takes_a_timeout_and_ranges_are_checked(silent_target: str) -> None:
    calls: list[Callable[[AsyncClient], Awaitable[Any]]] = [
        lambda c: c.create_session(timeout=0.2), lambda c: c.get_session("s", timeout=0.2),
        lambda c: c.list_sessions(timeout=0.2), lambda c: c.delete_session("s", timeout=0.2),
        lambda c: c.fork_session("s", timeout=0.2), lambda c: c.models(timeout=0.2),
        lambda c: c.model("m", timeout=0.2), lambda c: c.health(timeout=0.2),
    ]
    async with AsyncClient(silent_target, retries=1, timeout=60) as client:
        for call in calls:
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await call(client)
            assert time.monotonic() - start < 10  # the call's 0.2 s, not the client's 60 s
        with pytest.raises(InvalidArgument) as bad:
            await client.generate(PROMPT, max_chars=-5).result()
        assert bad.value.field == "max_chars"
        with pytest.raises(InvalidArgument) as bad:
            await client.chat(ttl_seconds=-1)
        assert bad.value.field == "ttl_seconds"
