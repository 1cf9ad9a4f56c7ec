"""What a decode batch's calls leave in the heap, with and without warming its largest calls, in fresh processes.

A call's scratch comes from the heap of the thread that runs it and stays there when freed, so a server's RSS
grows whenever a call larger than any before it first runs: in a soak, sometimes late. This runs, in one fresh
process per side (alternated), what a lane does at start (``prepare(True)``), then ``warm_largest`` or not,
then every call a lane can make (each row count's every step choice, alone and on all threads) three times:
largest rows first, in a shuffled order, and largest first again. Each line is the RSS growth of a phase (MiB);
what the phases after start still grow by is what a served lane would grow by when those calls first come.

    python -m bench.heap --capacity 128 --pairs 3
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.engine import parser
from bench.server_proc import rss_kib
from service.artifact import load_artifact
from service.batch import DecodeBatch
from service.runtime import Runtime, RuntimeConfig

PHASES = ("prepare", "warm", "descending", "shuffled", "again")


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    return rss_kib() / 1024


def every_call(batch: DecodeBatch, order: list[int]) -> None:
    """Make each call of each row count in ``order`` once: every step choice (and single steps), both modes."""
    for rows in order:
        calls = batch._calls_for(rows, *batch._steps_of(rows)[1])
        for modes in calls.values():
            for mode in modes:
                mode[0]()


def warm_largest(batch: DecodeBatch) -> None:
    """What was measured as a lane's warming and not adopted: each step count's call of the most rows that run
    it, once alone and once on all threads, before any other call (docs/performance.md)."""
    seen: set[int] = set()
    for rows in batch.row_counts():
        new = [k for k in batch._steps_of(rows)[1] if k not in seen]
        calls = batch._calls_for(rows, *new) if new else {}
        for k in new:
            for mode in calls[k]:
                mode[0]()
        seen.update(new)


def measure(model: Path, capacity: int, warm: bool, threads: int) -> dict[str, float]:
    """One side, in this process: the RSS growth (MiB) of each phase, the RSS after start and warm's seconds."""
    batch = DecodeBatch(Runtime(load_artifact(model), RuntimeConfig(intra_op_threads=threads)), capacity)
    rows = batch.row_counts()
    out: dict[str, float] = {}
    before = rss_mib()
    start = time.perf_counter()
    batch.prepare(True)
    out["prepare_s"], out["prepare"] = time.perf_counter() - start, rss_mib() - before
    before, start = rss_mib(), time.perf_counter()
    if warm:
        warm_largest(batch)
    out["warm_s"], out["warm"] = time.perf_counter() - start, rss_mib() - before
    out["started_mib"] = rss_mib()
    shuffled = random.Random(0).sample(rows, len(rows))
    for phase, order in (("descending", rows), ("shuffled", shuffled), ("again", rows)):
        before = rss_mib()
        every_call(batch, order)
        out[phase] = rss_mib() - before
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--capacity", type=int, default=128, help="the batch's rows (a lane's, as the server's plan)")
    p.add_argument("--pairs", type=int, default=3, help="(warmed, not warmed) pairs of fresh processes")
    p.add_argument("--side", choices=("warm", "none"), help="(one side, in this process: what the pairs run)")
    a = p.parse_args(argv)
    if a.side:
        print(json.dumps(measure(a.model, a.capacity, a.side == "warm", a.threads)))
        return 0
    print(f"RSS growth (MiB) of each phase, a batch of {a.capacity} rows of {a.model}; "
          f"{a.threads or 'all'} threads; fresh processes alternated")
    print(f"{'side':<6}" + "".join(f"{ph:>12}" for ph in PHASES) + f"{'started MiB':>13}{'warm s':>8}")
    for _ in range(a.pairs):
        for side in ("warm", "none"):
            cmd = [sys.executable, "-m", "bench.heap", "--side", side, "--model", str(a.model),
                   "--capacity", str(a.capacity), "--threads", str(a.threads)]  # fmt: skip
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"{side:<6}" + "".join(f"{r[ph]:>+12.1f}" for ph in PHASES)
                  + f"{r['started_mib']:>13.1f}{r['warm_s']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
