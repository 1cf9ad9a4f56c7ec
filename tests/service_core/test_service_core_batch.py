"""DecodeBatch: preallocated double-buffered rows, membership changes, one call per step."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.service_core import ARCHS

from service.batch import DecodeBatch, Joiner
from service.runtime import Runtime


def joiner(rt: Runtime, seed: int) -> Joiner:
    rng = np.random.default_rng(seed)
    states = tuple((rng.standard_normal((rt.layers, rt.hidden)) * 0.5).astype(np.float32) for _ in rt.state_inputs)
    return Joiner(states, int(rng.integers(rt.vocab_size)), rng.random(rt.vocab_size) < 0.2)


def reference(rt: Runtime, j: Joiner, steps: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Logits of the last of ``steps`` greedy-free steps feeding j.pending then always id 0, alone."""
    states = tuple(s[:, None] for s in j.states)
    ids = np.array([[j.pending]])
    logits = np.zeros(0)
    for _ in range(steps):
        logits, states = rt.run(ids, states)
        ids = np.zeros((1, 1), np.int64)
    return logits[0, -1], states


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_survive_membership_changes(fp32_runtimes: dict[str, Runtime], arch: str) -> None:
    rt = fp32_runtimes[arch]
    batch = DecodeBatch(rt, capacity=8)
    js = [joiner(rt, i) for i in range(5)]
    batch.rebuild([], js[:3])  # rows: j0 j1 j2
    assert batch.n == 3 and batch.ids.tolist() == [j.pending for j in js[:3]]
    assert np.array_equal(batch.seen[1], js[1].seen)
    batch.step()
    batch.ids[:] = 0
    batch.rebuild([2, 0], js[3:])  # j1 leaves; rows: j2 j0 j3 j4
    assert batch.n == 4 and batch.ids.tolist() == [0, 0, js[3].pending, js[4].pending]
    logits = batch.step()
    # j2 and j0 have had two steps, j3 one: each row equals the same stream stepped alone
    for row, (j, steps) in enumerate([(js[2], 2), (js[0], 2), (js[3], 1), (js[4], 1)]):
        ref_logits, ref_states = reference(rt, j, steps)
        assert np.array_equal(logits[row], ref_logits)
        assert all(np.array_equal(a, r[:, 0]) for a, r in zip(batch.row_state(row), ref_states, strict=True))


def test_single_row_and_empty_batches(fp32_runtimes: dict[str, Runtime]) -> None:
    rt = fp32_runtimes["rnn"]
    batch = DecodeBatch(rt, capacity=4)
    j = joiner(rt, 9)
    batch.rebuild([], [j])
    logits = batch.step()
    assert logits.shape == (1, rt.vocab_size)
    assert np.array_equal(logits[0], reference(rt, j, 1)[0])
    batch.rebuild([], [])
    assert batch.n == 0 and batch.states()[0].shape == (rt.layers, 0, rt.hidden)
    with pytest.raises(ValueError, match="capacity"):
        batch.rebuild([], [j] * 5)
