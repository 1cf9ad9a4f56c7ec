"""The vectorised sampler, parameter validation and a stream's use of its uniforms, on synthetic logits (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidArgument
from service.sampling import BatchParams, apply_repetition_penalty, draw_one, log_softmax, sample, validate
from service.stream import UNIFORM_BLOCK, Stream
from service.types import GenerateParams, Sampling, SeqState

V = 12


def logits_of(probs: list[float]) -> np.ndarray:
    """Logits (1, V) whose softmax is ``probs``."""
    return np.log(np.array([probs], np.float64)).astype(np.float32)


def draw_many(logits: np.ndarray, s: Sampling, n: int, seed: int = 0) -> np.ndarray:
    """n draws from one row, as one batch of n identical rows with independent uniforms."""
    rows = np.repeat(logits, n, axis=0)
    u = np.random.default_rng(seed).random(n)
    return sample(rows, BatchParams.of([s] * n), u)


def test_greedy_is_argmax_per_row() -> None:
    logits = np.random.default_rng(1).standard_normal((16, V)).astype(np.float32)
    ids = sample(logits, BatchParams.of([Sampling(temperature=0.0)] * 16), np.zeros(16))
    assert ids.tolist() == logits.argmax(axis=1).tolist()


def test_top_k_keeps_only_the_k_most_likely() -> None:
    logits = np.random.default_rng(2).standard_normal((1, V)).astype(np.float32)
    ids = draw_many(logits, Sampling(temperature=2.0, top_k=3), 3000)
    allowed = set(np.argsort(-logits[0])[:3].tolist())
    assert set(ids.tolist()) == allowed  # all three appear at temperature 2, nothing else does


@pytest.mark.parametrize(("top_p", "kept"), [(0.5, {0}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p: float, kept: set[int]) -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    ids = draw_many(logits, Sampling(top_p=top_p), 4000)
    assert set(ids.tolist()) == kept


def test_sampling_matches_the_probabilities() -> None:
    probs = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    n = 40_000
    ids = draw_many(logits_of(probs.tolist()), Sampling(), n, seed=7)
    freq = np.bincount(ids, minlength=probs.size) / n
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) < 5 * sigma), (freq, probs)


def test_temperature_sharpens_and_flattens() -> None:
    logits = logits_of([0.6, 0.3, 0.1])
    cold = np.mean(draw_many(logits, Sampling(temperature=0.3), 5000) == 0)
    hot = np.mean(draw_many(logits, Sampling(temperature=3.0), 5000) == 0)
    assert cold > 0.85 and hot < 0.5


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    x = np.array([[2.0, -1.0, 3.0, 0.5]])
    seen = np.array([[True, True, False, False]])
    out = apply_repetition_penalty(x, np.array([2.0]), seen)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]


def test_repetition_penalty_changes_the_greedy_choice() -> None:
    logits = np.array([[3.0, 2.5, 0.0]], np.float32)
    seen = np.array([[True, False, False]])
    plain = sample(logits, BatchParams.of([Sampling(temperature=0.0)]), np.zeros(1), seen)
    penalised = sample(logits, BatchParams.of([Sampling(temperature=0.0, repetition_penalty=1.5)]), np.zeros(1), seen)
    assert plain.tolist() == [0] and penalised.tolist() == [1]


def test_rows_are_independent_of_the_batch() -> None:
    rng = np.random.default_rng(3)
    n = 64
    logits = (rng.standard_normal((n, V)) * 3).astype(np.float32)
    params = [Sampling(temperature=float(t), top_k=int(k), top_p=float(p), repetition_penalty=float(r))
              for t, k, p, r in zip(rng.uniform(0, 2, n), rng.integers(0, V, n), rng.uniform(0.2, 1, n),
                                    rng.uniform(1, 3, n), strict=True)]  # fmt: skip
    u = rng.random(n)
    seen = rng.random((n, V)) < 0.3
    batched = sample(logits, BatchParams.of(params), u, seen)
    alone = [int(sample(logits[i : i + 1], BatchParams.of(params[i : i + 1]), u[i : i + 1], seen[i : i + 1])[0])
             for i in range(n)]  # fmt: skip
    assert batched.tolist() == alone


def test_log_softmax_normalises() -> None:
    logits = np.random.default_rng(4).standard_normal((3, V)).astype(np.float32) * 10
    lp = log_softmax(logits)
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0)
    assert lp.dtype == np.float64


@pytest.mark.parametrize(
    ("sampling", "field", "bound"),
    [
        (Sampling(temperature=-0.1), "sampling.temperature", "[0, 10]"),
        (Sampling(temperature=10.5), "sampling.temperature", "[0, 10]"),
        (Sampling(temperature=math.nan), "sampling.temperature", "[0, 10]"),
        (Sampling(top_k=-1), "sampling.top_k", f"[0, {V}]"),
        (Sampling(top_k=V + 1), "sampling.top_k", f"[0, {V}]"),
        (Sampling(top_p=0.0), "sampling.top_p", "(0, 1]"),
        (Sampling(top_p=1.5), "sampling.top_p", "(0, 1]"),
        (Sampling(repetition_penalty=0.5), "sampling.repetition_penalty", "[1, 10]"),
        (Sampling(repetition_penalty=11.0), "sampling.repetition_penalty", "[1, 10]"),
        (Sampling(seed=-1), "sampling.seed", "[0, 2^64)"),
    ],
)
def test_validation_names_the_field_and_range(sampling: Sampling, field: str, bound: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate(sampling, V)
    assert e.value.field == field
    assert bound in str(e.value)


def test_valid_parameters_pass() -> None:
    validate(Sampling(temperature=0.0, top_k=V, top_p=1.0, repetition_penalty=10.0, seed=2**64 - 1), V)
    validate(Sampling(temperature=10.0, top_k=0, top_p=0.01, repetition_penalty=1.0))


def test_draw_one_is_the_batch_draw_of_one_row() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        logits = (rng.standard_normal(V) * 3).astype(np.float32)
        t, u = float(rng.choice([0.5, 1.0, 2.0])), float(rng.random())
        expected = sample(logits[None], BatchParams.of([Sampling(temperature=t)]), np.array([u]))[0]
        assert draw_one(logits, t, u) == expected


def test_draw_one_agrees_with_the_batch_draw_at_the_boundaries() -> None:
    """Uniforms on and beside each id's cumulative mass: any rounding apart from numpy's would split them."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        logits = (rng.standard_normal(V) * 3).astype(np.float32)
        x = logits.astype(np.float64) / 0.7
        cum = np.cumsum(np.exp(x - x.max()))
        for k in range(V - 1):
            edge = cum[k] / cum[-1]
            for u in (np.nextafter(edge, 0.0), edge, np.nextafter(edge, 1.0)):
                expected = sample(logits[None], BatchParams.of([Sampling(temperature=0.7)]), np.array([u]))[0]
                assert draw_one(logits, 0.7, float(u)) == expected


@pytest.mark.parametrize("top_k", [0, 5])  # the first character drawn by draw_one, or by the batch sampler
@pytest.mark.parametrize("blocks", [[], [3], [40, 40], [UNIFORM_BLOCK - 20, 40], [8] * (UNIFORM_BLOCK // 8 + 1)])
def test_a_stream_uses_its_seeds_uniforms_one_after_another(top_k: int, blocks: list[int]) -> None:
    """The first character's uniform (from the seed: the generator is not built for it), then blocks of them
    from the generator, leave the generator exactly after the ones used."""
    logits = np.random.default_rng(2).standard_normal(V).astype(np.float32)
    params = GenerateParams(Sampling(temperature=0.8, top_k=top_k), max_chars=100)
    stream = Stream(SeqState((np.zeros((1, 4), np.float32),), seed=7), np.zeros(0, np.int64), None, params, None, V)
    by_hand = np.random.default_rng(7).random(1 + sum(blocks)).tolist()
    first = SeqState((), seed=7).first_uniform()
    assert 0 <= first < 1 and first != SeqState((), seed=8).first_uniform()
    assert stream.first_char(logits, "abcdefghijkl") is None
    assert stream.state._rng is None  # (a request's first character did not wait for it)
    if top_k == 0:
        assert stream.state.pending == draw_one(logits, 0.8, first)
    used = 0
    for k in blocks:
        assert stream.next_uniforms(k) == by_hand[used : used + k]
        used += k
    stream.end("length")  # a session's state continues from here
    assert stream.state.rng.random() == by_hand[used]


BLOCK_CALLS = UNIFORM_BLOCK // 8  # decode calls of 8 steps a block lasts


@pytest.mark.parametrize(("calls", "unused"), [(2 * BLOCK_CALLS + 1, 3), (2 * BLOCK_CALLS, 2), (2 * BLOCK_CALLS, 1),
                                               (2 * BLOCK_CALLS, 0)])
def test_blocks_used_to_their_end_leave_the_generator_after_them(calls: int, unused: int) -> None:
    """Blocks taken 8 at a time (a decode call's steps) are used to their end, the first with the seed's draw
    at its head, or nearly; the generator goes on from the first uniform not used."""
    params = GenerateParams(Sampling(temperature=0.8), max_chars=1000)
    stream = Stream(SeqState((np.zeros((1, 4), np.float32),), seed=7), np.zeros(0, np.int64), 3, params, None, V)
    expected = [SeqState((), seed=7).first_uniform(), *np.random.default_rng(7).random(8 * calls + 8).tolist()]
    assert [u for _ in range(calls) for u in stream.next_uniforms(8)] == expected[: 8 * calls]
    stream.unuse_uniforms(unused)  # (a row that ended inside its last call)
    stream.end("length")
    assert stream.state.rng.random() == expected[8 * calls - unused]


@pytest.mark.parametrize("used", [0, 1, 5])
def test_a_stream_without_a_prompt_takes_the_seed_draw_first_in_its_blocks(used: int) -> None:
    """A session's generation with no prompt draws its first character in a decode step: from the same stream
    of uniforms (the seed's draw, then the generator's) as a prompt's first character, so primed-then-generate
    equals a prompt; a block's unused uniforms, the seed's draw included, stay unused."""
    params = GenerateParams(Sampling(temperature=0.8), max_chars=100)
    stream = Stream(SeqState((np.zeros((1, 4), np.float32),), seed=7), np.zeros(0, np.int64), 3, params, None, V)
    expected = [SeqState((), seed=7).first_uniform(), *np.random.default_rng(7).random(used + 1).tolist()]
    assert stream.next_uniforms(used + 1) == expected[: used + 1]
    stream.unuse_uniforms(1)  # (its step's character was not kept)
    stream.end("length")
    assert stream.state.first_uniform() == expected[used]  # the state goes on with the first one not used
