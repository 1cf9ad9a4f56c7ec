"""The figures under docs/performance.md's table 1, from the same files as bench.serve_summary: each level's spread,
where the 64-stream level's time went and the runs under 70%, the first character's floors and what charlm added to
them, the baselines, the short requests, the soak, and with ``--long``, ``--timeline`` and ``--calls`` what those
runs measured.

A line for each of the table's notes, in their order, so that no figure of them comes from a scratch script:

    python -m bench.serve_details run*.json --long long*.json --timeline tl*.json --calls calls.json

The full runs are ``python -m bench.serve --json-out F``'s files, the long ones its ``--streams 64 --chars 20000
--no-soak --no-baseline --no-probes --short-requests 0 --repeats 3 --json-out F``, the timelines ``python -m
bench.timeline --streams 64 --chars 2000 --rounds 5 --json-out F`` and the calls ``python -m bench.calls --calls 64
--bursts 30 --rounds 3 --json > F``. A ratio is rounded as bench.serve's table prints it, but a long run's own,
which is rounded down as bench.serve judges it and bench.serve_summary prints it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.serve_report import down, prompt_x
from bench.serve_summary import (
    CALLS,
    RUN,
    TIMELINE,
    Run,
    correlation,
    level,
    pass_parser,
    read_files,
    read_run,
    span,
    spread,
    started,
)

RunFile = dict[str, Any]  # one bench.serve --json-out file, as read; Run: what bench.serve_summary reads of it
MIB = 1024  # the soak's RSS is in KiB


def pct(x: float) -> float:
    """A ratio as a percentage, rounded as bench.serve's table prints it."""
    return float(f"{x:.0%}".rstrip("%"))


def per_wall(lv: dict[str, Any], key: str) -> float:
    """A level's seconds of ``key`` a second of its load."""
    return float(lv[key]) / lv["served"]["wall_s"]


def side_cores(lv: dict[str, Any]) -> float:
    """The cores a level's event loop and load generator held beside the lanes."""
    return per_wall(lv, "loop_cpu_s") + per_wall(lv, "client_cpu_s")


def streaming(lv: dict[str, Any]) -> float:
    """The share of a level's load in which every stream streamed."""
    return float(lv["served"]["all_streaming_s"]) / lv["served"]["wall_s"]


def levels_line(runs: Sequence[RunFile]) -> str:
    """Each level but 64 streams: its served share of the raw engine and its chars/s."""
    parts = []
    for streams in (256, 8, 1):
        lvs = [level(r, streams) for r in runs]
        ratio, rate = span([pct(lv["ratio"]) for lv in lvs], "{:.0f}", "%"), span(
            [lv["served"]["chars_per_s"] / 1e3 for lv in lvs], "{:.1f}k")
        parts.append(f"{streams} stream{'s' if streams > 1 else ''} {ratio} ({rate} chars/s)")
    return "levels: " + "; ".join(parts)


def pairs_line(runs: Sequence[RunFile]) -> str:
    """The 64-stream level's every (served, engine) pair, run by run."""
    return "64-stream pairs: " + "; ".join(", ".join(f"{pct(x):.0f}%" for x in level(r, 64)["ratios"]) for r in runs)


def lanes_line(runs: Sequence[RunFile], figures: Sequence[Run]) -> str:
    """How busy the lanes were at 64 streams, the served calls' time against a raw lane's, by whether 70% was met."""
    lvs = [level(r, 64) for r in runs]
    hit = [f.calls for f in figures if f.met.get("70%", False)]
    miss = [f.calls for f in figures if not f.met.get("70%", False)]
    return (f"64 streams: lanes busy {span([lv['lanes_busy'] for lv in lvs], '{:.2f}')} of 2; the served calls "
            f"{span(hit, '{:.2f}', 'x') if hit else '-'} a raw lane's time where 70% was met, "
            f"{', '.join(f'{c:.2f}x' for c in miss) or '-'} where not; the other threads waited "
            f"{span([per_wall(lv, 'other_wait_s') for lv in lvs], '{:.2f}')} s a second for a core; every stream "
            f"streamed {span([pct(streaming(lv)) for lv in lvs], '{:.0f}', '%')} of the level; the loop and the load "
            f"generator {span([side_cores(lv) for lv in lvs], '{:.2f}')} "
            "of the cores")


def under_line(runs: Sequence[RunFile], figures: Sequence[Run]) -> str:
    """The 64-stream levels under 70%, with what else each showed, and those that read 70% by less than a point."""
    under, edge = [], []
    for r, f in zip(runs, figures, strict=True):
        lv = level(r, 64)
        if not f.met.get("70%", False):
            under.append(f"{started(r)} {down(f.ratio * 100, 0):.0f}% (every stream streaming "
                         f"{pct(streaming(lv)):.0f}%, {per_wall(lv, 'host_stolen_s'):.2f} of the cores stolen, the raw "
                         f"engine {f.engine / 1e3:.1f}k chars/s)")
        elif f.ratio < 0.71:
            edge.append(f"{started(r)} {f.ratio:.2%}")
    return f"under 70%: {'; '.join(under) or 'none'}; read 70%: {', '.join(edge) or 'none'}"


def first_char_line(figures: Sequence[Run]) -> str:
    """The first character's floors, and what charlm added to them in the runs that met 2 ms and those that missed."""
    probed = [f for f in figures if not math.isnan(f.floor)]
    if not probed:
        return "TTFC: no probes"
    floor, prefill = [f.floor for f in probed], [f.prefill for f in probed]
    timed = [f for f in probed if not math.isnan(f.syscall)]  # (runs before the fifty-seventh pass did not time it)
    syscall = [f.syscall for f in timed]
    parts = []
    for name, want in (("met", True), ("missed", False)):
        some = [f for f in probed if f.met.get("TTFC", False) == want]
        if some:
            parts.append(f"{name} in {len(some)}: floors {span([f.floor for f in some], '{:.2f}')}, charlm adding "
                         f"{span([f.ttfc - f.floor for f in some], '{:.2f}', ' ms')}")
    return (f"TTFC: floors {span(floor, '{:.2f}', ' ms')} (median {statistics.median(floor):.2f}); the raw prefill "
            f"call {span(prefill, '{:.2f}', ' ms')}; the floor's correlation with it {correlation(floor, prefill)}, "
            f"with the null system call {correlation([f.floor for f in timed], syscall)} "
            f"({spread(syscall, '{:.0f}', ' ns') if syscall else '-'}); "
            + "; ".join(parts))


def adds_line(runs: Sequence[RunFile], figures: Sequence[Run]) -> str:
    """Where charlm added most and least to TTFC's floor, and how much longer the server's own prefill took there."""
    adds = sorted(((f, r) for r, f in zip(runs, figures, strict=True) if not math.isnan(f.floor)
                   and "ttfc16_engine" in r), key=lambda x: x[0].ttfc - x[0].floor)  # fmt: skip
    if not adds:
        return "TTFC, what charlm added: no probes that timed the server's own prefill"

    def one(f: Run, r: RunFile) -> str:
        own = r["ttfc16_engine"]["p50"]
        return (f"{f.ttfc - f.floor:.2f} ms ({started(r)}: the server's own prefill {own:.2f} against the raw call's "
                f"{f.prefill:.2f} ms, {own - f.prefill:+.2f})")

    return f"TTFC, what charlm added: most {' and '.join(one(*x) for x in adds[:-3:-1])}; least {one(*adds[0])}"


def baselines_line(runs: Sequence[RunFile]) -> str:
    """The no-batching baselines and the 2,000-character prompt against one raw prefill call."""
    def rate(engine: str) -> str:
        return span([next(b["chars_per_s"] for b in r["baselines"] if b["engine"].startswith(engine)) / 1e3
                     for r in runs], "{:.1f}k")  # fmt: skip

    top = max(runs, key=lambda r: prompt_x(r["long_ttfc"]["p50"], r["prefill"]["one_call_ms"]))
    first, raw = top["long_ttfc"]["p50"], top["prefill"]["one_call_ms"]
    return (f"baselines: the onnxruntime loop {rate('onnxruntime')} chars/s (a raw step of one row "
            f"{span([r['step1']['step_us'] for r in runs], '{:.0f}', ' µs')}), pytorch-eager {rate('pytorch')}, "
            f"charlm --max-batch 1 {rate('charlm')}; the 2,000-character prompt "
            f"{span([r['long_ttfc_engine']['p50'] for r in runs], '{:.1f}', ' ms')} in the engine against one raw "
            f"prefill call's {span([r['prefill']['one_call_ms'] for r in runs], '{:.1f}', ' ms')}; the highest, "
            f"{prompt_x(first, raw):.2f}x ({started(top)}): its first character at {first:.1f} ms, "
            f"{top['long_ttfc_engine']['p50']:.1f} in the engine, beside a raw call of {raw:.1f}")


def short_and_soak_lines(runs: Sequence[RunFile]) -> list[str]:
    """The short requests' rate and server CPU, and the soak's RSS."""
    short = [r for r in runs if r.get("short")]
    soak = [r["soak"] for r in runs if r.get("soak")]
    lines = []
    if short:
        ms = [r["short_server_cpu_s"] / r["short"]["completed"] * 1e3 for r in short]
        lines.append(f"short requests: {span([r['short']['requests_per_s'] for r in short], '{:,.0f}')} "
                     f"requests/s at {span(ms, '{:.2f}', ' ms')} of server CPU each")
    if soak:
        def mib(key: str) -> str:
            return span([s[key] / MIB for s in soak], "{:.1f}")

        rounds = [kib / MIB for s in soak for kib in s["rss_rounds_kib"]]
        growth = [s["settled_growth"] * 100 for s in soak]
        lines.append(f"soak: settled {mib('rss_settled_kib')} MiB against the warm-ups' highest "
                     f"{mib('rss_warm_high_kib')}; {span([s['rounds'] for s in soak], '{}')} rounds "
                     f"({span([s['warmup_rounds'] for s in soak], '{}')} of warm-up) in "
                     f"{span([s['wall_s'] for s in soak], '{:.0f}', ' s')}; rounds {span(rounds, '{:.0f}')} MiB, "
                     f"peaks {mib('rss_max_kib')}; growth {span(growth, '{:+.1f}%').replace('%-', '% to ')}")
    return lines


def machine_line(runs: Sequence[RunFile]) -> str:
    """The raw engine at 64 rows, and the load average at the runs' starts."""
    return (f"the raw engine at 64 rows {span([level(r, 64)['engine']['chars_per_s'] / 1e3 for r in runs], '{:.0f}k')}"
            f" chars/s; load average at start {span([r['load_avg'][0] for r in runs], '{:.1f}')}")


def long_line(run: RunFile) -> str:
    """One run of 64 streams x 20,000 characters."""
    lv = level(run, 64)
    return (f"long: {down(lv['ratio'] * 100, 0):.0f}% ({lv['served']['chars_per_s'] / 1e3:.1f}k chars/s; pairs "
            f"{span([pct(x) for x in lv['ratios']], '{:.0f}', '%')}), every stream streaming "
            f"{pct(streaming(lv)):.0f}%, the served calls {read_run(run).calls:.2f}x a raw lane's time, the loop "
            f"and the load generator {side_cores(lv):.2f} of the cores, the raw engine "
            f"{lv['engine']['chars_per_s'] / 1e3:.0f}k; lanes: {run.get('lanes') or '-'}")


def timeline_line(data: dict[str, Any]) -> str:
    """One bench.timeline file: its phases' medians, and the cores of its groups where every stream streamed."""
    ph = data["phases"]
    ms = sum(p["ms"] for p in ph.values())
    mid = ph["all streaming"]
    return (f"timeline ({span([x / 1e3 for x in data['chars_per_s']], '{:.0f}k')} chars/s): start "
            f"{ph['start']['ms']:.0f} ms ({ph['start']['host'][0]:.2f} of the cores idle), every stream streaming "
            f"{mid['ms']:,.0f} ms (the step threads {mid['server'][0]:.2f} cores, the loop {mid['loop'][0]:.2f}, the "
            f"load generator {mid['client'][0]:.2f}), end {ph['end']['ms']:.0f} ms: "
            f"{(ph['start']['ms'] + ph['end']['ms']) / ms:.0%} of the level")


def calls_lines(rounds: list[list[dict[str, Any]]]) -> list[str]:
    """One bench.calls --json file: each server's medians over the rounds."""
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for rnd in rounds for r in rnd if r["kind"] == kind)

    return [f"calls: {k} {med(k, 'server_us'):.0f} µs of CPU a call ({med(k, 'kernel_us'):.0f} in the kernel), "
            f"first messages p50 {med(k, 'first_p50_ms'):.1f} ms, p99 {med(k, 'first_p99_ms'):.1f}"
            for k in (r["kind"] for r in rounds[0])]


def details(runs: Sequence[RunFile], long: Sequence[RunFile] = (), timelines: Sequence[dict[str, Any]] = (),
            calls: Sequence[list[list[dict[str, Any]]]] = ()) -> list[str]:  # fmt: skip
    """Every line, in the order of table 1's notes."""
    figures = [read_run(r) for r in runs]  # what bench.serve_summary reads of each run
    lines = [levels_line(runs), pairs_line(runs), lanes_line(runs, figures), under_line(runs, figures),
             first_char_line(figures), adds_line(runs, figures), baselines_line(runs), *short_and_soak_lines(runs),
             machine_line(runs)]
    lines += [timeline_line(t) for t in timelines] + [long_line(r) for r in long]
    return lines + [x for c in calls for x in calls_lines(c)]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = pass_parser("python -m bench.serve_details", __doc__)
    a = p.parse_args(argv)
    # each file is put through its own lines alone first, so that one that is not what it should be is named
    runs = read_files(p, a.runs, RUN, lambda r: details([r]))
    long = read_files(p, a.long, RUN, long_line)
    timelines = read_files(p, a.timeline, TIMELINE, timeline_line)
    calls = read_files(p, a.calls, CALLS, calls_lines)
    lines = details(runs, long, timelines, calls)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
