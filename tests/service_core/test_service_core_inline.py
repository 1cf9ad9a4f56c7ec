"""Where a prompt is consumed. A short one that comes while the engine holds nothing: on the event loop
(EngineConfig.inline_prompt_chars), with the same streams as through a step thread, and only while nothing else
is held or still being read. Else in a lane: on all of onnxruntime's threads while no other lane holds work,
on the lane's own thread beside another lane's work, with the same text either way."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest
from fixtures.service_core import ARCHS, EngineFactory, collect, until

from service.engine import Engine
from service.prompts import LonePrompts
from service.runtime import Runtime
from service.stream import Stream
from service.types import Chunk, Finish, GenerateParams, Sampling

PROMPT = "The keeper "


async def logprobs_of(engine: Engine, prompt: str, params: GenerateParams) -> list[float]:
    """A generation's log-probabilities, from a fresh state."""
    out: list[float] = []
    async for event in engine.generate(engine.new_state(), prompt, params):
        if isinstance(event, Chunk):
            out += event.logprobs or []
    return out


async def story(engine: Engine, vocabulary: str) -> list[object]:
    """What a set of seeded requests gives: texts, finishes, the states they leave, and continuations."""
    cases = [GenerateParams(Sampling(seed=7), max_chars=1),  # ends at its first character
             GenerateParams(Sampling(seed=8), max_chars=40),  # goes on in a batch row
             GenerateParams(Sampling(temperature=0.7, top_k=5, seed=9), max_chars=30),  # drawn outside the head
             GenerateParams(Sampling(seed=10), max_chars=40, stop=tuple(vocabulary))]  # stops at its first character
    out: list[object] = []
    for params in cases:
        state = engine.new_state()
        text, finish = await collect(engine, state, PROMPT, params)
        out += [text, finish.reason, finish.stop_sequence, finish.generated_chars, state.chars_consumed]
        out += [np.concatenate(state.arrays).tolist(), state.pending]
        # a session's next request: its pending character and a new prompt, then no prompt at all
        out.append(await collect(engine, state, "the ", GenerateParams(Sampling(temperature=0.9), max_chars=15)))
        out.append((await collect(engine, state, "", GenerateParams(max_chars=15)))[0])
    params = GenerateParams(Sampling(seed=11), max_chars=12, logprobs=True)
    out.append(np.round(await logprobs_of(engine, PROMPT, params), 5).tolist())
    return [(o[0], o[1].reason) if isinstance(o, tuple) and isinstance(o[1], Finish) else o for o in out]


@pytest.mark.parametrize("arch", ARCHS)
async def test_streams_are_the_same_consumed_on_the_loop_or_in_a_step_thread(
        make_engine: EngineFactory, tiny_runtimes: dict[str, Runtime], arch: str) -> None:  # fmt: skip
    vocabulary = tiny_runtimes[arch].vocabulary
    here = await story(make_engine(arch), vocabulary)
    there = await story(make_engine(arch, inline_prompt_chars=0), vocabulary)
    assert here == there
    assert here[1] == here[9 + 1] == "length" and here[3 * 9 + 1] == "stop"  # the cases hold


async def test_prompts_are_consumed_on_the_loop_only_while_the_engine_holds_and_sends_nothing(
        make_engine: EngineFactory, tiny_runtimes: dict[str, Runtime],
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    rt = tiny_runtimes["lstm"]
    where: list[tuple[str, int]] = []  # of every prompt call: "loop" or "step thread", and its length
    run = rt.run

    lone = LonePrompts.consume

    def here() -> str:
        return "step thread" if threading.current_thread().name.startswith("charlm-step") else "loop"

    def spy(ids: np.ndarray, states: tuple[np.ndarray, ...], session: object = None) -> object:
        where.append((here(), ids.shape[1]))
        return run(ids, states, session)  # type: ignore[arg-type]

    def lone_spy(self: LonePrompts, s: Stream) -> object:  # (the loop's prepared calls: service/prompts.py)
        n, logits = s.remaining, lone(self, s)
        if logits is not None:
            where.append((here(), n))
        return logits

    monkeypatch.setattr(rt, "run", spy)
    monkeypatch.setattr(LonePrompts, "consume", lone_spy)
    engine = make_engine("lstm", inline_prompt_chars=16)
    short, long = GenerateParams(max_chars=3), "x" * 17

    async def prompt_call(prompt: str) -> str:
        where.clear()
        await collect(engine, engine.new_state(), prompt, short)
        return next(thread for thread, n in where if n == len(prompt))  # (not a feed's call)

    assert await prompt_call(PROMPT) == "loop"
    assert await prompt_call(long) == "step thread"  # longer than inline_prompt_chars
    busy = engine.generate(engine.new_state(), PROMPT, GenerateParams(max_chars=100_000))
    assert isinstance(await busy.__anext__(), Chunk)
    assert await prompt_call(PROMPT) == "step thread"  # another stream is held
    await busy.aclose()
    await until(lambda: engine.active_streams == 0)
    sending = engine.generate(engine.new_state(), PROMPT, GenerateParams(max_chars=1))
    assert isinstance(await sending.__anext__(), Chunk) and engine.active_streams == 0  # ended, not yet all read
    assert await prompt_call(PROMPT) == "step thread"  # requests that come together go to a lane together
    await sending.aclose()
    assert await prompt_call(PROMPT) == "loop"
    feeding = asyncio.create_task(engine.feed(engine.new_state(), "a" * 20_000))
    await asyncio.sleep(0)  # the feed is held by a lane now
    assert await prompt_call(PROMPT) == "step thread"
    await feeding
    assert await prompt_call(PROMPT) == "loop"
    never = make_engine("lstm", inline_prompt_chars=0)
    where.clear()
    await collect(never, never.new_state(), PROMPT, short)
    assert where == [("step thread", len(PROMPT))]


async def _drain(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


async def test_a_lanes_prompt_calls_run_on_its_own_thread_while_another_lane_holds_work(
        make_engine: EngineFactory, tiny_runtimes: dict[str, Runtime],
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    rt = tiny_runtimes["lstm"]
    sessions: list[object] = []  # of every prompt call: the session it was given (None: all threads)
    run = rt.run

    def spy(ids: np.ndarray, states: tuple[np.ndarray, ...], session: object = None) -> object:
        sessions.append(session)
        return run(ids, states, session)  # type: ignore[arg-type]

    monkeypatch.setattr(rt, "run", spy)
    engine = make_engine("lstm", lanes=2, lane_fill=1, inline_prompt_chars=0)
    params = GenerateParams(Sampling(seed=3), max_chars=20)
    alone, _ = await collect(engine, engine.new_state(), PROMPT, params)
    first, second = engine.lanes
    assert sessions == [None] and first._own_prompts is not None and second._own_prompts is not None
    busy = engine.generate(engine.new_state(), PROMPT, GenerateParams(max_chars=10**9))  # held by the first lane
    assert isinstance(await busy.__anext__(), Chunk)
    # read all along: a stream whose reader lags leaves its batch once its buffer is full, and the lane is idle
    reading = asyncio.create_task(_drain(busy))
    sessions.clear()
    beside, _ = await collect(engine, engine.new_state(), PROMPT, params)  # the second lane: the first is busy
    assert sessions == [second._own_prompts] and beside == alone
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    await busy.aclose()
    single = make_engine("lstm", lanes=1)
    await single.start()
    assert single.lanes[0]._own_prompts is None  # no other lane to step beside
