"""Plain data shared by the service core (engine, sessions) and the gRPC servicer; no grpc, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

FinishReason = Literal["length", "stop", "cancelled"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request (validated by ``service.sampling.validate``)."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None  # None: keep the state's random stream (a fresh state draws a random seed)


@dataclass(frozen=True)
class GenerateParams:
    """What to generate after the prompt has been consumed."""

    sampling: Sampling = Sampling()
    max_chars: int = 200
    stop: tuple[str, ...] = ()
    logprobs: bool = False


@dataclass
class SeqState:
    """One stream's recurrent state: what a session keeps between calls.

    ``arrays`` holds one [layers, hidden] float32 array per state tensor (h, or h and c), in the
    artifact's order. ``pending`` is the last consumed character id whose prediction has not been
    computed yet: the next engine step feeds it. ``rng`` is the stream's own random generator, so a
    seeded request gives the same characters alone or batched, and two calls equal one.
    """

    arrays: tuple[np.ndarray, ...]
    pending: int | None = None
    chars_consumed: int = 0
    seed: int | None = None  # what ``rng`` starts from (None: a random start)
    # Built on first use: a generator takes ~20 µs to build (~80 µs on a cold request's path), and a seeded
    # request on a fresh state would otherwise build one for the state and one for its seed.
    _rng: np.random.Generator | None = field(default=None, repr=False)
    seed_drawn: bool = False  # whether the seed's own draw (first_uniform) was used since the seed was set

    @property
    def rng(self) -> np.random.Generator:
        """The state's random generator, started from ``seed`` when first used."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    @property
    def seed_draw_next(self) -> bool:
        """Whether the state's next uniform is the seed's own draw (see first_uniform)."""
        return not self.seed_drawn and self.seed is not None

    def first_uniform(self) -> float:
        """The state's next uniform in [0, 1). The first since the seed was set comes from the seed itself
        (splitmix64, ~1 µs), so that a request's first character never waits for ``rng`` to be built (~20 µs,
        ~80 µs on a cold request's path; the step thread builds it when the stream goes on); later ones from
        ``rng``. Every consumer of the state's uniforms takes them in this order (Stream's blocks too)."""
        if not self.seed_draw_next:
            return float(self.rng.random())
        self.seed_drawn = True
        return (_splitmix64(self.seed or 0) >> 11) * 2.0**-53  # 53 bits, as numpy's random()

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.seed, self._rng, self.seed_drawn = seed, None, False

    def copy(self) -> SeqState:
        """An independent copy (a fork): arrays and random stream duplicated."""
        rng = None  # not drawn from yet: the copy starts from the same seed
        if self._rng is not None or self.seed is None:  # (with no seed, the generator is the only record)
            rng = np.random.default_rng()
            rng.bit_generator.state = self.rng.bit_generator.state
        return SeqState(tuple(a.copy() for a in self.arrays), self.pending, self.chars_consumed, self.seed, rng,
                        self.seed_drawn)

    @property
    def nbytes(self) -> int:
        """Bytes of hidden state held."""
        return sum(a.nbytes for a in self.arrays)


def _splitmix64(seed: int) -> int:
    """A 64-bit integer that every bit of ``seed`` changes (Steele, Lea and Flood's SplitMix64 output function)."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_MASK64 = 2**64 - 1


@dataclass
class Chunk:
    """Newly generated characters (several may be coalesced) and, if asked, their log-probabilities."""

    text: str
    logprobs: list[float] | None = None
    # The stream's last chunk: its Finish comes next, at once (the servicer sends both in one message).
    final: bool = False


@dataclass
class Finish:
    """The end of one generation."""

    reason: FinishReason
    stop_sequence: str = ""
    prompt_chars: int = 0
    generated_chars: int = 0
    time_to_first_char_ms: float = 0.0
    total_ms: float = 0.0
    seed: int = 0


@dataclass
class FeedResult:
    """Characters consumed and their negative log-likelihood under the model."""

    chars_consumed: int = 0
    chars_scored: int = 0
    nll_nats: float = 0.0

    @property
    def nats_per_char(self) -> float:
        """Mean NLL in nats per scored character (0 when nothing was scored)."""
        return self.nll_nats / self.chars_scored if self.chars_scored else 0.0

    @property
    def bits_per_char(self) -> float:
        """Mean NLL in bits per scored character."""
        return self.nats_per_char / float(np.log(2.0))


class EngineObserver(Protocol):
    """What the engine reports as it runs (the Prometheus metrics implement it; tests may record it)."""

    def step(self, model: str, batch: int, seconds: float, steps: int = 1) -> None:
        """``steps`` engine steps of ``batch`` streams took ``seconds`` each (a call of several steps)."""

    def chars(self, model: str, n: int) -> None:
        """``n`` characters were generated."""

    def first_char(self, model: str, seconds: float) -> None:
        """A request produced its first character ``seconds`` after it arrived."""

    def lanes(self, model: str, lanes: int, all_threads_rows: int, lane_fill: int, precision: str,
              prompt_precision: str) -> None:  # fmt: skip
        """The engine's lanes and how it shares streams among them, as measured at start or set (EngineConfig),
        and the precisions of its decode steps and prompt calls; again where a later look lowers the lane fill."""
