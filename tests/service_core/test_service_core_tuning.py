"""How an engine shares out its streams over its lanes: measured at start (service/tuning.py), or as configured."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import pytest
from fixtures.service_core import EngineFactory, RecordingObserver, collect

from service.batch import DecodeBatch
from service.tuning import (
    SPLIT_MARGIN,
    Timing,
    call_times,
    fastest,
    measure,
    measure_looks,
    plan,
    side_by_side,
    unsettled,
)
from service.types import GenerateParams, Sampling


def timings(all_threads: list[float], own: list[float], split: list[float | None]) -> list[Timing]:
    rows = [1, 2, 4, 8, 16, 32][: len(all_threads)]
    return [Timing(*t) for t in zip(rows, all_threads, own, split, strict=True)]


@pytest.mark.parametrize(("all_threads", "own", "rows"), [
    ([1.0, 1.2, 1.5, 2.0, 2.5, 4.0], [1.8, 2.0, 2.4, 3.0, 4.0, 7.0], 1),  # a Xeon: two threads read weights faster
    ([1.4, 1.9, 2.3, 2.5, 3.0, 4.4], [0.8, 0.9, 1.0, 2.0, 3.2, 6.3], 16),  # an EPYC: wake-ups cost more
    ([1.4, 1.9, 2.3, 2.5, 3.0, 4.4], [0.8, 0.9, 1.0, 2.0, 2.9, 6.3], 32),  # one thread faster at 16: from 32
    ([0.9, 1.9, 2.3, 2.5, 3.0, 4.4], [1.0, 0.9, 1.0, 2.0, 3.2, 6.3], 16),  # faster at 1 only: not from 1
    ([2.0, 3.0, 4.0], [1.0, 1.5, 2.0], 8),  # never faster: from twice the largest count timed
])  # fmt: skip
def test_all_threads_from_the_fewest_rows_past_which_they_stay_faster(
        all_threads: list[float], own: list[float], rows: int) -> None:  # fmt: skip
    assert plan(timings(all_threads, own, [None] * len(own)), lane_fill=16).all_threads_rows == rows


@pytest.mark.parametrize(("split", "fill"), [
    ([None, 0.95, 1.6, 1.1, 2.0, 3.5], 4),  # spread faster from 8 rows: a lane takes 4 first
    ([None, 0.5, 0.5, 1.0, 1.6, 3.5], 1),  # from 2 rows: every stream to the emptiest lane
    ([None, 0.95, 1.6, 3.0, 5.0, 7.0], 16),  # never: the given fill
    ([None, None, None, None, None, None], 16),  # one lane: nothing to spread over
])  # fmt: skip
def test_lane_fill_is_half_the_fewest_rows_that_step_faster_spread(split: list[float | None], fill: int) -> None:
    own = [0.8, 0.9, 1.0, 2.0, 3.2, 6.3]
    assert plan(timings([1.4, 1.9, 2.3, 2.5, 3.0, 4.4], own, split), lane_fill=16).lane_fill == fill


def test_spreading_must_win_by_the_margin() -> None:
    just_under = [None, 0.9 * SPLIT_MARGIN * 1.001, None]
    assert plan(timings([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], just_under), lane_fill=16).lane_fill == 16
    assert plan(timings([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [None, 0.8, None]), lane_fill=16).lane_fill == 1


def test_unsettled_rows_are_those_spread_below_the_fewest_that_stepped_faster_spread() -> None:
    own = [0.8, 0.9, 1.0, 2.0, 3.2, 6.3]
    assert unsettled(timings([1.4] * 6, own, [None, 0.95, 1.6, 1.1, 2.0, 3.5])) == [2, 4]
    assert unsettled(timings([1.4] * 6, own, [None, 0.5, 0.5, 1.0, 1.6, 3.5])) == []  # from 2 rows: settled
    assert unsettled(timings([1.4] * 6, own, [None, 0.95, 1.6, 3.0, 5.0, 7.0])) == [2, 4, 8, 16, 32]
    assert unsettled(timings([1.4] * 3, own[:3], [None] * 3)) == []  # one lane: nothing was spread


def test_fastest_takes_each_kinds_faster_time_where_both_looks_timed_the_rows() -> None:
    first = timings([1.0, 2.0, 4.0], [1.5, 2.5, 4.5], [None, 2.4, 4.0])
    assert fastest(first, [Timing(2, 2.2, 2.1, 1.2)]) == [first[0], Timing(2, 2.0, 2.1, 1.2), first[2]]


def sleeping_calls(busy_spread_calls: int) -> tuple[Callable[[int, int, bool], partial[None]], list[int]]:
    """Prepared calls that sleep 0.5 ms a row, and the rows of each second lane's call asked for: its first
    ``busy_spread_calls`` take twice as long (another process on a core, as two lanes side by side meet it)."""
    spread: list[int] = []

    def prepared(lane: int, rows: int, alone: bool) -> partial[None]:
        if lane == 1:
            spread.append(rows)
        busy = lane == 1 and len(spread) <= busy_spread_calls
        return partial(time.sleep, 0.0005 * rows * (2 if busy else 1))

    return prepared, spread


@pytest.mark.parametrize(("busy_looks", "looks", "fill"), [(1, 3, 1), (2, 3, 1), (3, 3, 16), (2, 2, 16)])
def test_a_later_look_finds_the_lane_fill_a_busy_moment_hid(busy_looks: int, looks: int, fill: int) -> None:
    prepared, spread = sleeping_calls(busy_spread_calls=2 * busy_looks)  # a look spreads 2 and 4 rows
    first, best = measure_looks(partial(measure, prepared, 2, 1, 4), looks=looks)
    assert plan(first, lane_fill=16).lane_fill == 16  # busy: spreading looked no faster
    assert plan(best, lane_fill=16).lane_fill == fill  # calm (within ``looks``): 2 rows stepped faster spread
    assert spread == [1, 2] * min(looks, busy_looks + 1)  # the unsettled 2 and 4 rows timed again, and only they


def test_no_second_look_where_the_fewest_rows_spread_already_stepped_faster() -> None:
    prepared, spread = sleeping_calls(busy_spread_calls=0)
    first, best = measure_looks(partial(measure, prepared, 2, 1, 4))
    assert best == first and plan(first, lane_fill=16).lane_fill == 1
    assert spread == [1, 2]


def test_side_by_side_makes_each_call_on_a_thread_of_its_own_at_least_min_calls_times() -> None:
    threads: list[list[int]] = [[], []]

    def call(i: int) -> None:
        threads[i].append(threading.get_ident())
        time.sleep(0.0005)  # (lets the other thread run, as an onnxruntime call does: it releases the GIL)

    calls = [partial(call, i) for i in range(2)]
    per_call = side_by_side(calls, seconds=0.0, min_calls=5)
    assert 0 < per_call < float("inf")
    assert all(len(t) >= 6 for t in threads)  # one warm-up each, then at least 5
    main = threading.get_ident()
    assert threads[0][0] == threads[1][0] == main  # the warm-ups
    loops = {t[-1] for t in threads}
    assert len(loops) == 2 and main not in loops


def test_call_times_gives_each_threads_own_time_per_call() -> None:
    def nap(seconds: float) -> None:
        time.sleep(seconds)  # (releases the GIL, as an onnxruntime call does)

    quick, slow = call_times([partial(nap, 0.0002), partial(nap, 0.005)], seconds=0.02, min_calls=3)
    assert 0.005 <= slow < float("inf") and quick < slow  # each its own, not the slowest for all


async def test_an_engine_measures_what_its_config_leaves_to_be_measured(
        make_engine: EngineFactory, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, "service.engine")
    observer = RecordingObserver()
    measured = make_engine("lstm", observer, lanes=2, measure_lanes=True)
    await measured.start()
    assert measured.config.all_threads_rows in (1, 2, 4, 8, 16, 32, 64)
    assert 1 <= measured.config.lane_fill <= 16
    assert all(lane.config is measured.config for lane in measured.lanes)
    # what was picked is reported once (the metrics' gauges: service/metrics.py)
    assert observer.lane_plans == [(2, measured.config.all_threads_rows, measured.config.lane_fill)]
    line = next(r for r in caplog.records if "lanes measured" in r.getMessage())
    assert vars(line)["timings_us"].startswith("1:")  # every timed row count, for the operator
    assert vars(line)["first_look_us"].startswith("1:")  # and the first look's, where a second changed them
    assert f"lane fill {measured.config.lane_fill} (first look: " in line.getMessage()
    caplog.clear()
    fixed_observer = RecordingObserver()
    fixed = make_engine("lstm", fixed_observer, lanes=2, lane_fill=3, all_threads_rows=5)
    await fixed.start()
    assert (fixed.config.lane_fill, fixed.config.all_threads_rows) == (3, 5)
    assert fixed_observer.lane_plans == [(2, 5, 3)]  # reported as set, nothing measured
    assert observer.precisions == fixed_observer.precisions == [("int8", "int8")]  # auto, the default, on the CPU
    assert not any("lanes measured" in r.getMessage() for r in caplog.records)
    # one lane on one thread (the tiny runtimes'): nothing to choose
    alone = make_engine("lstm", lanes=1, measure_lanes=True)
    await alone.start()
    assert (alone.config.lane_fill, alone.config.all_threads_rows) == (16, 1)
    assert not any("lanes measured" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rows", [1, 1000])
async def test_a_lane_stepping_alone_takes_all_threads_from_all_threads_rows(
        make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch, rows: int) -> None:  # fmt: skip
    seen: set[bool] = set()
    steps_call, step = DecodeBatch.steps_call, DecodeBatch.step

    def spy_steps(self: DecodeBatch, alone: bool = True):  # type: ignore[no-untyped-def]
        seen.add(alone)
        return steps_call(self, alone)

    def spy_step(self: DecodeBatch, alone: bool = True):  # type: ignore[no-untyped-def]
        seen.add(alone)
        return step(self, alone)

    monkeypatch.setattr(DecodeBatch, "steps_call", spy_steps)
    monkeypatch.setattr(DecodeBatch, "step", spy_step)
    params = GenerateParams(Sampling(temperature=1.0, seed=7), max_chars=40)
    engine = make_engine("lstm", lanes=2, lane_fill=4, all_threads_rows=rows)
    text, _ = await collect(engine, engine.new_state(7), "The keeper ", params)
    assert seen == {rows == 1}  # one stream: its lane steps alone, on all threads only from 1 row
    reference = make_engine("lstm", lanes=1, lane_fill=4, all_threads_rows=1)
    assert (await collect(reference, reference.new_state(7), "The keeper ", params))[0] == text
