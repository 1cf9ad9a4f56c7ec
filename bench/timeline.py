"""Where a load's cores go over time: the server's threads and the load generator, running and waiting for a core.

bench.serve's "cores" and "waiting" columns give a level's totals. This splits them over the level's three
phases: its **start** (from the first call to the last stream's first chunk: the calls made, the prompts
consumed), the window in which **every stream streams**, and its **end** (from the first stream's last chunk).
For each: the cores (CPU seconds per second) that the server's event loop (its main thread), its other threads
(the step threads, gRPC's poller) and this process (the load generator, ``client.loadgen.run_load``) ran, and
how long each waited, ready, for a core. From ``/proc/PID/task/TID/schedstat`` (ns running, ns waiting), read
every ``--bin-ms`` by a thread of this process, whose own reads count with the load generator's;
``--bins`` prints the last round bin by bin. The "host" column is the machine's: its cores idle, and stolen
by the VM's host (``/proc/stat``). Threads waiting while cores sit idle wait for each other (the GIL, a
hand-off), not for a core; cores stolen are the host's, not the load's.

    python -m bench.timeline --streams 64 --chars 2000 --rounds 5 [--bins] [--server-arg=--FLAG=VALUE]

``--json-out F`` also writes the medians as JSON (each phase's ms and each group's cores), which
``python -m bench.serve_summary --timeline F`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from bench.engine import parser
from bench.serve_runs import PROMPT16, fit_prompt
from bench.server_proc import ServerProcess, ThreadStats, host_seconds
from client.loadgen import LoadReport, run_load
from service.artifact import ArtifactError, load_artifact

GROUPS = ("loop", "server", "client", "host")  # the server's main thread, its other threads, this process, the machine
Totals = dict[str, tuple[int, int]]  # group -> (ns running, ns waiting for a core); the host's: (ns idle, ns stolen)


def totals(server: ThreadStats, client: ThreadStats) -> Totals:
    """Each group's totals now (a process whose threads cannot be read counts 0)."""
    none = ((0, 0), (0, 0))
    (loop, others), (main, rest) = server.read() or none, client.read() or none
    idle, stolen = host_seconds()
    return {
        "loop": loop,
        "server": others,
        "client": (main[0] + rest[0], main[1] + rest[1]),
        "host": (round(idle * 1e9), round(stolen * 1e9)),
    }


class Sampler(threading.Thread):
    """Reads the groups' totals every ``bin_s`` until stopped: [(perf_counter, totals)]."""

    def __init__(self, server_pid: int, bin_s: float) -> None:
        super().__init__(daemon=True)
        self.stats, self.bin_s = (ThreadStats(server_pid), ThreadStats(os.getpid())), bin_s
        self.samples: list[tuple[float, Totals]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.samples.append((time.perf_counter(), totals(*self.stats)))
                self.halt.wait(self.bin_s)
        finally:
            for stats in self.stats:
                stats.close()


def shares(samples: list[tuple[float, Totals]], t0: float, t1: float) -> dict[str, tuple[float, float]]:
    """Per group, (cores running, cores waiting) between the samples nearest ``t0`` and ``t1``."""
    a = min(samples, key=lambda s: abs(s[0] - t0))
    b = min(samples, key=lambda s: abs(s[0] - t1))
    dt = (b[0] - a[0]) * 1e9
    if dt <= 0:
        return {g: (float("nan"), float("nan")) for g in GROUPS}
    return {g: ((b[1][g][0] - a[1][g][0]) / dt, (b[1][g][1] - a[1][g][1]) / dt) for g in GROUPS}


def sampled_median(values: Iterable[float]) -> float:
    """The median over the rounds whose window held samples (nan from ``shares``); nan when none did."""
    got = [v for v in values if not math.isnan(v)]
    return statistics.median(got) if got else float("nan")


def phases(r: LoadReport) -> list[tuple[str, float, float]]:
    """The load's start, all-streaming window and end: (name, from, to) in perf_counter seconds."""
    lo = r.started + r.all_streaming_from_s if r.all_streaming_s else r.started
    hi = lo + r.all_streaming_s
    return [("start", r.started, lo), ("all streaming", lo, hi), ("end", hi, r.started + r.wall_s)]


Round = tuple[LoadReport, Sampler]


async def rounds(server: ServerProcess, a: argparse.Namespace, prompt: str, model: str) -> list[Round]:
    """``a.rounds`` loads of ``a.streams`` x ``a.chars``, each sampled by a Sampler of its own."""
    out = []
    await run_load(server.target, a.streams, 200, prompt, model=model, seed=0)
    for i in range(a.rounds):
        sampler = Sampler(server.pid, a.bin_ms / 1e3)
        sampler.start()
        await asyncio.sleep(0.05)
        r = await run_load(server.target, a.streams, a.chars, prompt, model=model,
                           temperature=1.0, seed=i * 1000)  # fmt: skip
        await asyncio.sleep(0.05)
        sampler.halt.set()
        sampler.join()
        out.append((r, sampler))
    return out


T = TypeVar("T")


def served(p: argparse.ArgumentParser, a: argparse.Namespace,
           run: Callable[[ServerProcess, argparse.Namespace, str, str], Coroutine[Any, Any, T]]) -> T:  # fmt: skip
    """Starts ``charlm-serve`` with ``--model`` (and ``--server-arg``) and runs ``run(server, a, prompt, model)``
    against it, the prompt the latency probes' 16 characters."""
    try:
        info = load_artifact(a.model).info
    except ArtifactError as e:
        p.error(str(e))
    model, prompt = f"{info.name}:{info.version}", fit_prompt(PROMPT16, info.vocabulary, len(PROMPT16))
    with ServerProcess(a.model.resolve().parent.parent, ["--default-model", model, *a.server_arg]) as server:
        return asyncio.run(run(server, a, prompt, model))


def medians(results: list[Round]) -> dict[str, dict[str, Any]]:
    """Per phase, over the rounds: its median ms, and each group's median (cores running, cores waiting)."""
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(("start", "all streaming", "end")):
        spans = [phases(r)[k] for r, _ in results]
        got = [shares(s.samples, t0, t1) for (_, t0, t1), (_, s) in zip(spans, results, strict=True)]
        out[name] = {"ms": statistics.median((t1 - t0) * 1e3 for _, t0, t1 in spans),
                     **{g: [sampled_median(x[g][i] for x in got) for i in (0, 1)] for g in GROUPS}}  # fmt: skip
    return out


def report(results: list[Round], by_phase: dict[str, dict[str, Any]], bins: bool) -> list[str]:
    """Per phase, the medians over the rounds (``medians(results)``); and with ``bins``, the last round bin by bin."""
    rates = ", ".join(f"{r.chars_per_s:,.0f}" for r, _ in results)
    lines = [f"{len(results)} rounds of {results[0][0].streams} streams x {results[0][0].chars_per_stream} "
             f"characters: {rates} chars/s; medians over the rounds; cores running / waiting for a core (host: the "
             "machine's cores idle / stolen)", f"{'phase':>14} {'ms':>6} {'loop':>11} {'server':>11} {'client':>11} "
             f"{'host':>11}"]  # fmt: skip
    for name, m in by_phase.items():
        cells = [f"{m[g][0]:.2f}/{m[g][1]:.2f}" for g in GROUPS]
        lines.append(f"{name:>14} {m['ms']:6.0f} " + " ".join(f"{c:>11}" for c in cells))
    if bins:
        r, s = results[-1]
        lines.append(
            f"the last round, bin by bin (ms from its first call; {' / '.join(GROUPS)}: running/waiting, "
            "the host's idle/stolen)"
        )
        for (t0, a), (t1, b) in zip(s.samples, s.samples[1:], strict=False):
            dt = (t1 - t0) * 1e9
            cells = [f"{(b[g][0] - a[g][0]) / dt:4.2f}/{(b[g][1] - a[g][1]) / dt:4.2f}" for g in GROUPS]
            lines.append(f"  {(t0 - r.started) * 1e3:7.0f}  " + "  ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=64, help="concurrent streams of a round")
    p.add_argument("--chars", type=int, default=2000, help="characters each stream generates")
    p.add_argument("--rounds", type=int, default=5, help="loads, one after another")
    p.add_argument("--bin-ms", type=float, default=10.0, help="how often the threads' schedstat is read")
    p.add_argument("--bins", action="store_true", help="print the last round bin by bin")
    p.add_argument("--json-out", type=Path, metavar="F", help="also write the medians to F as JSON")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m service` (repeatable)")  # fmt: skip
    a = p.parse_args(argv)
    if a.streams < 1 or a.chars < 1 or a.rounds < 1 or a.bin_ms <= 0:
        p.error("--streams, --chars, --rounds and --bin-ms must be positive")
    results = served(p, a, rounds)
    by_phase = medians(results)
    print("\n".join(report(results, by_phase, a.bins)))
    if a.json_out is not None:
        data = {"streams": a.streams, "chars": a.chars, "chars_per_s": [r.chars_per_s for r, _ in results],
                "phases": by_phase}
        a.json_out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
