"""Load generation: N concurrent Generate streams against a server, with throughput and latency percentiles.

Each stream makes one request, or several one after another (many short requests: the rate at which a server
takes new calls). Used by ``charlm bench`` and by ``bench/serve.py``. Latencies are measured at the client:
time to first chunk from each call's start; inter-chunk gaps between messages; inter-character gaps spreading each
chunk's gap over its characters, so that coalescing (several characters per message) shows as a lower
per-character latency than per-chunk latency. The rate while every stream was streaming (from the last stream's
first chunk to the first stream's last) leaves out the start and the end, when streams are still arriving or
already done: on a fast engine they are a large share of a short load.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from client.aio import AsyncClient
from client.connection import ConnectOptions
from client.errors import CharlmError

Progress = Callable[[int], None]  # called with the number of characters that just arrived


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds at p50/p90/p99 (linear interpolation), the mean and the sample count."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated; nan when empty."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values_ms: list[float]) -> Percentiles:
    """Percentiles of a list of millisecond values."""
    values = sorted(values_ms)
    mean = sum(values) / len(values) if values else math.nan
    return Percentiles(percentile(values, 50), percentile(values, 90), percentile(values, 99), mean, len(values))


@dataclass(frozen=True)
class LoadReport:
    """The outcome of one load run."""

    target: str
    streams: int
    chars_per_stream: int
    channels: int
    wall_s: float  # from the first call's start to the last stream's end
    total_chars: int
    total_chunks: int
    chars_per_s: float  # aggregate: total_chars / wall_s
    ttfc_ms: Percentiles  # time to first chunk, per request
    inter_chunk_ms: Percentiles  # gap between consecutive messages of a request
    inter_char_ms: Percentiles  # each gap divided over the characters of the chunk that ended it
    completed: int  # requests that finished without error
    errors: dict[str, int] = field(default_factory=dict)  # status name -> count
    requests_per_stream: int = 1  # requests each stream made, one after another
    error_messages: dict[str, str] = field(default_factory=dict)  # status name -> the first such error's message
    all_streaming_s: float = 0.0  # from the last stream's first chunk to the first stream's last (0: never all)
    all_streaming_chars: int = 0  # characters that arrived in that window
    all_streaming_from_s: float = 0.0  # when that window began, from the first call's start
    started: float = 0.0  # time.perf_counter() at the first call's start (to line up other measurements with it)
    cpu_s: float = 0.0  # this process's CPU while the streams ran (all its threads: what the load generator cost)

    @property
    def requests(self) -> int:
        """Requests made in all."""
        return self.streams * self.requests_per_stream

    @property
    def chars_per_chunk(self) -> float:
        """Mean characters per message (1.0 = no coalescing)."""
        return self.total_chars / self.total_chunks if self.total_chunks else math.nan

    @property
    def requests_per_s(self) -> float:
        """Requests completed per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def all_streaming_chars_per_s(self) -> float:
        """Aggregate chars/s while every stream was streaming; nan when they never all were."""
        return self.all_streaming_chars / self.all_streaming_s if self.all_streaming_s > 0 else math.nan

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (percentile groups as nested dicts)."""
        return {**asdict(self), "chars_per_chunk": self.chars_per_chunk, "requests_per_s": self.requests_per_s,
                "all_streaming_chars_per_s": self.all_streaming_chars_per_s}


@dataclass
class _StreamStats:
    # Per message only a (time, characters) pair is kept: the gaps are worked out after the load, so that the
    # load generator spends as little as it can of the cores it shares with the server.
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, characters) of each chunk
    requests: list[tuple[float, int]] = field(default_factory=list)  # (start, index of its first arrival) each
    completed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (status name, message) of each failed request

    @property
    def chars(self) -> int:
        return sum(n for _, n in self.arrivals)

    def latencies(self) -> tuple[list[float], list[float], list[float]]:
        """Milliseconds: each request's time to first chunk, the gaps between its chunks, and each gap spread over
        the characters of the chunk that ended it (one value a character)."""
        ttfc: list[float] = []
        chunk_gaps: list[float] = []
        char_gaps: list[float] = []
        bounds = [i for _, i in self.requests[1:]] + [len(self.arrivals)]
        for (last, first), end in zip(self.requests, bounds, strict=True):
            for k in range(first, end):
                now, n = self.arrivals[k]
                gap_ms = (now - last) * 1000.0
                if k == first:
                    ttfc.append(gap_ms)
                else:
                    chunk_gaps.append(gap_ms)
                    char_gaps.extend([gap_ms / n] * n)
                last = now
        return ttfc, chunk_gaps, char_gaps


async def _one_request(client: AsyncClient, prompt: str, chars: int, model: str, temperature: float | None,
                       seed: int | None, progress: Progress | None, stats: _StreamStats) -> None:  # fmt: skip
    arrivals = stats.arrivals
    stats.requests.append((time.perf_counter(), len(arrivals)))  # the call's start: its first chunk's TTFC is from it
    try:
        gen = client.generate(prompt, model=model, max_chars=chars, temperature=temperature, seed=seed)
        async for text in gen:
            arrivals.append((time.perf_counter(), len(text)))
            if progress is not None:
                progress(len(text))
        stats.completed += 1
    except CharlmError as e:
        rid = f" (request id {e.request_id})" if e.request_id else ""  # to find the call in the server's log
        stats.errors.append((e.status, " ".join(e.message.split()) + rid))


def all_streaming(arrivals: Sequence[Sequence[tuple[float, int]]]) -> tuple[float, int, float]:
    """The window in which every stream was streaming, from the last stream's first chunk to the first stream's
    last, the characters that arrived in it, and when it began: (seconds, characters, perf_counter); (0.0, 0,
    0.0) when there is none. ``arrivals``: each stream's (time, characters) of its chunks, in order."""
    if not arrivals or not all(arrivals):
        return 0.0, 0, 0.0
    lo, hi = max(a[0][0] for a in arrivals), min(a[-1][0] for a in arrivals)
    if hi <= lo:
        return 0.0, 0, 0.0
    return hi - lo, sum(n for a in arrivals for t, n in a if lo < t <= hi), lo


def _first_messages(errors: list[tuple[str, str]]) -> dict[str, str]:
    """The first message of each status, to say what failed and not only how often."""
    first: dict[str, str] = {}
    for status, message in errors:
        first.setdefault(status, message)
    return first


async def run_load(
    target: str,
    streams: int,
    chars: int,
    prompt: str = "\n",
    *,
    model: str = "",
    channels: int = 1,
    temperature: float | None = None,
    seed: int | None = 0,
    options: ConnectOptions | None = None,
    progress: Progress | None = None,
    requests: int = 1,
) -> LoadReport:
    """Runs ``streams`` concurrent streams of ``requests`` generations of ``chars`` characters each, one after
    another; request j of stream i uses seed ``seed + i + j * streams``."""
    opts = options or ConnectOptions(target=target, timeout=None)
    clients = [AsyncClient(target, opts) for _ in range(max(1, min(channels, streams)))]
    try:
        # Connect first: setting up the connection is not part of any stream's latency. A server that is down
        # fails this at once, and every stream then reports the error.
        with contextlib.suppress(CharlmError):
            await asyncio.gather(*(c.health() for c in clients))
        results = [_StreamStats() for _ in range(streams)]

        async def one_stream(i: int) -> None:
            for j in range(requests):
                await _one_request(clients[i % len(clients)], prompt, chars, model, temperature,
                                   None if seed is None else seed + i + j * streams, progress, results[i])

        start, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one_stream(i) for i in range(streams)))
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
    finally:
        for c in clients:
            await c.close()
    total_chars = sum(r.chars for r in results)
    latencies = [r.latencies() for r in results]
    window_s, window_chars, window_from = all_streaming([r.arrivals for r in results])
    return LoadReport(
        target=target,
        streams=streams,
        chars_per_stream=chars,
        channels=len(clients),
        wall_s=wall_s,
        total_chars=total_chars,
        total_chunks=sum(len(r.arrivals) for r in results),
        chars_per_s=total_chars / wall_s if wall_s > 0 else math.nan,
        ttfc_ms=summarize([t for lat in latencies for t in lat[0]]),
        inter_chunk_ms=summarize([g for lat in latencies for g in lat[1]]),
        inter_char_ms=summarize([g for lat in latencies for g in lat[2]]),
        completed=sum(r.completed for r in results),
        errors=dict(Counter(status for r in results for status, _ in r.errors)),
        requests_per_stream=requests,
        error_messages=_first_messages([e for r in results for e in r.errors]),
        all_streaming_s=window_s,
        all_streaming_chars=window_chars,
        all_streaming_from_s=window_from - start if window_s else 0.0,
        started=start,
        cpu_s=cpu_s,
    )
