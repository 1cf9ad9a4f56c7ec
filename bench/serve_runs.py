"""The measurements of bench/serve.py, each against a running server: load levels and latency probes (the soak:
bench/soak.py).

Every served figure comes from the real client (client.loadgen / client.aio) over loopback; the raw engine
figure of a level is measured in this process right after the level's load, so the two share the machine's
state of the moment (the ratio is side by side; absolute rates move with whatever else runs).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import grpc
import numpy as np

from bench.engine import StepRate, measure_lanes_rate, measure_step_rate
from bench.server_proc import DecodeCounters, ServerProcess, host_seconds
from bench.transport import first_message_s
from client.aio import AsyncClient
from client.loadgen import LoadReport, Percentiles, run_load, summarize
from service.runtime import Runtime

RawEngine = Callable[[int], StepRate]  # the raw engine's chars/s at a batch size, one onnxruntime setting

PROMPT16 = "KING HENRY:\nWhat"  # 16 characters, every one in the shipped model's vocabulary
_PARAGRAPH = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
              "that lour'd upon our house in the deep bosom of the ocean buried.\n")  # fmt: skip


def fit_prompt(text: str, vocabulary: str, chars: int) -> str:
    """``text`` without characters outside ``vocabulary``, repeated or cut to exactly ``chars`` characters."""
    kept = "".join(c for c in text if c in vocabulary) or vocabulary[0]
    return (kept * (chars // len(kept) + 1))[:chars]


def long_prompt(vocabulary: str, chars: int) -> str:
    """A plain-English prompt of exactly ``chars`` characters of the model's vocabulary."""
    return fit_prompt(_PARAGRAPH, vocabulary, chars)


@dataclass(frozen=True)
class Level:
    """One concurrency level: the served load and the raw engine at the same batch size."""

    streams: int
    served: LoadReport
    engines: dict[str, StepRate]  # the raw engine by setting ("spinning", "no spinning", "lanes", "8 steps", ...)
    server_cpu_s: float  # CPU the server process used during the load
    client_cpu_s: float  # CPU this (load generator) process used while the streams ran (LoadReport.cpu_s)
    ratios: tuple[float, ...] = ()  # of every (served, engine) pair measured at this level; this is the median one
    decode: DecodeCounters | None = None  # the server's decode calls during the load (its /metrics)
    loop_cpu_s: float = math.nan  # CPU of the server's main thread (its event loop) during the load
    waits_s: tuple[float, float] = (math.nan, math.nan)  # the server's (event loop, other threads) waiting for a core
    host_s: tuple[float, float] = (math.nan, math.nan)  # the machine's (idle, stolen by the VM's host) during the load
    raw_stolen_s: float = math.nan  # stolen by the host while the raw engine was measured right after
    raw_s: float = math.nan  # how long that measurement took
    loop_chars_per_s: float = math.nan  # the no-batching loop (bench/baseline.py), measured right after the engine
    batched: tuple[float, ...] = ()  # served / that loop, of every pair at this level, in order

    @property
    def engine(self) -> StepRate:
        """The raw engine at its fastest setting: the strictest denominator."""
        return max(self.engines.values(), key=lambda r: r.chars_per_s)

    @property
    def ratio(self) -> float:
        """Served aggregate chars/s over the raw engine's chars/s at batch ``streams``."""
        return self.served.chars_per_s / self.engine.chars_per_s

    # Where the gap to the raw engine is: with L lanes stepping side by side, served / raw lanes =
    # (busy / L) x (raw lane_us / call_us) x kept, up to the load's start and end.
    @property
    def busy(self) -> float:
        """Seconds of decode calls per second of the load: how many lanes the server kept in onnxruntime."""
        return self.decode.call_s / self.served.wall_s if self.decode and self.served.wall_s else math.nan

    @property
    def call_us(self) -> float:
        """Microseconds of the server's decode calls per row-step (per character computed)."""
        return self._per_row_step(self.decode.call_s * 1e6 if self.decode else math.nan)

    @property
    def kept(self) -> float:
        """Characters served per row-step (a first character comes from its prompt's call, and a stream that ends
        within a call of several steps leaves that call's later steps unused)."""
        return self._per_row_step(self.served.total_chars)

    def _per_row_step(self, x: float) -> float:
        return x / self.decode.rows_stepped if self.decode and self.decode.rows_stepped else math.nan

    @property
    def lane_us(self) -> float:
        """The raw engine's µs per row-step of one calling thread, at its fastest setting of the kind the server
        stepped with: lanes side by side when it kept more than one lane busy, else one call on all threads."""
        side_by_side = self.busy > 1.05
        rates = [r for r in self.engines.values() if (r.lanes > 1) == side_by_side]
        return min((r.lanes / r.chars_per_s * 1e6 for r in rates), default=math.nan)


def raw_engines(runtimes: dict[str, Runtime], lanes: int, lane_runtime: Runtime,
                seconds: float) -> dict[str, RawEngine]:  # fmt: skip
    """Single-step calls through each runtime, and the batch split over ``lanes`` threads side by side; and both
    with each number of steps per call the server runs (``step_counts`` of the first runtime, through the first)."""
    engines: dict[str, RawEngine] = {
        name: partial(measure_step_rate, "", seconds=seconds, runtime=rt) for name, rt in runtimes.items()
    }
    if lanes > 1:
        engines["lanes"] = partial(_lanes_rate, lanes=lanes, runtime=lane_runtime, seconds=seconds, steps=1)
    first = next(iter(runtimes.values()))
    for k in first.step_counts[1:]:
        engines[f"{k} steps"] = partial(measure_step_rate, "", seconds=seconds, runtime=first, steps=k)
        if lanes > 1:
            engines[f"{k} steps, lanes"] = partial(_lanes_rate, lanes=lanes, runtime=lane_runtime, seconds=seconds,
                                                   steps=k)  # fmt: skip
    return engines


def _lanes_rate(batch: int, lanes: int, runtime: Runtime, seconds: float, steps: int) -> StepRate:
    """measure_lanes_rate over at most ``batch`` lanes (a row each at least)."""
    return measure_lanes_rate(batch, min(lanes, batch), runtime, seconds, steps)


async def run_level(server: ServerProcess, engines: dict[str, RawEngine], model: str, streams: int, chars: int,
                    prompt: str, channels: int = 1, repeats: int = 1,
                    loop: Callable[[int], float] | None = None) -> Level:  # fmt: skip
    """``streams`` concurrent generations of ``chars`` characters, then the raw engine at that batch (and, given
    ``loop``, the no-batching loop's chars/s of as many streams); ``repeats`` such runs, of which the one with the
    median ratio is returned (a noisy machine moves single pairs a lot)."""
    pairs: list[Level] = []
    for _ in range(repeats):
        cpu0, loop0 = server.cpu_seconds(), server.loop_cpu_seconds()
        waits0, host0 = server.waiting_seconds(), host_seconds()
        decode0 = server.decode_counters()
        report = await run_load(server.target, streams, chars, prompt, model=model, channels=channels,
                                temperature=1.0, seed=0)  # fmt: skip
        # The load generator's CPU is counted while its streams ran, not while it set up and closed its channel
        # and summed up (4-62 ms a level in the forty-seventh pass, outside the load's wall time: not competing with
        # the server).
        server_cpu, client_cpu = server.cpu_seconds() - cpu0, report.cpu_s
        loop_cpu, decode1 = server.loop_cpu_seconds() - loop0, server.decode_counters()
        waits = tuple(b - a for a, b in zip(waits0, server.waiting_seconds(), strict=True))
        host1, raw0 = host_seconds(), time.perf_counter()
        decode = decode1 - decode0 if decode0 is not None and decode1 is not None else None
        rates = {name: measure(streams) for name, measure in engines.items()}
        raw_s, raw_stolen = time.perf_counter() - raw0, host_seconds()[1] - host1[1]
        pairs.append(Level(streams, report, rates, server_cpu, client_cpu, decode=decode, loop_cpu_s=loop_cpu,
                           waits_s=(waits[0], waits[1]), host_s=(host1[0] - host0[0], host1[1] - host0[1]),
                           raw_stolen_s=raw_stolen, raw_s=raw_s,
                           loop_chars_per_s=loop(streams) if loop else math.nan))  # fmt: skip
    batched = tuple(lv.served.chars_per_s / lv.loop_chars_per_s for lv in pairs if loop)
    pairs.sort(key=lambda lv: lv.ratio)
    return replace(pairs[len(pairs) // 2], ratios=tuple(lv.ratio for lv in pairs), batched=batched)


@dataclass(frozen=True)
class Floor:
    """What a first character cannot beat here, measured between the probe's requests: the raw prefill call of
    its prompt, and a bare grpc.aio call (bench/transport.py) computing as long before it answers one message."""

    echo_target: str
    prefill: Callable[[], object]  # one prefill call of the prompt, as the server's runtime makes it


@dataclass(frozen=True)
class Ttfc:
    """Time to first chunk (ms), as the client sees it and as the engine reports it; with a Floor, the raw prefill
    call and the bare call that works as long."""

    served: Percentiles
    engine: Percentiles
    floor: Percentiles | None = None
    prefill: Percentiles | None = None


def prefill_call(runtime: Runtime, prompt: str) -> Callable[[], object]:
    """One raw prefill call of ``prompt`` on a fresh state, as the server's first call of a request makes it."""
    ids = np.array([[runtime.vocabulary.index(c) for c in prompt]], np.int64)
    return partial(runtime.run, ids, tuple(s[:, None] for s in runtime.zero_state()))


FLOOR_BLOCK = 10  # the probe alternates blocks of this many requests, raw prefill calls and bare calls


async def ttfc_probe(target: str, model: str, prompt: str, repeats: int, max_chars: int = 1,
                     floor: Floor | None = None) -> Ttfc:  # fmt: skip
    """Time to first chunk of ``repeats`` sequential 1-stream requests on one warm channel: as the client sees
    it, as the server's engine reports it (from the request entering the engine to its first character) and,
    with ``floor``, the floor. Each block of requests is followed by as many prefill calls, then as many bare
    calls, each block back to back like the requests: on this VM a request after an idle gap of 20 ms is
    ~1 ms slower (its threads wake up cold), so interleaving one by one would slow all three.
    """
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(AsyncClient(target))
        await client.wait_ready()
        async for _ in client.generate(prompt, model=model, max_chars=max_chars, seed=0):
            pass  # warm-up: the first call sets up the HTTP/2 stream machinery
        echo = None if floor is None else await stack.enter_async_context(grpc.aio.insecure_channel(floor.echo_target))
        ttfc: list[float] = []
        engine: list[float] = []
        bare: list[float] = []
        prefill: list[float] = []
        for i in range(repeats):
            start = time.perf_counter()
            first: float | None = None
            gen = client.generate(prompt, model=model, max_chars=max_chars, seed=i)
            async for _ in gen:
                first = first if first is not None else time.perf_counter()
            assert first is not None and gen.finish is not None, "a generation produced no text"
            ttfc.append((first - start) * 1e3)
            engine.append(gen.finish.time_to_first_char_ms)
            if floor is not None and echo is not None and (len(ttfc) % FLOOR_BLOCK == 0 or len(ttfc) == repeats):
                n = len(ttfc) - len(bare)
                prefill.extend(timed_ms(floor.prefill) for _ in range(n))
                busy_us = round(statistics.median(prefill[-n:]) * 1e3)  # the bare handler works as long
                bare.extend([await first_message_s(echo, busy_us) * 1e3 for _ in range(n)])
    if floor is None:
        return Ttfc(summarize(ttfc), summarize(engine))
    return Ttfc(summarize(ttfc), summarize(engine), summarize(bare), summarize(prefill))


def timed_ms(call: Callable[[], object]) -> float:
    """Milliseconds one call of ``call`` takes."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3
