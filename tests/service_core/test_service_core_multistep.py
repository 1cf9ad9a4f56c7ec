"""Several decode steps per call (service/multistep.py): the same ids and states as single steps, the same
streams through the engine, and single steps wherever a call of several would change what a stream sees."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from fixtures.service_core import ARCHS, EngineFactory, collect, set_lane_plan

from service.artifact import Artifact
from service.batch import DecodeBatch
from service.decoding import steps_within
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.types import Finish, GenerateParams, Sampling
from service.vocab import Vocab

PROMPT = "The keeper "


@pytest.mark.parametrize("arch", ARCHS)
def test_one_call_of_k_steps_equals_k_single_steps(tiny_runtimes: dict[str, Runtime], arch: str) -> None:
    rt = tiny_runtimes[arch]
    k, b = rt.decode_steps, 5
    rng = np.random.default_rng(3)
    ids = rng.integers(0, rt.vocab_size, (b, 1), dtype=np.int64)
    states = tuple(rng.standard_normal((rt.layers, b, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
    u = rng.random((b, k)).astype(np.float32)
    inv_t = rng.uniform(0.5, 2.0, (b, 1)).astype(np.float32)
    # k chained single steps through the sampling head
    expect_ids, expect_states, cur, st = [], [], ids, states
    for j in range(k):
        logits, new = np.zeros((b, 1, rt.vocab_size), np.float32), tuple(np.zeros_like(s) for s in st)
        nxt = np.zeros((b, 1), np.int64)
        rt.bind_decoder(cur, st, logits, new, np.ascontiguousarray(u[:, j : j + 1]), inv_t, nxt)()
        expect_ids.append(nxt[:, 0])
        expect_states.append(new)
        cur, st = nxt, new
    # one call
    last, between = tuple(np.zeros_like(s) for s in states), [tuple(np.zeros_like(s) for s in states)
                                                              for _ in range(k - 1)]  # fmt: skip
    next_ids, step_ids = np.zeros((b, 1), np.int64), np.zeros((b, k), np.int64)
    rt.bind_steps(ids, states, last, between, u, inv_t, next_ids, step_ids)()
    assert np.array_equal(step_ids, np.stack(expect_ids, axis=1)) and np.array_equal(next_ids[:, 0], expect_ids[-1])
    for got, want in zip([*between, last], expect_states, strict=True):
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))  # bitwise, every step
    assert len(set(step_ids.ravel().tolist())) > 3  # the draws really moved on from step to step


def counting_calls(engine: Engine) -> Counter[int]:
    """Count the lanes' calls of several steps (0: all of them, K: those of K steps); the engine must be started."""
    calls: Counter[int] = Counter()
    for lane in engine.lanes:
        batch: DecodeBatch = lane._batch
        steps_call = batch.steps_call

        def counted(alone: bool = True, call: Callable[[bool], np.ndarray] = steps_call,
                    b: DecodeBatch = batch) -> np.ndarray:  # fmt: skip
            calls[0] += 1
            calls[b.steps] += 1
            return call(alone)

        batch.steps_call = counted  # type: ignore[method-assign]
    return calls


def single_step_engine(artifact: Artifact) -> Engine:
    """An engine over a runtime that runs one step per call."""
    rt = Runtime(artifact, RuntimeConfig(intra_op_threads=1, decode_steps=1))
    return Engine(rt, Vocab(rt.vocabulary), EngineConfig(messages_per_s=10), rt.model)


async def run_all(engine: Engine, params: list[GenerateParams]) -> list[tuple[str, Finish, str]]:
    """Each params as a stream of its own, all at once; the text, the finish, and 20 characters more from the
    state it left (which also checks the state and the rng it kept)."""

    async def one(p: GenerateParams) -> tuple[str, Finish, str]:
        state = engine.new_state()
        text, finish = await collect(engine, state, PROMPT, p)
        more, _ = await collect(engine, state, "", GenerateParams(Sampling(temperature=0.8), max_chars=20))
        return text, finish, more

    return await asyncio.gather(*(one(p) for p in params))


@pytest.mark.parametrize("arch", ARCHS)
async def test_streams_are_the_same_with_k_steps_per_call(make_engine: EngineFactory, arch: str,
                                                          tiny_artifacts: dict[str, Artifact]) -> None:  # fmt: skip
    # lengths that end inside a call, stop sequences, a buffer that fills inside a call (the reader is slow)
    params = [GenerateParams(Sampling(temperature=0.7 + i % 3 * 0.3, seed=50 + i), max_chars=21 + 7 * i,
                             stop=("e ", "th") if i % 3 == 0 else ()) for i in range(12)]  # fmt: skip
    several = make_engine(arch, messages_per_s=10, stream_buffer_chars=13)  # characters wait long: K steps
    await several.start()
    calls = counting_calls(several)
    single = single_step_engine(tiny_artifacts[arch])
    try:
        expected = await run_all(single, params)
    finally:
        await single.close()
    got = await run_all(several, params)
    assert calls[0] == calls[16] > 5  # (a lane of at most 64 rows runs 16 steps a call: Runtime.steps_for)
    assert [(t, f.reason, f.stop_sequence, f.generated_chars, m) for t, f, m in got] == [
        (t, f.reason, f.stop_sequence, f.generated_chars, m) for t, f, m in expected]  # fmt: skip
    assert {f.reason for _, f, _ in got} == {"stop", "length"}


async def test_a_stream_is_the_same_when_its_lane_changes_steps_per_call(tiny_artifacts: dict[str, Artifact]) -> None:
    """Calls of 16 steps for at most 4 rows here, of 8 above: as streams end, the lanes' calls go from 8 steps to
    16, and every stream's text is still that of single steps."""
    params = [GenerateParams(Sampling(seed=70 + i), max_chars=30 + 15 * i) for i in range(12)]
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=1, few_rows=4))
    assert [rt.steps_for(n) for n in (1, 4, 5, 64)] == [16, 16, 8, 8]
    several = Engine(rt, Vocab(rt.vocabulary), set_lane_plan(EngineConfig(messages_per_s=10, lanes=1)), rt.model)
    single = single_step_engine(tiny_artifacts["lstm"])
    try:
        await several.start()
        calls = counting_calls(several)
        got, expected = await run_all(several, params), await run_all(single, params)
    finally:
        await asyncio.gather(several.close(), single.close())
    assert calls[8] > 3 and calls[16] > 3 and calls[0] == calls[8] + calls[16]
    assert [(t, f.reason, f.generated_chars, m) for t, f, m in got] == [
        (t, f.reason, f.generated_chars, m) for t, f, m in expected]  # fmt: skip


async def test_single_steps_where_a_row_needs_its_logits_or_characters_must_leave_at_once(
        make_engine: EngineFactory) -> None:  # fmt: skip
    several = make_engine("lstm", messages_per_s=10)
    await several.start()
    calls = counting_calls(several)
    await collect(several, several.new_state(), PROMPT, GenerateParams(Sampling(seed=1), max_chars=40))
    assert calls[0] > 0  # a plain row, characters that may wait: several steps per call
    for sampling, logprobs in ((Sampling(temperature=0), False), (Sampling(top_k=5), False), (Sampling(), True)):
        calls[0] = 0
        text, _ = await collect(several, several.new_state(), PROMPT, GenerateParams(sampling, 40, logprobs=logprobs))
        assert calls[0] == 0 and len(text) == 40  # greedy, top-k, logprobs: the logits of every step are needed
    now = make_engine("lstm", messages_per_s=0)  # every character is released at once: no step may wait
    await now.start()
    calls = counting_calls(now)
    text, _ = await collect(now, now.new_state(), PROMPT, GenerateParams(Sampling(seed=1), max_chars=40))
    assert calls[0] == 0 and len(text) == 40


async def test_one_stream_runs_several_steps_within_the_wait_allowed(make_engine: EngineFactory) -> None:
    # a message budget that lets characters wait 1 µs: only steps_wait_ms can allow several steps per call
    for wait_ms, several in ((2.0, True), (0.0, False)):
        engine = make_engine("lstm", messages_per_s=1e6, steps_wait_ms=wait_ms)
        await engine.start()
        calls = counting_calls(engine)
        text, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(Sampling(seed=1), max_chars=200))
        assert len(text) == 200
        if several:  # 199 characters after the prompt's: ~13 calls of 16 steps; a call the machine slowed past
            # the wait (15 steps over 2 ms) makes the next one run 8 (steps_within), as the policy says it should
            assert calls[16] >= 10 and calls[0] == calls[16] + calls[8]
        else:  # (the first call has no step time to judge by yet)
            assert calls[0] <= 1


def test_a_call_runs_the_most_steps_whose_wait_fits() -> None:
    # the first K - 1 steps hold the call's first character back: they must fit in the wait (2 ms here)
    for step_us, steps in ((0, 16), (100, 16), (133, 16), (200, 8), (285, 8), (300, 1), (5000, 1)):
        assert steps_within((16, 8), step_us / 1e6, 2e-3) == steps, step_us
    assert steps_within((8,), 1e-4, 2e-3) == 8 and steps_within((), 1e-6, 2e-3) == 1  # a runtime's own choices
    assert steps_within((16, 8), 1e-6, 0.0) == 1  # no wait at all: one step a call


def test_texts_of_id_rows() -> None:
    ids = np.array([[0, 1, 2, 3], [3, 3, 0, 2]])
    assert Vocab("ab c").texts(ids) == ["ab c", "cca "]  # trailing spaces kept
    assert Vocab("ab\0c").texts(ids) == ["ab\0c", "cca\0"]  # a NUL character (numpy strings end at one)
