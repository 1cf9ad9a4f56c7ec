"""The batching engine's flow control: cancellation, slow readers, chunked prefill, stops, limits, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from fixtures.service_core import EngineFactory, RecordingObserver, collect, until

from service.engine import Engine
from service.errors import InvalidArgument, Unavailable
from service.logs import REQUEST_ID
from service.runtime import Runtime
from service.stream import Stream
from service.types import Chunk, Finish, GenerateParams, Sampling

PROMPT = "The keeper "
LONG = GenerateParams(Sampling(temperature=1.0, seed=1), max_chars=100_000)


async def consume(engine: Engine, prompt: str, params: GenerateParams, out: list[str]) -> Finish:
    await engine.start()
    async for event in engine.generate(engine.new_state(), prompt, params):
        if isinstance(event, Chunk):
            out.append(event.text)
        else:
            return event
    raise AssertionError("no Finish")


async def test_cancelled_consumer_task_frees_its_row(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm")
    await engine.start()
    chunks: list[str] = []
    task = asyncio.create_task(consume(engine, PROMPT, LONG, chunks))
    await until(lambda: len(chunks) > 3)
    assert engine.active_streams == 1 and engine.batch_size == 1
    task.cancel()
    # (the rows leave in the step threads; a lane counts a stream gone when its end reaches the event loop)
    await until(lambda: engine.batch_size == 0 and engine.active_streams == 0)


async def test_streams_fill_a_lane_then_the_next_then_go_to_the_lane_holding_the_fewest(
        make_engine: EngineFactory) -> None:  # fmt: skip
    engine = make_engine("lstm", lanes=3, lane_fill=2)
    await engine.start()
    outs: list[list[str]] = []
    tasks: list[asyncio.Task[Finish]] = []

    async def add() -> None:
        outs.append([])
        tasks.append(asyncio.create_task(consume(engine, PROMPT, LONG, outs[-1])))
        await until(lambda: bool(outs[-1]))

    def held() -> list[int]:
        return [lane.active for lane in engine.lanes]

    for _ in range(5):
        await add()
    assert held() == [2, 2, 1] and engine.active_streams == 5
    await until(lambda: [lane.batch_size for lane in engine.lanes] == [2, 2, 1])
    tasks[0].cancel()  # lane 0 is below its fill again: it gets the next stream
    await until(lambda: held() == [1, 2, 1])
    await add()
    assert held() == [2, 2, 1]
    await add()  # lane 2 is the last below its fill
    assert held() == [2, 2, 2]
    await add()  # every lane is full: the one holding the fewest (the first of them on a tie)
    assert held() == [3, 2, 2]
    for t in tasks:
        t.cancel()
    # (the rows leave in the step threads; a lane counts a stream gone when its end reaches the event loop)
    await until(lambda: engine.batch_size == 0 and engine.active_streams == 0)


async def test_concurrent_starts_prepare_the_batches_once(make_engine: EngineFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    engine = make_engine("gru")
    calls, prepare = 0, engine._prepare

    def counting() -> None:
        nonlocal calls
        calls += 1
        prepare()

    monkeypatch.setattr(engine, "_prepare", counting)
    await asyncio.gather(*(engine.start() for _ in range(4)))  # as concurrent requests' first calls do
    assert calls == 1
    out: list[str] = []
    finish = await consume(engine, PROMPT, GenerateParams(Sampling(seed=1), max_chars=30), out)
    assert finish.reason == "length" and len("".join(out)) == 30


async def test_slow_reader_coalesces_and_does_not_hold_others_back(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm", stream_buffer_chars=32)
    await engine.start()
    slow = engine.generate(engine.new_state(), PROMPT, GenerateParams(Sampling(seed=2), max_chars=200))
    first = await slow.__anext__()  # then the reader stops reading for a while
    fast: list[str] = []
    fast_finish = await consume(engine, PROMPT, GenerateParams(Sampling(seed=3), max_chars=300), fast)
    assert fast_finish.reason == "length" and len("".join(fast)) == 300  # finished while the slow one was stuck
    await until(lambda: engine.batch_size == 0)  # the finished row leaves at the next step...
    assert engine.active_streams == 1  # ...and the slow stream is held, paused, not stepped
    rest: list[Chunk | Finish] = [e async for e in slow]
    chunks = [e for e in rest if isinstance(e, Chunk)]
    assert isinstance(first, Chunk) and isinstance(rest[-1], Finish)
    assert len(chunks[0].text) == 32 - len(first.text) or len(chunks[0].text) == 32  # a full buffer, coalesced
    assert len(first.text) + sum(len(c.text) for c in chunks) == 200 == rest[-1].generated_chars
    # the paused-and-resumed stream sampled exactly what an undisturbed one does
    alone, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(Sampling(seed=2), max_chars=200))
    assert first.text + "".join(c.text for c in chunks) == alone


async def test_long_prompt_is_prefilled_in_chunks_while_others_step(make_engine: EngineFactory,
                                                                    tiny_text: str) -> None:  # fmt: skip
    observer = RecordingObserver()
    engine = make_engine("lstm", prefill_chunk=64, observer=observer)
    await engine.start()
    runner: list[str] = []
    task = asyncio.create_task(consume(engine, PROMPT, LONG, runner))
    await until(lambda: len(runner) > 0)
    long_prompt = tiny_text[:2000]
    steps_before = len(observer.steps)
    out: list[str] = []
    finish = await consume(engine, long_prompt, GenerateParams(Sampling(seed=4), max_chars=5), out)
    assert finish.prompt_chars == 2000 and len("".join(out)) == 5
    # ~2000 / 64 prefill chunks, each interleaved with a decode step of the running stream
    assert len(observer.steps) - steps_before >= 2000 // 64
    task.cancel()
    # and the chunked prefill left the same state as one pass: compare with a lone stream
    alone: list[str] = []
    await consume(make_engine("lstm", prefill_chunk=4096), long_prompt, GenerateParams(Sampling(seed=4), max_chars=5),
                  alone)  # fmt: skip
    assert "".join(out) == "".join(alone)


async def test_prefill_calls_hold_at_most_prefill_chars(make_engine: EngineFactory, tiny_runtimes: dict[str, Runtime],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    rt = tiny_runtimes["gru"]
    shapes: list[tuple[int, ...]] = []
    run = rt.run

    def record(ids: np.ndarray, states: tuple[np.ndarray, ...], session: object = None) -> object:
        shapes.append(ids.shape)
        return run(ids, states, session)  # type: ignore[arg-type]

    monkeypatch.setattr(rt, "run", record)
    # 8 prompts of 33 characters queued at once (the step loop's own methods, run here without its thread)
    engine = make_engine("gru", prefill_chunk=16, prefill_chars=40)
    for seed in range(8):
        params = GenerateParams(Sampling(seed=seed), max_chars=20)
        engine.lanes[0]._accept(Stream(engine.new_state(), np.arange(33) % 20, None, params, None, rt.vocab_size))
    lane = engine.lanes[0]
    while lane._prefilling:
        lane._prefill()
    assert shapes[0] == (2, 16)  # not (8, 16): 40 characters at most, so two streams of the 16-character chunk
    assert all(p * n <= 40 for p, n in shapes) and sum(p * n for p, n in shapes) == 8 * 33
    # and through the running engine, bounded calls give the same text as unbounded ones
    params = [GenerateParams(Sampling(seed=s), max_chars=20) for s in range(8)]

    async def texts(engine: Engine) -> list[str]:
        await engine.start()
        outs: list[list[str]] = [[] for _ in params]
        await asyncio.gather(*(consume(engine, PROMPT * 3, p, o) for p, o in zip(params, outs, strict=True)))
        return ["".join(o) for o in outs]

    assert await texts(make_engine("gru", prefill_chunk=16, prefill_chars=40)) == await texts(make_engine("gru"))


async def test_a_generation_ends_with_its_stop_sequence_or_at_exactly_max_chars(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm")
    greedy = Sampling(temperature=0)
    free, _ = await collect(engine, engine.new_state(), PROMPT, GenerateParams(greedy, 80))
    stop = free[20:23]
    text, finish = await collect(engine, engine.new_state(), PROMPT, GenerateParams(greedy, 80, stop=("zzzq", stop)))
    assert finish.reason == "stop" and finish.stop_sequence == stop
    assert text == free[: free.index(stop) + len(stop)] and text.endswith(stop)
    assert finish.generated_chars == len(text)
    rnn = make_engine("rnn")
    text, finish = await collect(rnn, rnn.new_state(), "a", GenerateParams(Sampling(seed=9), max_chars=17))
    assert len(text) == 17 and finish.reason == "length" and finish.generated_chars == 17


@pytest.mark.parametrize(
    ("prompt", "params", "field", "words"),
    [
        ("héllo", GenerateParams(), "prompt", "'é' (U+00E9)"),
        ("", GenerateParams(), "prompt", "no context"),
        ("hi", GenerateParams(max_chars=0), "max_chars", ">= 1"),
        ("hi", GenerateParams(stop=("",)), "stop", "empty"),
        ("hi", GenerateParams(Sampling(top_p=0.0)), "sampling.top_p", "(0, 1]"),
        ("hi", GenerateParams(Sampling(top_k=1000)), "sampling.top_k", "[0, "),
    ],
)
async def test_bad_requests_are_invalid_arguments(make_engine: EngineFactory, prompt: str, params: GenerateParams,
                                                  field: str, words: str) -> None:  # fmt: skip
    engine = make_engine("gru")
    await engine.start()
    with pytest.raises(InvalidArgument) as e:
        await collect(engine, engine.new_state(), prompt, params)
    assert e.value.field == field and words in str(e.value)
    assert engine.active_streams == 0
    with pytest.raises(InvalidArgument, match="U\\+00E9"):
        await engine.feed(engine.new_state(), "café")


async def test_more_streams_than_rows_wait_for_a_free_row(make_engine: EngineFactory) -> None:
    observer = RecordingObserver()
    engine = make_engine("gru", max_batch=4, observer=observer)
    await engine.start()
    results = await asyncio.gather(*(collect(engine, engine.new_state(), PROMPT, GenerateParams(max_chars=30))
                                     for _ in range(10)))  # fmt: skip
    assert all(len(t) == 30 for t, _ in results)
    assert max(observer.steps) == 4


async def test_close_ends_held_streams_and_refuses_new_work(make_engine: EngineFactory) -> None:
    engine = make_engine("gru", stream_buffer_chars=8)
    await engine.start()
    paused = engine.generate(engine.new_state(), PROMPT, LONG)
    await paused.__anext__()  # then never read again: its buffer fills and it pauses
    chunks: list[str] = []
    running = asyncio.create_task(consume(engine, PROMPT, LONG, chunks))
    await until(lambda: len(chunks) > 2)
    await engine.close()
    with pytest.raises(Unavailable):
        await running
    with pytest.raises(Unavailable):
        async for _ in paused:
            pass
    with pytest.raises(Unavailable, match="not running"):
        await collect_no_start(engine)


async def collect_no_start(engine: Engine) -> None:
    async for _ in engine.generate(engine.new_state(), PROMPT, GenerateParams()):
        pass


async def test_a_failed_step_fails_its_streams_and_the_step_thread_goes_on(
        make_engine: EngineFactory, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    engine = make_engine("gru")
    await engine.start()
    batch = engine.lanes[0]._batch  # a lone stream goes to the first lane
    calls = 0

    def failing_once(call: Callable[[bool], object]) -> Callable[[bool], object]:
        def failing(alone: bool = True) -> object:  # a fault in the 5th onnxruntime call (one step or several)
            nonlocal calls
            calls += 1
            if calls == 5:
                raise RuntimeError("the onnxruntime call failed")
            return call(alone)

        return failing

    batch.step, batch.steps_call = failing_once(batch.step), failing_once(batch.steps_call)  # type: ignore[method-assign]
    REQUEST_ID.set("the failing one")  # (as the servicer sets it for each call's task)
    with pytest.raises(RuntimeError, match="call failed"):
        await consume(engine, PROMPT, GenerateParams(Sampling(seed=1), max_chars=100), [])
    (line,) = [r for r in caplog.records if "engine step failed" in r.getMessage()]
    assert vars(line)["request_ids"] == "the failing one"  # the step thread names the requests it fails
    assert engine.active_streams == 0 and engine.batch_size == 0
    out: list[str] = []
    finish = await consume(engine, PROMPT, GenerateParams(Sampling(seed=1), max_chars=20), out)
    assert finish.reason == "length" and len("".join(out)) == 20  # the same thread serves the next request
