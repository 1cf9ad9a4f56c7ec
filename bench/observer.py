"""What the metrics cost a lane a decode call: K samples one at a time against one update of K.

A decode call of K steps (``--decode-steps``, 8 by default) reports K steps of one batch size and one step time.
The server's Prometheus metrics took them as K ``observe`` calls of each of two prometheus_client histograms,
a lock apiece, until ``service.metrics.ModelHistogram`` took them in one update of K. This times a decode
call's metrics both ways, in alternated blocks on ``--threads`` threads at once (the lanes' step threads share
the histograms): ``Metrics.step`` and ``Metrics.chars`` as the lanes call them, against prometheus_client's
own histograms of the same buckets fed as before.

    python -m bench.observer --steps 8 --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from service.metrics import BATCH_BUCKETS, STEP_BUCKETS, Metrics

MODEL = "shakespeare:1"
Way = tuple[Callable[[], None], CollectorRegistry]  # a decode call's metrics, and the registry they go to


def calls_before(steps: int) -> Way:
    """A decode call's metrics as they were: ``steps`` observes of each prometheus_client histogram."""
    r = CollectorRegistry()
    batch = Histogram("charlm_batch_size", "", ["model"], buckets=BATCH_BUCKETS, registry=r).labels(MODEL)
    step = Histogram("charlm_step_seconds", "", ["model"], buckets=STEP_BUCKETS, registry=r).labels(MODEL)
    chars = Counter("charlm_chars_generated", "", ["model"], registry=r).labels(MODEL)

    def call() -> None:
        for _ in range(steps):
            batch.observe(32)
            step.observe(1.9e-4)
        chars.inc(32 * steps)
    return call, r


def calls_now(steps: int) -> Way:
    """A decode call's metrics now: one ``Metrics.step`` of ``steps`` steps."""
    m = Metrics()

    def call() -> None:
        m.step(MODEL, 32, 1.9e-4, steps)
        m.chars(MODEL, 32 * steps)
    return call, m.registry


def timed(call: Callable[[], None], threads: int, calls: int) -> float:
    """Microseconds a call, each of ``threads`` threads making ``calls`` calls at once (wall time over all)."""
    def run() -> None:
        for _ in range(calls):
            call()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - start) / (calls * threads) * 1e6


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="decode steps a call (default 8, the server's)")
    p.add_argument("--threads", default="1,2", help="threads updating the metrics at once, comma-separated")
    p.add_argument("--calls", type=int, default=20000, help="calls a thread makes in a block")
    p.add_argument("--blocks", type=int, default=5, help="blocks of each way, alternated")
    a = p.parse_args(argv)
    try:
        threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        p.error(f"--threads: a comma-separated list of counts, got {a.threads!r}")
    if a.steps < 1 or a.calls < 1 or a.blocks < 1 or min(threads) < 1:
        p.error("--steps, --calls, --blocks and every --threads count must be >= 1")
    print(f"a decode call's metrics, {a.steps} steps; µs a call (median of {a.blocks} alternated blocks)")
    print("threads  one observe a step (before)  one update a call (now)  now / before")
    for n in threads:
        (before, _), (now, _) = calls_before(a.steps), calls_now(a.steps)
        runs: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(a.blocks):
            runs["before"].append(timed(before, n, a.calls))
            runs["now"].append(timed(now, n, a.calls))
        b, w = statistics.median(runs["before"]), statistics.median(runs["now"])
        print(f"{n:7d} {b:28.2f} {w:24.2f} {w / b:13.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
