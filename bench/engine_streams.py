"""The serving engine without the network: concurrent generations through ``service.engine.Engine`` in this
process (its step thread, sampling head, prefill and coalescing; readers on this event loop), each level
beside raw onnxruntime steps at the same batch size measured right after it. Every run starts all its
streams at once, so their time to first chunk (TTFC, over all the runs of a level) is that of a burst of new
streams with no network in the way.

What it separates: served ÷ raw (bench/serve.py) = engine ÷ raw (here) x served ÷ engine, so the gap between
the engine and the raw steps is the engine's own work, and the rest is gRPC, protobuf and the clients.

    python -m bench.engine_streams --streams 1,8,64 --chars 2000 --repeats 3
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.engine import parser
from bench.serve_runs import PROMPT16, fit_prompt, raw_engines
from client.loadgen import summarize
from service.artifact import load_artifact
from service.engine import Engine, EngineConfig, available_cores
from service.runtime import Runtime, RuntimeConfig
from service.types import Chunk, GenerateParams, Sampling
from service.vocab import Vocab


@dataclass(frozen=True)
class EngineRun:
    """One level's run: aggregate chars/s, chars per chunk, and each stream's time to its first chunk (ms)."""

    chars_per_s: float
    chars_per_chunk: float
    ttfc_ms: list[float]


async def engine_rate(engine: Engine, streams: int, chars: int, prompt: str) -> EngineRun:
    """``streams`` concurrent generations of ``chars`` characters, all started at once (a burst)."""

    async def one(seed: int) -> tuple[int, int, float]:
        n = chunks = 0
        first = math.nan
        params = GenerateParams(Sampling(temperature=1.0, seed=seed), max_chars=chars)
        t0 = time.perf_counter()
        async for event in engine.generate(engine.new_state(), prompt, params):
            if isinstance(event, Chunk):
                if not chunks:
                    first = (time.perf_counter() - t0) * 1e3
                n, chunks = n + len(event.text), chunks + 1
        return n, chunks, first

    start = time.perf_counter()
    done = await asyncio.gather(*(one(s) for s in range(streams)))
    wall = time.perf_counter() - start
    total, chunks = sum(d[0] for d in done), sum(d[1] for d in done)
    return EngineRun(total / wall, total / chunks, [d[2] for d in done])


@contextlib.asynccontextmanager
async def warm_engine(runtime: Runtime, config: EngineConfig | None = None) -> AsyncIterator[tuple[Engine, str]]:
    """The server's ``Engine`` over ``runtime`` (``config``, else its default config), started and warmed up, and
    the 16-character prompt in its vocabulary (PROMPT16 itself for the shipped model); closed after."""
    engine = Engine(runtime, Vocab(runtime.vocabulary), config or EngineConfig(), runtime.model)
    prompt = fit_prompt(PROMPT16, runtime.vocabulary, len(PROMPT16))
    await engine.start()
    try:
        await engine_rate(engine, 4, 100, prompt)  # warm-up
        yield engine, prompt
    finally:
        await engine.close()


async def run(model: Path, levels: list[int], chars: int, repeats: int, threads: int,
              engine_seconds: float = 1.0, prompt_precision: str = "auto") -> list[str]:  # fmt: skip
    """One table line per level: the median of ``repeats`` (engine, raw) pairs; the engine's prompts in
    ``prompt_precision`` (as the server's flag)."""
    artifact = load_artifact(model)
    runtime = Runtime(artifact, RuntimeConfig(intra_op_threads=threads, prompt_precision=prompt_precision))
    raw = Runtime(artifact, RuntimeConfig(intra_op_threads=threads, spinning=True, prefill_spinning=True,
                                          spin_between_calls=True))  # onnxruntime's defaults  # fmt: skip
    lanes = Runtime(artifact, RuntimeConfig(intra_op_threads=1))
    engines = raw_engines({"no spinning": runtime, "spinning": raw}, available_cores(), lanes, engine_seconds)
    lines = [f"{runtime.model} in-process engine (prompts in {runtime.prompt_precision}) vs raw onnxruntime steps "
             f"(the fastest of: {' / '.join(engines)})",
             f"{'streams':>7} {'engine c/s':>11} {'raw c/s':>9} {'ratio':>6} {'c/chunk':>8} {'TTFC p50/p99 ms':>16}"
             "  all ratios"]  # fmt: skip
    async with warm_engine(runtime) as (engine, prompt):
        for n in levels:
            pairs = []
            for _ in range(repeats):
                r = await engine_rate(engine, n, chars, prompt)
                best = max(measure(n).chars_per_s for measure in engines.values())
                pairs.append((r.chars_per_s / best, best, r))
            ratio, best, r = sorted(pairs, key=lambda p: p[0])[len(pairs) // 2]
            ttfc = summarize([t for p in pairs for t in p[2].ttfc_ms])  # over every run of the level
            ratios = ", ".join(f"{p[0]:.0%}" for p in pairs)
            lines.append(f"{n:>7} {r.chars_per_s:>11,.0f} {best:>9,.0f} {ratio:>6.0%} {r.chars_per_chunk:>8.1f} "
                         f"{f'{ttfc.p50:.2f}/{ttfc.p99:.2f}':>16}  {ratios}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--streams", default="1,8,64,256", help="comma-separated concurrency levels")
    p.add_argument("--chars", type=int, default=2000, help="characters per stream")
    p.add_argument("--repeats", type=int, default=3, help="(engine, raw) pairs per level; the median is shown")
    p.add_argument("--prompt-precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="the engine's prompt calls, as the server's flag")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.streams.split(",")]
    print("\n".join(asyncio.run(run(a.model, levels, a.chars, a.repeats, a.threads,
                                     prompt_precision=a.prompt_precision))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
