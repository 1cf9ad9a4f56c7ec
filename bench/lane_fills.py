"""Whether a lane fill serves a few streams faster, in process: one ``service.engine.Engine`` per lane fill
(``--fills``), each on its own runtime and all with the lane plan's other choice (all threads from N rows) as a
start of the server measures it, and every level run by each engine in turn, round after round, the order of the
fills turned by one each round so that the machine's drift meets every fill alike.

A lane fill is what the engine's start picks (service/tuning.py) and its looks while idle lower
(service/idle_looks.py) from raw call timings; this measures what each fill then serves, without gRPC and the load
generator, whose CPU on the same 2 cores moves a served level by more than a fill does. Each round's ratio is of
two levels run a second or two apart; the median and range of every round's are shown.

    python -m bench.lane_fills --fills 2,8 --streams 4,8,16 --chars 2000 --rounds 8
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine import parser
from bench.engine_streams import engine_rate, warm_engine
from service.artifact import load_artifact
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.vocab import Vocab


@dataclass
class FillRuns:
    """Chars/s of every round, by level and lane fill, and the plan the engines served by."""

    model: str
    fills: list[int]
    all_threads_rows: int  # as a start measured it, the same for every fill's engine
    measured_fill: int  # the fill that start picked
    rates: dict[int, dict[int, list[float]]] = field(default_factory=dict)  # streams -> fill -> chars/s a round

    def ratios(self, streams: int, fill: int) -> list[float]:
        """Each round's chars/s of ``fill`` over the first fill's at ``streams`` streams."""
        by = self.rates[streams]
        return [a / b for a, b in zip(by[fill], by[self.fills[0]], strict=True)]

    def table(self) -> list[str]:
        """The report: a line per level, each fill's median chars/s and its rounds' ratios to the first fill."""
        first, others = self.fills[0], self.fills[1:]
        lines = [f"{self.model} in-process engine by lane fill ({len(self.rates[min(self.rates)][first])} rounds; "
                 f"all threads from {self.all_threads_rows} rows and lane fill {self.measured_fill}, as measured)",
                 f"{'streams':>7} " + " ".join(f"{f'fill {f} c/s':>12}" for f in self.fills)
                 + "".join(f"  {f} vs {first}: median (range), faster in" for f in others)]  # fmt: skip
        for n, by in self.rates.items():
            line = f"{n:>7} " + " ".join(f"{statistics.median(by[f]):>12,.0f}" for f in self.fills)
            for f in others:
                r = self.ratios(n, f)
                line += (f"  {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}), "
                         f"{sum(x > 1 for x in r)} of {len(r)}")  # fmt: skip
            lines.append(line)
        return lines


async def measured_plan(runtime: Runtime) -> tuple[int, int]:
    """(all threads from N rows, lane fill) as a server's start on ``runtime`` picks them (its first look and
    later ones; no look while idle)."""
    engine = Engine(runtime, Vocab(runtime.vocabulary), EngineConfig(idle_looks=0), runtime.model)
    await engine.start()
    await engine.close()
    return engine.config.all_threads_rows, engine.config.lane_fill


async def run(model: Path, fills: list[int], levels: list[int], chars: int, rounds: int, threads: int,
              progress: Callable[[str], None] | None = None) -> FillRuns:  # fmt: skip
    """Every level at every fill, ``rounds`` times; the fills of a level run one after another (``progress`` gets a
    line after each round)."""
    artifact = load_artifact(model)

    def runtime() -> Runtime:
        return Runtime(artifact, RuntimeConfig(intra_op_threads=threads))

    probe = runtime()
    rows, fill = await measured_plan(probe)
    out = FillRuns(probe.model, fills, rows, fill, {n: {f: [] for f in fills} for n in levels})
    async with contextlib.AsyncExitStack() as stack:
        engines = {}
        for f in fills:
            config = EngineConfig(lane_fill=f, all_threads_rows=rows)
            engines[f], prompt = await stack.enter_async_context(warm_engine(runtime(), config))
        for r in range(rounds):
            order = fills[r % len(fills):] + fills[: r % len(fills)]
            for n in levels:
                for f in order:
                    out.rates[n][f].append((await engine_rate(engines[f], n, chars, prompt)).chars_per_s)
            if progress is not None:
                progress(f"round {r + 1} of {rounds} done")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--fills", default="2,8", help="comma-separated lane fills; the first is what the others are "
                                                  "compared with")  # fmt: skip
    p.add_argument("--streams", default="4,8,16", help="comma-separated concurrency levels")
    p.add_argument("--chars", type=int, default=2000, help="characters per stream")
    p.add_argument("--rounds", type=int, default=8, help="rounds of every level at every fill")
    a = p.parse_args(argv)
    fills, levels = [int(x) for x in a.fills.split(",")], [int(x) for x in a.streams.split(",")]
    if len(set(fills)) != len(fills) or min(fills) < 1 or min(levels) < 1 or a.rounds < 1:
        p.error("--fills: distinct fills >= 1; --streams and --rounds >= 1")
    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)  # (the table alone on stdout)

    runs = asyncio.run(run(a.model, fills, levels, a.chars, a.rounds, a.threads, progress))
    print("\n".join(runs.table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
