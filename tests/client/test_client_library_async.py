"""The asyncio client against the real server: the same surface as the sync client, awaited."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.charlm_client import PROMPT
from fixtures.server import RunningServer

from client import AsyncClient, InvalidArgument, NotFound, Unavailable


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
