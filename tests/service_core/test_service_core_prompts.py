"""A lone prompt's prepared call (service/prompts.py) computes what Runtime.run computes, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.service_core import ARCHS

from service.prompts import LONE_MAX_CHARS, LonePrompts
from service.runtime import Runtime
from service.stream import Stream
from service.types import SeqState


def stream(rt: Runtime, ids: np.ndarray, arrays: tuple[np.ndarray, ...]) -> Stream:
    return Stream(SeqState(arrays, seed=1), ids, None, None, None, rt.vocab_size)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_lone_prompt_gives_what_a_plain_call_gives(arch: str, tiny_runtimes: dict[str, Runtime]) -> None:
    rt = tiny_runtimes[arch]
    lone, rng = LonePrompts(rt, 16), np.random.default_rng(0)
    earlier: list[tuple[np.ndarray, tuple[np.ndarray, ...]]] = []
    for n in (1, 5, 16, 5):  # (5 twice: the second call reuses the binding)
        ids = rng.integers(0, rt.vocab_size, n)
        arrays = tuple(rng.standard_normal((rt.layers, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
        s = stream(rt, ids, arrays)
        logits = lone.consume(s)
        expected, new = rt.run(ids[None], tuple(a[:, None] for a in arrays))
        assert logits is not None and np.array_equal(logits, expected)
        assert all(np.array_equal(a, b[:, 0]) for a, b in zip(s.state.arrays, new, strict=True))
        earlier.append((logits, s.state.arrays))
    assert not np.array_equal(earlier[1][0], earlier[3][0])  # each call's results are its own, not the buffers
    assert lone.consume(stream(rt, np.zeros(17, np.int64), rt.zero_state())) is None  # over max_chars: not here


def test_lone_prompts_hold_bindings_for_short_prompts_only(tiny_runtimes: dict[str, Runtime]) -> None:
    rt = tiny_runtimes["lstm"]
    lone = LonePrompts(rt, 10_000)  # (--inline-prompt-chars may be set that high)
    assert lone.consume(stream(rt, np.zeros(LONE_MAX_CHARS + 1, np.int64), rt.zero_state())) is None
    assert lone.consume(stream(rt, np.zeros(LONE_MAX_CHARS, np.int64), rt.zero_state())) is not None
