"""The soak of bench/serve.py: many streams, round after round, while the server's memory is followed."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

from bench.server_proc import ServerProcess
from client.loadgen import run_load


@dataclass
class Soak:
    """Warm-up rounds of ``streams`` concurrent generations, then rounds for at least ``seconds`` more; server RSS
    after each round and sampled each second after the warm-up."""

    streams: int
    chars: int
    seconds: float
    # The pools of onnxruntime and malloc reach their sizes over the first rounds: in process 154, 161, 178, 178...
    # MiB; in one full run of 43 (docs/performance-history.md, the twenty-seventh pass) 205.7, 206.5, then
    # 219.8-222.1 flat, which 2 warm-up rounds read as +7.0%. So 3.
    warmup_rounds: int = 3
    rounds: int = 0
    wall_s: float = 0.0
    total_chars: int = 0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rss_start_kib: int = 0  # before the first round
    rss_rounds_kib: list[int] = field(default_factory=list)  # at the end of each round
    rss_max_kib: int = 0  # the largest sample (once a second) after the warm-up

    @property
    def rss_warm_kib(self) -> int:
        """After the warm-up rounds."""
        return self.rss_rounds_kib[min(self.warmup_rounds, len(self.rss_rounds_kib)) - 1] if self.rss_rounds_kib else 0

    @property
    def rss_end_kib(self) -> int:
        """After the last round."""
        return self.rss_rounds_kib[-1] if self.rss_rounds_kib else 0

    @property
    def growth(self) -> float:
        """RSS growth after warm-up, like for like (both between rounds): (end - warm) / warm."""
        return (self.rss_end_kib - self.rss_warm_kib) / self.rss_warm_kib if self.rss_warm_kib else float("nan")

    # A round's end RSS swings by a few % as malloc hands memory back to the system and takes it again, so one
    # sample against another can read a swing as growth. The target is judged on the level the warm-up reached
    # (its highest round) against where the memory settled (the median of the last half of the later rounds):
    # a swing in one round moves neither; memory that keeps growing moves the median.
    @property
    def rss_warm_high_kib(self) -> int:
        """The highest RSS after a warm-up round."""
        return max(self.rss_rounds_kib[: max(self.warmup_rounds, 1)], default=0)

    @property
    def rss_settled_kib(self) -> float:
        """The median RSS of the last half of the rounds after the warm-up (the last round when there is one)."""
        after = self.rss_rounds_kib[self.warmup_rounds :]
        return statistics.median(after[len(after) // 2 :]) if after else float("nan")

    @property
    def settled_growth(self) -> float:
        """(settled - warm-up's highest) / warm-up's highest: the growth the target is judged on."""
        high = self.rss_warm_high_kib
        return (self.rss_settled_kib - high) / high if high else float("nan")

    @property
    def chars_per_s(self) -> float:
        return self.total_chars / self.wall_s if self.wall_s else float("nan")


async def soak(server: ServerProcess, model: str, streams: int, chars: int, seconds: float, prompt: str,
               warmup_rounds: int = 3) -> Soak:  # fmt: skip
    """Keeps ``streams`` streams busy for the warm-up rounds, then ``seconds`` more (whole rounds), and follows the
    server's memory."""
    result = Soak(streams, chars, seconds, warmup_rounds, rss_start_kib=server.rss_kib())
    warm = asyncio.Event()

    async def sample() -> None:
        while True:
            await asyncio.sleep(1.0)
            if warm.is_set():
                result.rss_max_kib = max(result.rss_max_kib, server.rss_kib())

    sampler = asyncio.create_task(sample())
    start = warm_end = time.perf_counter()
    try:
        while result.rounds <= warmup_rounds or time.perf_counter() - warm_end < seconds:
            r = await run_load(server.target, streams, chars, prompt, model=model, temperature=1.0,
                               seed=result.rounds * streams)  # fmt: skip
            result.rounds += 1
            result.total_chars += r.total_chars
            result.completed += r.completed
            for k, v in r.errors.items():
                result.errors[k] = result.errors.get(k, 0) + v
            result.rss_rounds_kib.append(server.rss_kib())
            if result.rounds == warmup_rounds:
                warm.set()
                warm_end = time.perf_counter()
    finally:
        sampler.cancel()
    result.wall_s = time.perf_counter() - start
    result.rss_max_kib = max(result.rss_max_kib, *result.rss_rounds_kib)
    return result
