"""A lane that runs dry takes half of the busiest lane's rows (service/lane.py, Lane._give): the rows' text is
the one they would have had where they were, the lanes' request counts stay right, and a consumer that goes
away or an engine that closes meanwhile leaves no stream behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from fixtures.service_core import EngineFactory, collect

from service.engine import Engine
from service.errors import Unavailable
from service.lane import SHARE_MIN_ROWS, Lane
from service.stream import Stream
from service.types import Chunk, GenerateParams, Sampling

PROMPT = "The keeper "
LONG = 300
SHORT = 5
LONGS = SHARE_MIN_ROWS + 4  # enough for the second lane to give rows


async def until(done: Callable[[], bool]) -> None:
    """Poll ``done`` (state the step threads write) until it holds."""
    while not done():
        await asyncio.sleep(0.001)


def params(seed: int, n: int) -> GenerateParams:
    return GenerateParams(Sampling(temperature=0.9, seed=seed), max_chars=n)


async def read(engine: Engine, seed: int, n: int, stop_after: int | None = None,
               cancel: asyncio.Event | None = None) -> str:  # fmt: skip
    """A stream's text; ``stop_after`` chunks: its consumer goes away then (or cancels, with ``cancel``)."""
    text, chunks = "", 0
    gen = engine.generate(engine.new_state(), PROMPT, params(seed, n), cancel)
    async with contextlib.aclosing(gen):
        async for ev in gen:
            if isinstance(ev, Chunk):
                text, chunks = text + ev.text, chunks + 1
                if chunks == stop_after:
                    if cancel is None:
                        break
                    cancel.set()
    return text


async def short_and_long(engine: Engine) -> list[str]:
    """Short streams into the first lane and long ones into the second, alternately (lane_fill 1; the tasks
    submit in order, in one turn of the event loop), so that the first lane runs dry while the second holds
    LONGS rows; the long streams' texts."""
    tasks = []
    for i in range(LONGS):
        tasks.append(asyncio.ensure_future(read(engine, 1000 + i, SHORT)))
        tasks.append(asyncio.ensure_future(read(engine, i, LONG)))
    done = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return done[1::2]


async def test_rows_move_to_a_lane_that_runs_dry_and_keep_their_text(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm", lanes=2, lane_fill=1, inline_prompt_chars=0)
    refs = [(await collect(engine, engine.new_state(), PROMPT, params(i, LONG)))[0] for i in range(LONGS)]
    first, second = engine.lanes
    assert first.moved_rows == second.moved_rows == 0  # (one stream at a time: nothing to share)
    for _ in range(3):
        before = second.moved_rows
        assert await short_and_long(engine) == refs
        assert before < second.moved_rows < before + LONGS  # (half of its rows, never all)
    assert engine.active_streams == 0 and first.active == second.active == 0


async def test_consumers_that_go_away_or_cancel_around_a_move_leave_nothing_behind(
        make_engine: EngineFactory) -> None:  # fmt: skip
    engine = make_engine("lstm", lanes=2, lane_fill=1, inline_prompt_chars=0, messages_per_s=2000)
    await engine.start()
    refs = [(await collect(engine, engine.new_state(), PROMPT, params(i, LONG)))[0] for i in range(LONGS)]
    for after in (1, 2, 3, 5):
        tasks = []
        for i in range(LONGS):
            tasks.append(asyncio.ensure_future(read(engine, 1000 + i, SHORT)))
            cancel = asyncio.Event() if i % 3 == 1 else None
            stop = after + i % 2 if i % 3 else None  # a third read to the end, a third cancel, a third go away
            tasks.append(asyncio.ensure_future(read(engine, i, LONG, stop, cancel)))
        texts = (await asyncio.wait_for(asyncio.gather(*tasks), 60))[1::2]
        for i, text in enumerate(texts):
            assert text == refs[i] if i % 3 == 0 else refs[i].startswith(text), (after, i)
        assert engine.active_streams == 0, after
    assert await short_and_long(engine) == refs  # the engine still serves, its counts right
    assert engine.lanes[1].moved_rows > 0


async def test_rows_on_their_way_when_the_engine_closes_end_unavailable(make_engine: EngineFactory) -> None:
    engine = make_engine("lstm", lanes=2, lane_fill=1, inline_prompt_chars=0)
    await engine.start()
    results: list[object] = []

    async def long(i: int) -> None:
        try:
            results.append(await read(engine, i, 10**6))
        except Unavailable as e:
            results.append(e)

    tasks = []
    for i in range(LONGS):
        tasks.append(asyncio.ensure_future(read(engine, 1000 + i, SHORT)))
        tasks.append(asyncio.ensure_future(long(i)))
    await asyncio.wait_for(asyncio.gather(*tasks[0::2]), 60)  # the short ones: the first lane ran dry
    await asyncio.wait_for(until(lambda: engine.lanes[1].moved_rows > 0), 30)
    await asyncio.wait_for(engine.close(), 30)
    await asyncio.wait_for(asyncio.gather(*tasks[1::2]), 30)
    assert len(results) == LONGS and all(isinstance(r, Unavailable) for r in results)


async def test_a_consumer_that_goes_away_while_its_row_moves_is_let_go_where_the_row_lands(
        make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The two orders of a move and an abandon: sent to the old lane while the row is on its way (it ends
    where it joins), and run by the old lane after the row joined the new one (forwarded there)."""
    engine = make_engine("lstm", lanes=2, lane_fill=1, inline_prompt_chars=0)
    await engine.start()
    held: list[tuple[Lane, Stream, Lane]] = []
    moved = Lane._moved
    monkeypatch.setattr(Lane, "_moved", lambda lane, s, to: held.append((lane, s, to)))  # (released below)
    longs = {}
    tasks = []
    for i in range(LONGS):
        tasks.append(asyncio.ensure_future(read(engine, 1000 + i, SHORT)))
        longs[i] = asyncio.ensure_future(read(engine, i, 10**6))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    await asyncio.wait_for(until(lambda: len(held) >= 2), 30)
    (giver, first, to), (_, second, _) = held[0], held[1]
    longs[first.state.seed or 0].cancel()  # its consumer goes away while the row is on its way
    await asyncio.wait_for(until(lambda: first.abandoned), 30)
    for lane, s, dest in held:
        moved(lane, s, dest)
    assert second.lane is to
    await asyncio.wait_for(until(lambda: second.where == "batch" and to._batch.n > 0 and not to._dirty), 30)
    giver._abandon(second)  # an abandon the old lane runs after the row joined `to`: forwarded there
    await asyncio.wait_for(until(lambda: first.where == second.where == "done"), 30)
    assert first.finish_reason is second.finish_reason is None
    for task in longs.values():
        task.cancel()
    await asyncio.gather(*longs.values(), return_exceptions=True)
    assert engine.active_streams == 0 and giver.active == to.active == 0
