"""A seeded stream's uniforms come in one order whoever consumes them (SeqState.first_uniform, Stream's blocks):
split into two calls at any point and by any ending, primed or prompted, forked, cancelled or abandoned, with 1
or K decode steps per call, on the loop or in a lane, the text is the one of a single request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from fixtures.service_core import EngineFactory, collect

from service.artifact import Artifact
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.stream import UNIFORM_BLOCK
from service.types import Chunk, GenerateParams, Sampling
from service.vocab import Vocab

PROMPT = "The keeper "
N = UNIFORM_BLOCK + 60  # past a stream's first block of uniforms
SAMPLINGS = [Sampling(temperature=0.9), Sampling(temperature=1.0, top_k=6), Sampling(temperature=0.8, top_p=0.9)]


def single_step(artifact: Artifact) -> Engine:
    """An engine of one decode step per call, every prompt in a lane."""
    rt = Runtime(artifact, RuntimeConfig(intra_op_threads=1, decode_steps=1))
    return Engine(rt, Vocab(rt.vocabulary), EngineConfig(inline_prompt_chars=0), rt.model)


@pytest.fixture
async def engines(make_engine: EngineFactory, tiny_artifacts: dict[str, Artifact]) -> AsyncIterator[list[Engine]]:
    one = single_step(tiny_artifacts["lstm"])
    await one.start()
    several = make_engine("lstm", messages_per_s=10, stream_buffer_chars=13)  # K steps; buffers fill mid-call
    await several.start()
    yield [several, one]
    await one.close()


def seeded(s: Sampling, seed: int | None) -> Sampling:
    return replace(s, seed=seed)


async def whole(engine: Engine, s: Sampling, seed: int) -> str:
    text, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(seeded(s, seed), N))
    assert len(text) == N
    return text


@pytest.mark.parametrize("sampling", SAMPLINGS)
async def test_two_calls_equal_one_wherever_the_first_ends(engines: list[Engine], sampling: Sampling) -> None:
    for seed in (3, 2**64 - 1):
        ref = await whole(engines[1], sampling, seed)
        for engine in engines:
            assert await whole(engine, sampling, seed) == ref
            for n in (1, 2, 7, 8, 9, 13, 25, 59, UNIFORM_BLOCK - 1, UNIFORM_BLOCK, UNIFORM_BLOCK + 1, N - 1):
                state = engine.new_state()
                a, _ = await collect(engine, state, PROMPT, GenerateParams(seeded(sampling, seed), n))
                b, _ = await collect(engine, state, "", GenerateParams(sampling, N - n))
                assert a + b == ref, (engine.runtime.decode_steps, n)
            for c in sorted(set(ref[1:40]))[:6]:  # a stop sequence: ends where it first appears (inside a call)
                state = engine.new_state()
                a, f = await collect(engine, state, PROMPT, GenerateParams(seeded(sampling, seed), N, stop=(c,)))
                assert f.reason == "stop" and a == ref[: ref.index(c, 0) + 1]
                b, _ = await collect(engine, state, "", GenerateParams(sampling, N - len(a)))
                assert a + b == ref, (engine.runtime.decode_steps, c)


@pytest.mark.parametrize("sampling", SAMPLINGS[:2])
async def test_primed_then_generated_equals_the_prompt_and_forks_go_on_alike(engines: list[Engine],
                                                                            sampling: Sampling) -> None:
    for seed in range(5):
        ref = await whole(engines[1], sampling, seed)
        for engine in engines:
            state = engine.new_state(seed)
            await engine.feed(state, PROMPT)
            fork = state.copy()  # the seed's draw not used yet
            a, _ = await collect(engine, state, "", GenerateParams(sampling, 1))  # ...used
            fork2 = state.copy()
            b, _ = await collect(engine, state, "", GenerateParams(sampling, N - 1))
            assert a + b == ref
            assert (await collect(engine, fork, "", GenerateParams(sampling, N)))[0] == ref
            assert (await collect(engine, fork2, "", GenerateParams(sampling, N - 1)))[0] == b


async def test_a_feed_between_two_calls_is_the_second_calls_prompt(engines: list[Engine]) -> None:
    s = Sampling(temperature=0.9)
    for engine in engines:
        state, other = engine.new_state(), engine.new_state()
        a, _ = await collect(engine, state, PROMPT, GenerateParams(seeded(s, 11), 25))
        a2, _ = await collect(engine, other, PROMPT, GenerateParams(seeded(s, 11), 25))
        await engine.feed(state, " and so")
        b, _ = await collect(engine, state, "", GenerateParams(s, 35))
        b2, _ = await collect(engine, other, " and so", GenerateParams(s, 35))
        assert a == a2 and b == b2


async def test_greedy_rows_take_no_uniforms(engines: list[Engine]) -> None:
    s = Sampling(temperature=0.9)
    for engine in engines:
        state = engine.new_state()
        g, _ = await collect(engine, state, PROMPT, GenerateParams(Sampling(temperature=0, seed=5), 10))
        b, _ = await collect(engine, state, "", GenerateParams(s, 30))
        fresh = engine.new_state(5)
        await engine.feed(fresh, PROMPT + g)
        b2, _ = await collect(engine, fresh, "", GenerateParams(s, 30))
        assert b == b2


async def test_cancelled_and_abandoned_streams_leave_the_state_after_their_characters(engines: list[Engine]) -> None:
    s = Sampling(temperature=0.9)
    for engine in engines:
        ref, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(seeded(s, 9), 400))
        for mode in ("cancel", "abandon"):
            for after in (1, 2, 5):
                state, cancel = engine.new_state(), asyncio.Event()
                got, chunks = "", 0
                gen = engine.generate(state, PROMPT, GenerateParams(seeded(s, 9), 400), cancel)
                async with contextlib.aclosing(gen):
                    async for ev in gen:
                        if isinstance(ev, Chunk):
                            got += ev.text
                            chunks += 1
                            if chunks == after:
                                if mode == "abandon":
                                    break
                                cancel.set()
                n = state.chars_consumed - len(PROMPT)
                assert got == ref[: len(got)] and n >= len(got)
                if n < 400:
                    rest, _ = await collect(engine, state, "", GenerateParams(s, 400 - n))
                    assert ref[:n] + rest == ref, (mode, after, engine.runtime.decode_steps)


async def split(engine: Engine, s: Sampling, seed: int, n: int) -> str:
    """n characters from a seeded request, then the rest of N from the state with no seed."""
    state = engine.new_state()
    a, _ = await collect(engine, state, PROMPT, GenerateParams(seeded(s, seed), n))
    b, _ = await collect(engine, state, "", GenerateParams(s, N - n))
    return a + b


async def test_two_calls_equal_one_among_other_streams(engines: list[Engine]) -> None:
    s = Sampling(temperature=0.9)
    for engine in engines:
        ref = await whole(engine, s, 21)
        got = await asyncio.gather(*(split(engine, s, 21, 1 + i % 30) for i in range(24)))
        assert set(got) == {ref}
