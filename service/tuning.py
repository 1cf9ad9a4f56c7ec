"""How a model's lanes share out their streams on this machine, measured by the engine before it serves.

Two choices of service/lane.py depend on the machine more than on the model:

- A lane stepping alone may run its decode calls on all of onnxruntime's threads or on its own thread. The
  threads do not spin between operators (they would take the cores the event loop needs), so each operator
  wakes them. On the Xeon VM the lanes were built on, a one-row step took 80-100 µs on two threads against
  155-180 on one; on an AMD EPYC VM, 144 µs against 104, and one thread was faster up to 16 rows.
- A few streams may step in one lane, or be spread over the lanes, each lane's calls on its own thread.
  Spread, every step's Python runs once per lane instead of once; on the Xeon, 8 streams in one lane were
  served as fast as spread over two, on the EPYC 8 streams spread over two lanes were served 1.3x faster.

So the engine times its own prepared decode calls (``measure``: ~0.85 s a look for the shipped model on 2 cores,
~0.4 s for a tiny one, before it serves) and picks (``plan``); ``--all-threads-rows`` and ``--lane-fill`` set
either choice instead. A busy moment slows two lanes side by side more than one lane alone (they need both
cores), so it can only hide a smaller lane fill: the row counts that did not step faster spread are timed
again (``measure_looks``), and each kind's fastest of every look counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

ROWS = (1, 2, 4, 8, 16, 32)  # the row counts timed (a lane holds a few rows before the next gets any)
MIN_CALLS = 3  # calls per timing, at least (the fastest of ROUNDS timings counts, so one slow call is outvoted)
# Each kind of call is timed this often, alternating with the others; the fastest counts. Something else taking a
# core for the ~0.5 s of 3 rounds made two lanes look slow and the plan keep the streams in one lane: 5 of 20
# starts on a 2-core VM picked a lane fill of 4, 8 or 16 rather than 2 (with 8: 10-17% fewer chars/s at 8 and 16
# streams), and 0 of 20 with 6 rounds, alternated (docs/performance.md).
ROUNDS = 6
# Looks in all at the row counts a busy moment may have left unsettled. On a 2-vCPU AMD EPYC VM, the first look of
# 12 of 50 starts picked a lane fill above 2 (8 or 16 in 5), and 7 kept one (8 or 16 in 2) after up to 3 looks
# (docs/performance-history.md, "The sixty-first pass").
LOOKS = 3
SPLIT_MARGIN = 0.9  # spreading n rows over two lanes must take under this share of one lane's time
Call = Callable[[], None]


class Interrupted(Exception):
    """``measure`` was told to stop (a request came while it timed an idle engine's calls)."""


@dataclass(frozen=True)
class Timing:
    """Seconds per decode call of ``rows`` rows: one lane on all threads, one lane on its own thread, and
    two lanes side by side, each ``rows`` / 2 rows on its own thread (None below 2 rows or with one lane)."""

    rows: int
    all_threads: float
    own_thread: float
    split: float | None = None


@dataclass(frozen=True)
class LanePlan:
    """What ``measure`` picked: see EngineConfig.all_threads_rows and EngineConfig.lane_fill."""

    all_threads_rows: int
    lane_fill: int


def plan(timings: Sequence[Timing], lane_fill: int) -> LanePlan:
    """The fewest rows from which all threads beat the lane's own thread at every larger count timed (twice the
    largest when they never do), and the lane fill: half the fewest rows that step faster spread over two
    lanes, by ``SPLIT_MARGIN`` (``lane_fill`` when none do)."""
    rows = 2 * timings[-1].rows
    for t in reversed(timings):
        if t.all_threads >= t.own_thread:
            break
        rows = t.rows
    for t in timings:
        if spreads(t):
            return LanePlan(rows, max(1, t.rows // 2))
    return LanePlan(rows, lane_fill)


def spreads(t: Timing) -> bool:
    """Whether ``t.rows`` rows stepped faster spread over two lanes than in one, by ``SPLIT_MARGIN``."""
    return t.split is not None and t.split < SPLIT_MARGIN * min(t.all_threads, t.own_thread)


def unsettled(timings: Sequence[Timing]) -> list[int]:
    """The row counts timed spread that stepped no faster so, below the fewest that did: where a busy moment,
    which slows two lanes side by side more than one lane alone, may have hidden a smaller lane fill."""
    rows = []
    for t in timings:
        if spreads(t):
            break
        if t.split is not None:
            rows.append(t.rows)
    return rows


def fastest(first: Sequence[Timing], again: Sequence[Timing]) -> list[Timing]:
    """``first``, each kind of call at the faster of its two times where ``again`` timed its rows too."""
    seen = {t.rows: t for t in again}
    out = []
    for t in first:
        u = seen.get(t.rows)
        if u is None:
            out.append(t)
            continue
        split = None if t.split is None or u.split is None else min(t.split, u.split)
        out.append(Timing(t.rows, min(t.all_threads, u.all_threads), min(t.own_thread, u.own_thread), split))
    return out


def describe(timings: Sequence[Timing]) -> str:
    """The timings in µs, for a log line: ``rows:all/own/split`` each (``-``: not timed)."""
    return " ".join(f"{t.rows}:" + "/".join("-" if x is None else str(round(x * 1e6))
                                            for x in (t.all_threads, t.own_thread, t.split)) for t in timings)


def per_call(call: Callable[[], object], seconds: float, min_calls: int = MIN_CALLS) -> float:
    """Seconds per call of ``call`` over at least ``min_calls`` calls and ``seconds``, after one to warm up."""
    call()
    n, start = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < seconds:
        call()
        n += 1
    return (time.perf_counter() - start) / n


def side_by_side(calls: Sequence[Call], seconds: float, min_calls: int = MIN_CALLS) -> float:
    """Seconds per call of the slowest of ``calls`` made side by side, each on a thread of its own."""
    return max(call_times(calls, seconds, min_calls))


def call_times(calls: Sequence[Call], seconds: float, min_calls: int = MIN_CALLS) -> list[float]:
    """Seconds per call of each of ``calls``, made side by side, each on a thread of its own (inf: too few).

    Only calls that end while every thread is calling count: a thread started late (on a busy VM, by up to
    milliseconds) would otherwise count as a slow call of the others.
    """
    for call in calls:
        call()
    stop, started = threading.Event(), [threading.Event() for _ in calls]
    marks: list[list[float]] = [[] for _ in calls]  # per thread: when it began, then the end of every call

    def loop(i: int) -> None:
        own = marks[i]
        own.append(time.perf_counter())
        started[i].set()
        while not stop.is_set():
            calls[i]()
            own.append(time.perf_counter())

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for e in started:
        e.wait()
    lo = max(m[0] for m in marks)  # from here every thread is calling
    time.sleep(seconds)
    while any(sum(t > lo for t in m) <= min_calls for m in marks):
        time.sleep(0.001)  # (a thread of its own polling more often would take a core from the calls)
    stop.set()
    for t in threads:
        t.join()
    hi = min(m[-1] for m in marks)
    times = []
    for m in marks:
        inside = [t for t in m if lo <= t <= hi]
        times.append((inside[-1] - inside[0]) / (len(inside) - 1) if len(inside) >= 2 else float("inf"))
    return times


# ``measure`` with its calls bound (partial(measure, prepared, lanes, threads, max_rows)): timed(rows_timed, stop)
Timed = Callable[..., list[Timing]]


def measure_looks(timed: Timed, looks: int = LOOKS) -> tuple[list[Timing], list[Timing]]:
    """``timed()``, then ``look_again`` up to ``looks`` looks in all or until no row count is unsettled: the first
    look's timings, and each kind's fastest of every look."""
    first = best = timed()
    for _ in range(looks - 1):
        if not unsettled(best):
            break
        best = look_again(timed, best)
    return first, best


def look_again(timed: Timed, timings: Sequence[Timing], stop: Callable[[], bool] | None = None) -> list[Timing]:
    """``timings``' ``unsettled`` row counts timed again, each kind at the faster of its two times (raises
    Interrupted where ``stop()`` turns true)."""
    return fastest(timings, timed(rows_timed=unsettled(timings), stop=stop))


def measure(prepared: Callable[[int, int, bool], Call], lanes: int, threads: int, max_rows: int,
            seconds: float = 0.002, rows_timed: Sequence[int] = ROWS,
            stop: Callable[[], bool] | None = None) -> list[Timing]:  # fmt: skip
    """Timings of the prepared calls at ``rows_timed`` up to ``max_rows``. ``prepared(lane, rows, alone)``: lane
    ``lane``'s call of ``rows`` rows on all (``threads``) threads (``alone``) or on its own thread; with one
    thread in all, the two are one kind of call, timed once. Raises Interrupted where ``stop()`` turns true
    (asked before each timing, a few ms apart)."""
    timings = []
    for rows in (r for r in rows_timed if r <= max_rows):
        kinds: dict[str, Callable[[], float]] = {"own": partial(per_call, prepared(0, rows, False), seconds)}
        if threads > 1:
            kinds["all"] = partial(per_call, prepared(0, rows, True), seconds)
        if lanes > 1 and rows > 1:
            kinds["split"] = partial(side_by_side, [prepared(i, rows // 2, False) for i in range(2)], seconds)
        seen: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(ROUNDS):  # alternated, so that the machine's drift meets every kind alike
            for k, f in kinds.items():
                if stop is not None and stop():
                    raise Interrupted
                seen[k].append(f())
        best = {k: min(v) for k, v in seen.items()}
        timings.append(Timing(rows, best.get("all", best["own"]), best["own"], best.get("split")))
    return timings
