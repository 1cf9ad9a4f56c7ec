"""Later looks at a measured lane plan while the engine is idle (service/idle_looks.py), and what a request that
comes meanwhile meets."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial

import pytest
from fixtures.service_core import EngineFactory, RecordingObserver, collect, until

import service.engine
from bench.lane_plan import IDLE
from service.config import EngineConfig
from service.idle_looks import IdleLooks
from service.tuning import Timing, measure, measure_looks, plan
from service.types import GenerateParams, Sampling

IDLE_S = 0.05


class Calls:
    """Prepared calls that sleep ``per_row`` s a row; while ``busy``, the second lane's take twice as long (another
    process on a core, as two lanes side by side meet it). ``timed`` counts the calls made."""

    def __init__(self, per_row: float = 0.0005) -> None:
        self.per_row, self.busy, self.timed = per_row, True, 0

    def prepared(self, lane: int, rows: int, alone: bool) -> partial[None]:
        return partial(self._call, lane, rows)

    def _call(self, lane: int, rows: int) -> None:
        self.timed += 1
        time.sleep(self.per_row * rows * (2 if self.busy and lane == 1 else 1))


def looks_over(calls: Calls, idle: list[bool], used: list[int], looks: int = 3, idle_s: float = IDLE_S) -> IdleLooks:
    """IdleLooks over ``calls``' two lanes, its first timings taken while busy (a lane fill of 16)."""
    timed = partial(measure, calls.prepared, 2, 1, 4)
    first = timed()
    assert plan(first, 16).lane_fill == 16
    return IdleLooks("m", first, timed, 16, lambda: idle[0], used.append, looks, idle_s)


async def test_a_look_while_idle_lowers_the_lane_fill_and_then_looks_no_more() -> None:
    calls, idle, used = Calls(), [True], []
    looks = looks_over(calls, idle, used)
    calls.busy = False
    looks.start()
    await until(lambda: bool(used))
    assert used == [1] and looks.fill == 1 and looks.looks_left == 2  # 2 rows step faster spread: a fill of 1
    assert not looks.wanted()
    timed = calls.timed
    await asyncio.sleep(6 * IDLE_S)
    assert calls.timed == timed  # nothing left to look at
    await looks.close()


async def test_no_look_while_busy_or_soon_after_a_request() -> None:
    calls, idle, used = Calls(), [False], []
    looks = looks_over(calls, idle, used, idle_s=0.5)  # (gaps between requests far shorter, on a busy machine too)
    calls.busy = False
    timed = calls.timed
    looks.start()
    await asyncio.sleep(1.2)
    assert calls.timed == timed  # streams held: no look
    idle[0] = True
    for _ in range(12):  # a request every 0.1 s: the engine is never idle long enough
        await looks.hold()
        await asyncio.sleep(0.1)
    assert calls.timed == timed and looks.looks_left == 3
    await until(lambda: bool(used))  # requests stopped: it looks
    await looks.close()


async def test_a_request_stops_a_look_under_way_which_counts_for_nothing() -> None:
    calls, idle, used = Calls(per_row=0.002), [True], []
    looks = looks_over(calls, idle, used)
    calls.busy = False
    looks.start()
    await until(lambda: looks.looking)
    start = time.perf_counter()
    await looks.hold()  # a request: the look stops within one timing
    assert time.perf_counter() - start < 0.2 and not looks.looking
    assert used == [] and looks.looks_left == 3 and looks.fill == 16
    await until(lambda: bool(used))  # idle again: a later look finds the fill
    assert used == [1] and looks.looks_left == 2
    await looks.close()


async def test_looks_run_out() -> None:
    calls, idle, used = Calls(), [True], []
    looks = looks_over(calls, idle, used, looks=2)  # busy all along: spreading never looks faster
    looks.start()
    await until(lambda: looks.looks_left == 0)
    assert not looks.wanted() and used == [] and looks.fill == 16
    await looks.close()


async def test_close_waits_for_a_look_under_way() -> None:
    calls, idle, used = Calls(per_row=0.002), [True], []
    looks = looks_over(calls, idle, used)
    looks.start()
    await until(lambda: looks.looking)
    await looks.close()
    assert not looks.looking
    timed = calls.timed
    await asyncio.sleep(4 * IDLE_S)
    assert calls.timed == timed


async def test_a_look_that_fails_ends_the_looks_and_keeps_the_plan(caplog: pytest.LogCaptureFixture) -> None:
    calls, idle, used = Calls(), [True], []
    looks = looks_over(calls, idle, used)

    def broken(**_: object) -> list[Timing]:
        raise RuntimeError("onnxruntime: out of memory")

    looks._measure = broken
    looks.start()
    await until(lambda: looks.looks_left == 0)
    assert not looks.wanted() and used == [] and looks.fill == 16 and not looks.looking
    assert "no more looks" in caplog.text
    await looks.hold()  # a request is not held up by it
    await looks.close()


def test_no_looks_where_the_fill_is_low_already() -> None:
    spread = [Timing(1, 1.0, 1.0), Timing(2, 2.0, 2.0, 2.0), Timing(4, 4.0, 4.0, 2.0)]  # 4 rows: a fill of 2
    looks = IdleLooks("m", spread, lambda **_: [], 16, lambda: True, lambda _: None, 5, IDLE_S)
    assert looks.fill == 2 and not looks.wanted()


def test_a_look_needs_some_idle_time() -> None:
    with pytest.raises(ValueError, match="idle_look_after_s: must be > 0"):
        EngineConfig(idle_look_after_s=0)  # (the looks' task would poll without end)


async def test_an_engine_looks_again_while_idle_and_serves_what_it_would_have(
        make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    def busy_first(*args: object, **kwargs: object) -> tuple[list[Timing], list[Timing]]:
        """The real looks at start, spreading made to look slow (a busy moment): a lane fill of 16."""
        best = measure_looks(*args, **kwargs)[1]  # type: ignore[arg-type]
        slow = [replace(t, split=None if t.split is None else 10 * t.split) for t in best]
        return slow, slow

    monkeypatch.setattr(service.engine, "measure_looks", busy_first)
    caplog.set_level(logging.INFO, "service.idle_looks")
    observer = RecordingObserver()
    engine = make_engine("lstm", observer, lanes=2, measure_lanes=True, idle_look_after_s=IDLE_S)
    params = GenerateParams(Sampling(temperature=1.0, seed=11), max_chars=60)
    reference = make_engine("lstm", lanes=1, lane_fill=4, all_threads_rows=1)
    expected, _ = await collect(reference, reference.new_state(11), "The keeper ", params)
    await engine.start()
    assert engine.config.lane_fill == 16
    looks = engine._looks
    assert looks is not None
    await until(lambda: looks.looking)
    text, _ = await collect(engine, engine.new_state(11), "The keeper ", params)  # stops the look under way
    assert text == expected and looks.looks_left == 5
    await until(lambda: looks.looks_left < 5)  # idle again: a look that counts
    await until(lambda: not looks.looking)
    assert engine.config.lane_fill == looks.fill <= 16
    assert all(lane.config is engine.config for lane in engine.lanes)
    assert observer.lane_plans[-1][2] == looks.fill  # a lower fill is reported as the start's was
    looked = [IDLE.search(r.getMessage()) for r in caplog.records]  # (as bench.lane_plan reads the log)
    assert [int(m[1]) for m in looked if m][-1] == looks.fill
    text, _ = await collect(engine, engine.new_state(11), "The keeper ", params)
    assert text == expected  # the looks' calls left nothing behind in the lanes' buffers
