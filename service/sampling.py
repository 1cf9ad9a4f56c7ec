"""Vectorised sampling over a batch of streams, and validation of sampling parameters.

Every operation here is row-wise (elementwise maths, per-row sort and cumulative sums), so a row's result
depends only on that row's logits, parameters and uniform: a seeded stream samples the same characters
alone or batched with any other streams.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from service.errors import InvalidArgument
from service.types import Sampling

MAX_TEMPERATURE = 10.0
MAX_REPETITION_PENALTY = 10.0
# Below this a temperature samples as 0 (greedy). Already at 1e-6 a logit 1e-4 below the top one is 100 nats less
# likely; far below, 1/T overflows the float32 sampling head (inf, then NaN) and every draw would be id 0.
MIN_TEMPERATURE = 1e-6


def validate(s: Sampling, vocab_size: int | None = None) -> None:
    """Raise InvalidArgument naming the first out-of-range field of ``s`` and its allowed range."""
    if not 0.0 <= s.temperature <= MAX_TEMPERATURE:  # also rejects NaN
        raise InvalidArgument("sampling.temperature", f"{s.temperature} is outside [0, {MAX_TEMPERATURE:g}]")
    top_k_max = vocab_size if vocab_size is not None else math.inf
    if not 0 <= s.top_k <= top_k_max:
        bound = vocab_size if vocab_size is not None else "vocabulary size"
        raise InvalidArgument("sampling.top_k", f"{s.top_k} is outside [0, {bound}]")
    if not 0.0 < s.top_p <= 1.0:
        raise InvalidArgument("sampling.top_p", f"{s.top_p} is outside (0, 1]")
    if not 1.0 <= s.repetition_penalty <= MAX_REPETITION_PENALTY:
        raise InvalidArgument(
            "sampling.repetition_penalty", f"{s.repetition_penalty} is outside [1, {MAX_REPETITION_PENALTY:g}]"
        )
    if s.seed is not None and not 0 <= s.seed < 2**64:
        raise InvalidArgument("sampling.seed", f"{s.seed} is outside [0, 2^64)")


def effective(s: Sampling) -> Sampling:
    """``s`` as it is sampled: a temperature in (0, MIN_TEMPERATURE) is greedy."""
    return replace(s, temperature=0.0) if 0.0 < s.temperature < MIN_TEMPERATURE else s


@dataclass(frozen=True)
class BatchParams:
    """Per-row sampling parameters of a batch, as arrays (built when the batch's membership changes)."""

    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_k: np.ndarray  # (B,) int64; 0 = off
    top_p: np.ndarray  # (B,) float64; 1 = off
    penalty: np.ndarray  # (B,) float64; 1 = off
    plain: np.ndarray  # row indices that draw from the whole softmax (temperature > 0, no top-k/top-p)
    truncated: np.ndarray  # row indices that draw after top-k and/or top-p (these need a sort)
    any_penalty: bool
    all_plain: bool  # every row is plain: sample() then skips the argmax and the row gathers (the common case)
    unit_temperature: bool  # every temperature is 1 (x / 1 == x: the division is skipped)

    @staticmethod
    def of(rows: Sequence[Sampling]) -> BatchParams:
        """Arrays of the given rows' parameters, in order."""
        temperature = np.array([s.temperature for s in rows], dtype=np.float64)
        top_k = np.array([s.top_k for s in rows], dtype=np.int64)
        top_p = np.array([s.top_p for s in rows], dtype=np.float64)
        penalty = np.array([s.repetition_penalty for s in rows], dtype=np.float64)
        sampled, truncate = temperature > 0.0, (top_k > 0) | (top_p < 1.0)
        return BatchParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            penalty=penalty,
            plain=np.flatnonzero(sampled & ~truncate),
            truncated=np.flatnonzero(sampled & truncate),
            any_penalty=bool((penalty != 1.0).any()),
            all_plain=bool(sampled.all() and not truncate.any()) and len(rows) > 0,
            unit_temperature=bool((temperature == 1.0).all()),
        )


# Relative to the total mass: well above what sums of V exps an ulp apart can differ by (~V·2.2e-16), and a
# uniform lands this near one of V edges in ~2V·10^-10 of draws, so the numpy draw costs nothing on average.
_EDGE = 1e-10


def by_head(s: Sampling) -> bool:
    """Whether the decode call's sampling head draws for ``s`` (a plain draw: service/sampling_head.py)."""
    return s.temperature > 0.0 and s.top_k == 0 and s.top_p >= 1.0 and s.repetition_penalty == 1.0


def draw_one(logits: np.ndarray, temperature: float, u: float) -> int:
    """One plain draw from softmax(logits / T), logits (V,): the same inverse-CDF draw as ``sample``."""
    # In Python floats, not numpy: this is on a request's way to its first character, where the server has
    # often sat idle and runs cold; there six small numpy calls took 76-130 µs against 52-64 for this loop.
    # The same float64 operations in the same order as `_draw` (a sequential cumulative sum), but math.exp is
    # not numpy's exp everywhere: on an AVX2 EPYC they matched bit for bit over 10^6 values, on an AVX-512 Xeon
    # (numpy's own SIMD exp) 4.6% differ by an ulp. That moves the draw only when u·total sits on an edge, so
    # there (within _EDGE of one) numpy's draw decides, and the draw stays `sample`'s (tested at the edges).
    x = logits.tolist()
    if temperature != 1.0:
        x = [v / temperature for v in x]
    top = max(x)
    cum = list(itertools.accumulate([math.exp(v - top) for v in x]))
    at = u * cum[-1]
    j = bisect.bisect_left(cum, at)  # the first id whose mass reaches u·total
    near = _EDGE * cum[-1]
    if (j < len(cum) and cum[j] - at < near) or (j > 0 and at - cum[j - 1] < near):
        t = None if temperature == 1.0 else np.array([temperature])
        return int(_draw(logits[None].astype(np.float64), t, np.array([u]))[0])
    return min(j, len(cum) - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def apply_repetition_penalty(x: np.ndarray, penalty: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """CTRL-style penalty: seen characters' logits divided by p when positive, multiplied when negative."""
    p = penalty[:, None]  # (B, 1)
    return np.where(seen & (p != 1.0), np.where(x > 0, x / p, x * p), x)


def sample(logits: np.ndarray, params: BatchParams, uniforms: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """Sample one id per row of ``logits`` (B, V).

    Order: repetition penalty on the raw logits, then greedy argmax for temperature 0, else temperature,
    top-k, top-p (the smallest most-likely set whose mass reaches top_p) and an inverse-CDF draw with the
    row's uniform in [0, 1). ``uniforms`` (B,) is read only for sampled rows. Rows without top-k/top-p
    draw in id order; truncated rows draw in order of probability (the same distribution either way).
    """
    x = logits.astype(np.float64)  # (B, V)
    if params.any_penalty and seen is not None:
        x = apply_repetition_penalty(x, params.penalty, seen)
    if params.all_plain:  # the same draw as below, without the greedy argmax and the gathers (~30% of the time)
        return _draw(x, None if params.unit_temperature else params.temperature, uniforms)
    ids = x.argmax(axis=1)  # (B,) greedy for every row; sampled rows are overwritten below
    rows = params.plain
    if rows.size:
        ids[rows] = _draw(x[rows], params.temperature[rows], uniforms[rows])
    rows = params.truncated
    if rows.size:
        t, k, p = params.temperature[rows], params.top_k[rows], params.top_p[rows]
        ids[rows] = _draw_truncated(x[rows], t, k, p, uniforms[rows])
    return ids


def _draw(x: np.ndarray, temperature: np.ndarray | None, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw from softmax(x / T) in id order (no sort needed); x (M, V), the rest (M,); T None = 1.

    ``x`` is a scratch array of the caller's (overwritten in place: this runs every engine step).
    """
    if temperature is not None:
        x /= temperature[:, None]
    x -= x.max(axis=1, keepdims=True)
    cum = np.cumsum(np.exp(x, out=x), axis=1, out=x)  # (M, V) unnormalised CDF
    j = (cum < u[:, None] * cum[:, -1:]).sum(axis=1)  # first id whose cumulative mass exceeds u·total
    return np.minimum(j, x.shape[1] - 1)


def _draw_truncated(
    x: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Inverse-CDF draw from softmax(x / T) cut by top-k and top-p; x (M, V), the rest (M,).

    The cut is a probability threshold found on the sorted probabilities (top-k: the k-th largest; top-p:
    the last of the smallest most-likely set whose mass reaches top_p), then the draw runs in id order over
    the characters at or above it, so no argsort or gather is needed. Ties at the threshold are all kept.
    """
    m, v = x.shape
    rows = np.arange(m)
    x = x / temperature[:, None]
    p = np.exp(x - x.max(axis=1, keepdims=True))  # (M, V) unnormalised
    desc = -np.sort(-p, axis=1)  # (M, V) most likely first
    k = np.where(top_k > 0, np.minimum(top_k, v), v)  # (M,)
    desc[np.arange(v)[None, :] >= k[:, None]] = 0.0
    cum = np.cumsum(desc, axis=1)
    # nucleus: keep ranks up to the first whose cumulative mass reaches top_p of the (top-k) total
    last = np.minimum((cum < top_p[:, None] * cum[:, -1:]).sum(axis=1), k - 1)
    last = np.where(top_p < 1.0, last, k - 1)
    p[p < desc[rows, last][:, None]] = 0.0
    cum = np.cumsum(p, axis=1)
    j = (cum < u[:, None] * cum[:, -1:]).sum(axis=1)
    return np.minimum(j, v - 1)
