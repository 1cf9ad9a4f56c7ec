"""A pass's full runs of bench/serve.py summed up: how many met each target, the spread of their figures, the lane
fill each start kept and what its looks while idle did to it, and the rows of docs/performance.md's "The AVX2 EPYC,
pass by pass" that they fill.

Reads the files that ``python -m bench.serve --json-out F`` wrote (the full runs), and with ``--long`` those of
its runs of 64 streams of 20,000 characters (``--streams 64 --chars 20000 --no-soak --no-baseline --no-probes
--short-requests 0 --repeats 3 --json-out F``). A level's start and end come from ``python -m bench.timeline
--streams 64 --chars 2000 --rounds 5 --json-out F`` (``--timeline``) and a bare gRPC call's CPU from ``python -m
bench.calls --calls 64 --bursts 30 --rounds 3 --json > F`` (``--calls``); without them their cells are ``?``.

    python -m bench.serve_summary run*.json --long long*.json --timeline tl*.json --calls calls*.json --label 64th

``--table`` also prints each full run as a row of table 1 ("the latest full runs"), its first cell the run's start
(HH:MM of ``started_utc``, in the files bench.serve writes since the sixty-fourth pass) or else the file's name.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the figures as bench.serve judges them, a ratio rounded down so that 69.9% never reads 70%
from bench.serve_report import batched_x, down, inter_char_budget_us, prompt_x
from bench.server_proc import IDLE_MARK

# what a file that is not the JSON a tool wrote raises as it is read (JSONDecodeError is a ValueError)
NOT_READ = (OSError, ValueError, KeyError, TypeError, IndexError, StopIteration, ZeroDivisionError)
# what each of a pass's files is, as an error names it
RUN, TIMELINE, CALLS = ("a run of bench.serve --json-out", "the JSON of bench.timeline --json-out",
                        "the JSON of bench.calls --json")
COUNTS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
# the targets of bench/serve_report.py, by a part of their names
TARGETS = {"64 streams: served": "70%", "1 stream: TTFC": "TTFC", "1 stream: inter-char": "inter-char",
           "streams for": "soak", "64 streams: batched": "batched", "-char prompt: first char": "prompt"}  # fmt: skip


@dataclass
class Run:
    """What the summary reads of one run's JSON."""

    ratio: float  # the 64-stream level's served / raw engine
    pairs: list[float]  # its every (served, engine) pair's ratio
    then: float  # served / raw engine while every stream streamed
    engine: float  # the raw engine's chars/s at 64 rows
    calls: float  # the served decode calls' µs a row-step over a raw lane's
    met: dict[str, bool]  # by TARGETS' short names
    ttfc: float = math.nan  # 1 stream's TTFC p50 (ms), its floor, the probe's raw prefill call, a null system call (ns)
    floor: float = math.nan
    prefill: float = math.nan
    syscall: float = math.nan
    fills: tuple[int, ...] = ()  # the lane fill a start kept, its first look's, then each later look's while idle


def level(data: dict[str, Any], streams: int) -> dict[str, Any]:
    """A ``bench.serve --json-out`` file's level of ``streams`` streams; ValueError where it has none."""
    lv: dict[str, Any] | None = next((lv for lv in data.get("levels", []) if lv["streams"] == streams), None)
    if lv is None:
        raise ValueError(f"no level of {streams} streams")
    return lv


def started(data: dict[str, Any], name: str = "?") -> str:
    """A run's start, HH:MM of its ``started_utc`` (bench.serve writes it since the sixty-fourth pass), or ``name``."""
    return str(data["started_utc"][11:16]) if "started_utc" in data else name


def read_run(data: dict[str, Any]) -> Run:
    """One ``bench.serve --json-out`` file's figures; ValueError where it has no level of 64 streams."""
    lv = level(data, 64)
    engine = lv["engine"]["chars_per_s"]
    run = Run(lv["ratio"], list(lv["ratios"]), lv["served"]["all_streaming_chars_per_s"] / engine, engine,
              lv["call_us_per_char"] / lv["raw_lane_us_per_char"], judged(data))
    if "ttfc16_floor" in data:
        run.ttfc, run.floor = data["ttfc16"]["p50"], data["ttfc16_floor"]["p50"]
        run.prefill, run.syscall = data["ttfc16_prefill"]["p50"], data.get("syscall_ns") or math.nan
    lanes = data.get("lanes", "")  # (bench/server_proc.py's lane_plan())
    start = re.search(r"lane fill (\d+) \(first look: (\d+)\)", lanes)
    if start:
        run.fills = (int(start[1]), int(start[2]), *map(int, re.findall(IDLE_MARK + r"lane fill (\d+)", lanes)))
    return run


def judged(data: dict[str, Any]) -> dict[str, bool]:
    """Whether the run met each target it judged, by TARGETS' short names."""
    return {short: bool(t["met"]) for t in data.get("targets", []) if t["met"] is not None
            for key, short in TARGETS.items() if key in t["target"]}  # fmt: skip


def percents(runs: Sequence[Run]) -> str:
    """Each run's 64-stream ratio, as bench.serve prints it."""
    return ", ".join(f"{down(r.ratio * 100, 0):.0f}%" for r in runs)


def span(xs: Sequence[float], fmt: str, unit: str = "") -> str:
    """``lo-hi`` of ``xs``, each formatted with the format string ``fmt``, then ``unit``."""
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def spread(xs: Sequence[float], fmt: str, unit: str) -> str:
    """The span of the values within 1.15x of the median, and those above it apart: a slow moment's, as the null
    system call's 254-294 ns against 201-224 in the AVX2 EPYC's other runs."""
    mid = statistics.median(xs)
    usual, slow = [x for x in xs if x <= 1.15 * mid], [x for x in xs if x > 1.15 * mid]
    if not slow:
        return span(usual, fmt, unit)
    times = "once" if len(slow) == 1 else f"in {COUNTS.get(len(slow), str(len(slow)))}"
    return f"{span(usual, fmt, unit)} ({span(slow, fmt, '')} {times})"


def correlation(xs: Sequence[float], ys: Sequence[float]) -> str:
    """Pearson's correlation to two places, or ``-`` under three pairs or with a constant series."""
    try:
        return f"{statistics.correlation(xs, ys):.2f}" if len(xs) >= 3 else "-"
    except statistics.StatisticsError:
        return "-"


@dataclass
class Cells:
    """The cells of a pass's two rows, and the lines that say more."""

    throughput: list[str]  # of the first row (64 streams), those its runs fill, in order
    first_char: list[str]  # of the second (the first character), the same
    lines: list[str]


def _full(full: Sequence[Run]) -> Cells:
    n, met70 = len(full), sum(r.met.get("70%", False) for r in full)
    then, engine = span([r.then * 100 for r in full], "{:.0f}", "%"), span([r.engine / 1e3 for r in full], "{:.0f}k")
    lines = [f"64 streams >= 70%: {met70} of {n} ({percents(full)}); the goal 85% "
             f"in {sum(r.ratio >= 0.85 for r in full)}; while every stream streamed {then}; the raw engine at 64 "
             f"rows {engine} chars/s; the served calls {span([r.calls for r in full], '{:.2f}', 'x')} a raw "
             f"lane's time a row-step",
             "met: " + ", ".join(f"{name} {sum(r.met.get(name, False) for r in full)} of {n}"
                                 for name in TARGETS.values())]  # fmt: skip
    return Cells([f"{met70} of {n}", span([down(r.ratio * 100, 0) for r in full], "{:.0f}", "%"), then, engine],
                 [f"{sum(r.met.get('TTFC', False) for r in full)} of {n}"], lines)


def _first_char(probed: Sequence[Run]) -> Cells:
    if not probed:
        return Cells([], ["-"] * 5, [])
    floor = [r.floor for r in probed]
    timed = [r for r in probed if not math.isnan(r.syscall)]  # (runs before the fifty-seventh pass did not time it)
    cells = [span([r.ttfc for r in probed], "{:.2f}", " ms"), span(floor, "{:.2f}", " ms"),
             span([r.ttfc - r.floor for r in probed], "{:.2f}", " ms"),
             correlation(floor, [r.prefill for r in probed]),
             spread([r.syscall for r in timed], "{:.0f}", " ns") if timed else "-"]
    line = (f"TTFC p50: {', '.join(f'{r.ttfc:.2f}' for r in probed)} ms; floors {cells[1]}, charlm adds {cells[2]}; "
            f"the floor's correlation with the raw prefill call {cells[3]}, with the null system call "
            f"{correlation([r.floor for r in timed], [r.syscall for r in timed])}; the null system call {cells[4]}")
    return Cells([], cells, [line])


def _long(long: Sequence[Run]) -> Cells:
    if not long:
        return Cells(["-", "-"], [], [])
    pairs = span([p * 100 for r in long for p in r.pairs], "{:.0f}", "%")
    cells = [f"{percents(long)} ({pairs})", span([r.calls for r in long], "{:.2f}", "x")]
    return Cells(cells, [], [f"64 streams x 20,000: {cells[0]}, the served calls {cells[1]} a raw lane's time"])


def lane_plan_line(full: Sequence[Run]) -> list[str]:
    """The lane fill each start kept (its first look's), and what the looks while idle did to those above 2."""
    planned = [r.fills for r in full if r.fills]
    if not planned:
        return []
    served = [(f[2:] or f[:1])[-1] for f in planned]  # the last look's while idle, or else the start's
    looked = [f"{f[0]} {'kept' if f[-1] == f[0] else f'to {f[-1]}'} ({' '.join(map(str, f[2:]))})"
              for f in planned if len(f) > 2]  # fmt: skip
    return [f"lane fill kept at start (first look): {', '.join(f'{f[0]} ({f[1]})' for f in planned)}; above 2 in "
            f"{sum(f[0] > 2 for f in planned)} of {len(planned)}; while idle: {', '.join(looked) or 'no look'}; "
            f"served above 2 in {sum(x > 2 for x in served)}"]


def timeline_cell(files: Sequence[dict[str, Any]]) -> str:
    """A level's start / end in ms, and their share of it, over ``bench.timeline --json-out`` files."""
    if not files:
        return "?"
    start, end = [f["phases"]["start"]["ms"] for f in files], [f["phases"]["end"]["ms"] for f in files]
    share = [(f["phases"]["start"]["ms"] + f["phases"]["end"]["ms"]) / sum(p["ms"] for p in f["phases"].values())
             for f in files]  # fmt: skip
    return (f"{span(start, '{:.0f}')} / {span(end, '{:.0f}')} ms "
            f"({span([s * 100 for s in share], '{:.0f}', '%')})")


def calls_cell(files: Sequence[list[list[dict[str, Any]]]]) -> str:
    """The bare grpc.aio server's CPU a call, the median of each ``bench.calls --json`` file's rounds."""
    if not files:
        return "?"
    bare = [statistics.median(r["server_us"] for rnd in f for r in rnd if r["kind"] == "bare") for f in files]
    return ", ".join(f"{x:.0f}" for x in bare) + " µs"


def summary(full: Sequence[Run], long: Sequence[Run], label: str, timeline: str = "?", calls: str = "?") -> str:
    """The counts and spreads of ``full`` and ``long``, then the two table rows they fill, with the cells of
    bench.timeline and bench.calls as given."""
    lines = [f"{len(full)} full runs, {len(long)} of 64 streams x 20,000 characters"]
    probed = [r for r in full if not math.isnan(r.ttfc)]
    lg, fc = _long(long), _first_char(probed)
    if not full:
        return "\n".join(lines + lg.lines)
    f = _full(full)
    row1 = [label, *f.throughput[:3], timeline, *lg.throughput, f.throughput[3]]
    row2 = [label, *f.first_char, *fc.first_char, calls]
    lines += [*f.lines, *fc.lines, *lane_plan_line(full), *lg.lines, 'rows of "The AVX2 EPYC, pass by pass":']
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in (row1, row2)])


def table_row(data: dict[str, Any], when: str) -> str:
    """One full run as a row of docs/performance.md's table 1, a figure that misses its target in bold."""
    lv64, one = level(data, 64), level(data, 1)
    met = judged(data)
    wall, served, engine = lv64["served"]["wall_s"], lv64["served"]["chars_per_s"], lv64["engine"]["chars_per_s"]
    budget = inter_char_budget_us(data["step1"]["step_us"], data["message_us"])
    loop = math.nan if lv64["batched"] else data["baselines"][0]["chars_per_s"]  # (the one loop: runs without pairs)
    batched = batched_x(lv64["batched"], served, loop)
    inter_char_us = one["served"]["inter_char_ms"]["p50"] * 1e3
    cells = {"70%": f"{down(lv64['ratio'] * 100, 0):.0f}%", "TTFC": f"{data['ttfc16']['p50']:.2f} ms",
             "inter-char": f"{inter_char_us:.0f} vs {budget:.0f} µs",
             "batched": f"{down(batched, 1):.1f}x",
             "prompt": f"{prompt_x(data['long_ttfc']['p50'], data['prefill']['one_call_ms']):.2f}x",
             "soak": f"{data['soak']['settled_growth'] * 100:+.1f}%"}  # fmt: skip
    cells = {k: v if met.get(k, True) else f"**{v}**" for k, v in cells.items()}
    then = lv64["served"]["all_streaming_chars_per_s"] / engine
    return " | ".join(["", when, f"{cells['70%']} ({served / 1e3:.1f}k of {engine / 1e3:.1f}k)", f"{then:.0%}",
                       f"{lv64['call_us_per_char']:.1f} / {lv64['raw_lane_us_per_char']:.1f}",
                       f"{lv64['loop_cpu_s'] / wall:.2f}, {lv64['client_cpu_s'] / wall:.2f}",
                       f"{lv64['host_idle_s'] / wall:.2f}, {lv64['host_stolen_s'] / wall:.2f} "
                       f"({lv64['raw_stolen_s'] / lv64['raw_s']:.2f})",
                       f"{cells['TTFC']} ({data['ttfc16_floor']['p50']:.2f})", cells["inter-char"], cells["batched"],
                       cells["prompt"], cells["soak"], ""]).strip()  # fmt: skip


def pass_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a tool that reads a pass's files: its full runs, and its long runs, timelines and calls."""
    head, rest = doc.split("\n\n", 1)
    p = argparse.ArgumentParser(prog=prog, description=head, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="JSON files of full runs (python -m bench.serve --json-out F)")
    p.add_argument("--long", nargs="*", type=Path, default=[], help="JSON files of runs of 64 streams x 20,000 chars")
    p.add_argument("--timeline", nargs="*", type=Path, default=[], help="JSON files of bench.timeline --json-out")
    p.add_argument("--calls", nargs="*", type=Path, default=[], help="JSON files of bench.calls --json")
    return p


def read_files(p: argparse.ArgumentParser, files: Sequence[Path], what: str,
               check: Callable[[Any], object]) -> list[Any]:
    """Each file's JSON, put through ``check`` alone, so that one that is not ``what`` is refused by its name."""
    read = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            check(data)
        except NOT_READ as e:
            p.error(f"{f}: not {what}: {e!r}")
        read.append(data)
    return read


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = pass_parser("python -m bench.serve_summary", __doc__)
    p.add_argument("--label", default="this pass", help="the rows' first cell, e.g. 64th")
    p.add_argument("--table", action="store_true", help="also each full run as a row of performance.md's table 1")
    a = p.parse_args(argv)
    full = read_files(p, a.runs, RUN, lambda d: (read_run(d), table_row(d, "") if a.table else ""))
    long = read_files(p, a.long, RUN, read_run)
    timeline = timeline_cell(read_files(p, a.timeline, TIMELINE, lambda t: timeline_cell([t])))
    calls = calls_cell(read_files(p, a.calls, CALLS, lambda c: calls_cell([c])))
    rows = [table_row(d, started(d, f.stem)) for d, f in zip(full, a.runs, strict=True)] if a.table else []
    print("\n".join([*rows, summary([read_run(d) for d in full], [read_run(d) for d in long], a.label, timeline,
                                     calls)]))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
