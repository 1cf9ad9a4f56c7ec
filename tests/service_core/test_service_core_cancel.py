"""A consumer that goes away: when its generate or feed returns, the lane has let go of the state, and the state
has consumed exactly what it counts (a session handed to the next request right after a cancel is consistent)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from fixtures.service_core import EngineFactory, collect, until

from service.engine import Engine
from service.types import Chunk, GenerateParams, Sampling, SeqState

PROMPT = "The keeper "
LONG = GenerateParams(Sampling(temperature=1.0, seed=1), max_chars=100_000)


def snapshot(state: SeqState) -> tuple[list[np.ndarray], int | None, int]:
    return [a.copy() for a in state.arrays], state.pending, state.chars_consumed


def assert_same(a: SeqState, b: SeqState) -> None:
    assert a.pending == b.pending and a.chars_consumed == b.chars_consumed
    for x, y in zip(a.arrays, b.arrays, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)  # (calls of other lengths: other GEMM blocking)


async def cancel_after(engine: Engine, state: SeqState, prompt: str, chunks: int, delay: float = 0.0) -> str:
    """Generate on ``state``, cancel the consumer task after ``chunks`` chunks (or ``delay`` s); the text read."""
    got: list[str] = []

    async def read() -> None:
        async for event in engine.generate(state, prompt, LONG):
            if isinstance(event, Chunk):
                got.append(event.text)

    task = asyncio.create_task(read())
    if delay:
        await asyncio.sleep(delay)
    else:
        await until(lambda: len(got) >= chunks)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return "".join(got)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
async def test_a_cancelled_generation_has_let_go_of_its_state_when_it_returns(make_engine: EngineFactory,
                                                                             arch: str) -> None:  # fmt: skip
    engine = make_engine(arch)
    await engine.start()
    busy = asyncio.create_task(collect(engine, engine.new_state(), PROMPT, LONG))  # the lane keeps stepping
    state = engine.new_state()
    read = await cancel_after(engine, state, PROMPT, chunks=3)
    arrays, pending, consumed = snapshot(state)
    await asyncio.sleep(0.05)  # many steps of the other stream later, nothing of the state has moved
    assert (state.pending, state.chars_consumed) == (pending, consumed)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, state.arrays, strict=True))
    # ...and it is the state after exactly the characters it counts: a fresh state that samples that many
    # continues the same (a greedy continuation: its rng was not rewound to the same place otherwise)
    generated = consumed - len(PROMPT)
    assert generated >= len(read)
    ref = engine.new_state()
    text, _ = await collect(engine, ref, PROMPT, GenerateParams(LONG.sampling, max_chars=generated))
    assert text.startswith(read)
    greedy = GenerateParams(Sampling(temperature=0.0), max_chars=40)
    assert (await collect(engine, state, "ab", greedy))[0] == (await collect(engine, ref, "ab", greedy))[0]
    busy.cancel()


@pytest.mark.parametrize("delay", [0.0005, 0.003, 0.01, 0.03])
async def test_a_generation_left_mid_prompt_counts_what_its_state_consumed(make_engine: EngineFactory, tiny_text: str,
                                                                           delay: float) -> None:  # fmt: skip
    engine = make_engine("lstm", prefill_chunk=64)
    await engine.start()
    prompt = tiny_text[:3000]
    state = engine.new_state()
    await cancel_after(engine, state, prompt, chunks=0, delay=delay)
    k = state.chars_consumed
    if k > len(prompt):  # the prompt was done and characters were sampled: the test above covers that
        return
    ref = engine.new_state()
    if k:
        await engine.feed(ref, prompt[:k])
    assert_same(state, ref)


async def test_a_feed_left_midway_counts_what_its_state_consumed(make_engine: EngineFactory, tiny_text: str) -> None:
    engine = make_engine("gru", prefill_chunk=64)
    await engine.start()
    text = tiny_text[:3000]
    for delay in (0.001, 0.005, 0.02):
        state = engine.new_state()
        task = asyncio.create_task(engine.feed(state, text))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        k = state.chars_consumed
        assert 0 <= k <= len(text)
        ref = engine.new_state()
        if k:
            await engine.feed(ref, text[:k])
        assert_same(state, ref)


async def test_consumer_that_stops_iterating_frees_its_row(make_engine: EngineFactory) -> None:
    engine = make_engine("rnn")
    await engine.start()
    state = engine.new_state()
    gen = engine.generate(state, PROMPT, LONG)
    chunks = 0
    async for event in gen:
        assert isinstance(event, Chunk)
        chunks += 1
        if chunks == 2:  # (the first may come before the stream has a row: EngineConfig.inline_prompt_chars)
            assert engine.batch_size == 1
            break
    await gen.aclose()  # what `async for ... break` leads to once the generator is dropped
    await until(lambda: engine.batch_size == 0 and engine.active_streams == 0)
    assert state.pending is not None and state.chars_consumed > len(PROMPT)  # the state kept what was sampled


async def test_cancel_event_finishes_with_cancelled(make_engine: EngineFactory) -> None:
    engine = make_engine("gru")
    await engine.start()
    cancel = asyncio.Event()
    got: list[str] = []
    finish = None
    async for event in engine.generate(engine.new_state(), PROMPT, LONG, cancel):
        if isinstance(event, Chunk):
            got.append(event.text)
            if len("".join(got)) > 20:
                cancel.set()
        else:
            finish = event
    assert finish is not None and finish.reason == "cancelled"
    assert finish.generated_chars == len("".join(got))
    assert engine.active_streams == 0
