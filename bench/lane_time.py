"""Where a lane's time goes, in process: its decode calls, the Python around each call, and the rest of its loop.

``bench.engine_streams`` gives the in-process engine's chars/s beside the raw engine; this says where the
difference goes in the step threads. It runs ``service.engine.Engine`` as that benchmark does (readers on this
event loop, no gRPC) and times, per step thread, the service's own methods by wrapping them, without changing
what they do: the decode call (``DecodeBatch.steps_call``, or ``step`` for single steps), the characters' text
(``Vocab.texts``), their delivery to the streams (``Decoding._deliver``), the whole of ``Decoding._decode`` (whose
remainder is mostly the rows' uniforms), and the prompt calls (``Scheduler._prefill``). Each share is of the
round's wall time, per lane; "per call" is µs per decode call. A raw lane spends all its time in calls, so
1 - call share is what a lane's own Python costs it. The timers cost ~1 µs a call.

    python -m bench.lane_time --streams 64 --chars 20000 --rounds 3
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.engine import parser
from bench.engine_streams import engine_rate, warm_engine
from service.artifact import load_artifact
from service.batch import DecodeBatch
from service.decoding import Decoding
from service.runtime import Runtime, RuntimeConfig
from service.scheduler import Scheduler
from service.vocab import Vocab

# (owner, method, what it is called here): the decode call's two kinds count as one "call"
TIMED = (
    (DecodeBatch, "steps_call", "call"),
    (DecodeBatch, "step", "call"),
    (Vocab, "texts", "texts"),
    (Decoding, "_deliver", "deliver"),
    (Decoding, "_decode", "decode"),
    (Scheduler, "_prefill", "prompts"),
)
Totals = dict[tuple[int, str], list[float]]  # (thread id, what) -> [seconds, calls]


@contextmanager
def timing(totals: Totals) -> Iterator[None]:
    """Wrap every method of TIMED so that each call adds its seconds to ``totals`` under its thread; unwrap after."""

    def wrap(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:  # (one key per thread: the lanes never add to the same entry)
                entry = totals.setdefault((threading.get_ident(), what), [0.0, 0])
                entry[0] += time.perf_counter() - start
                entry[1] += 1

        return timed

    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in TIMED]
    for owner, name, what in TIMED:
        setattr(owner, name, wrap(owner.__dict__[name], what))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def parts(totals: Totals, tid: int, wall: float) -> dict[str, float]:
    """Seconds of one step thread's ``wall`` in each part; the decode call's Python is ``_decode`` less its call,
    texts and delivery, and the loop's rest is what neither ``_decode`` nor the prompt calls took."""
    s = {what: totals.get((tid, what), [0.0, 0])[0] for _, _, what in TIMED}
    return {"call": s["call"], "uniforms and the rest of _decode": s["decode"] - s["call"] - s["texts"] - s["deliver"],
            "texts": s["texts"], "deliver": s["deliver"], "prompts": s["prompts"],
            "the loop's rest": wall - s["decode"] - s["prompts"]}  # fmt: skip


def lane_lines(totals: Totals, wall: float) -> list[str]:
    """One line per step thread that made decode calls: each part's share of ``wall`` and its µs a call."""
    lines = []
    for tid in sorted({t for t, _ in totals}, key=lambda t: -totals.get((t, "call"), [0.0])[0]):
        calls = int(totals.get((tid, "call"), [0.0, 0])[1])
        if not calls:
            continue
        p = parts(totals, tid, wall)
        shares = ", ".join(f"{k} {v / wall:.1%}" for k, v in p.items())
        per_call = ", ".join(f"{k} {p[k] / calls * 1e6:.1f}" for k in list(p)[:4])
        lines.append(f"  lane: {calls} calls; of the wall time: {shares}; µs a call: {per_call}")
    return lines


async def run(model: Path, streams: int, chars: int, rounds: int, threads: int,
              few_rows_steps: int = RuntimeConfig.few_rows_steps) -> list[str]:  # fmt: skip
    """``rounds`` bursts of ``streams`` generations of ``chars`` characters, each with its lanes' time split."""
    runtime = Runtime(load_artifact(model), RuntimeConfig(intra_op_threads=threads, few_rows_steps=few_rows_steps))
    lines = [f"{runtime.model} in process: {streams} streams x {chars} characters, decode steps in "
             f"{runtime.decode_precision}, {runtime.few_rows_steps} steps a call of up to {runtime.few_rows} "
             f"rows, {runtime.decode_steps} of more"]  # fmt: skip
    async with warm_engine(runtime) as (engine, prompt):
        for _ in range(rounds):
            totals: Totals = {}
            with timing(totals):
                start = time.perf_counter()
                r = await engine_rate(engine, streams, chars, prompt)
                wall = time.perf_counter() - start
            lines.append(f"{r.chars_per_s:,.0f} chars/s in {wall * 1e3:,.0f} ms")
            lines += lane_lines(totals, wall)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=64, help="concurrent streams of a round")
    p.add_argument("--chars", type=int, default=20000, help="characters per stream")
    p.add_argument("--rounds", type=int, default=3, help="bursts, one after another")
    p.add_argument("--few-rows-steps", type=int, default=RuntimeConfig.few_rows_steps,
                   help="decode steps a call of few rows runs, as the server's flag (0 = --decode-steps)")
    a = p.parse_args(argv)
    print("\n".join(asyncio.run(run(a.model, a.streams, a.chars, a.rounds, a.threads, a.few_rows_steps))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
