"""Prompt calls: streams' next ids through one sequence call from their own states, and a lone prompt's call.

A prompt (or fed text) is consumed by sequence calls of the artifact's graph; a lane takes the prompts that
wait together in one call (``consume``). A short prompt that comes alone is consumed on the event loop
(service/engine.py), on its way to the request's first character: ``LonePrompts`` makes that call through a
binding prepared for its length, which skips onnxruntime's feed conversion and output allocation: a
one-character request with a 16-character prompt, after 1 ms idle, 831-862 µs in process against 854-883 µs
through ``Runtime.run`` (the two toggled in one process, 300 requests each, three runs); the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from service.runtime import Runtime, States
from service.stream import Stream

_Io = tuple[Callable[[], None], np.ndarray, States, np.ndarray, States]  # call, ids, states, logits, states out
LONE_MAX_CHARS = 64  # the longest lone prompt with a binding: at most 64 of them (~1.5 MB with the logits)


def consume(runtime: Runtime, group: list[Stream], n: int,
            session: ort.InferenceSession | None = None) -> np.ndarray:  # fmt: skip
    """One (P, n) sequence call over the next ``n`` ids of each stream's text, from each one's own state (on
    ``session``: see Runtime.run); the states advance (``done`` is the caller's to move). Returns the logits
    (P, n, V)."""
    if len(group) == 1:  # (views, not stacks: a request that comes alone is on its way to its first character)
        s = group[0]
        ids, states = s.todo[None, s.done : s.done + n], tuple(a[:, None] for a in s.state.arrays)
    else:
        ids = np.stack([s.todo[s.done : s.done + n] for s in group])
        states = tuple(np.stack(a, axis=1) for a in zip(*(s.state.arrays for s in group), strict=True))
    logits, new = runtime.run(ids, states, session)  # (layers, P, H)
    for i, s in enumerate(group):
        s.state.arrays = tuple(np.ascontiguousarray(a[:, i]) for a in new)
    return logits


class LonePrompts:
    """Prepared calls of one row's prompt, one per length up to ``max_chars`` (each built on first use), on the
    runtime's shared session; CPU only. Padded as ``Runtime.run`` pads: copies of the row up to ``min_batch``."""

    def __init__(self, runtime: Runtime, max_chars: int) -> None:
        # (capped: --inline-prompt-chars may be set far higher, and every length held would keep its buffers)
        self.runtime, self.max_chars = runtime, min(max_chars, LONE_MAX_CHARS)
        self._io: dict[int, _Io] = {}

    def consume(self, s: Stream) -> np.ndarray | None:
        """As ``consume`` of ``s`` alone over the rest of its text: its state advances and its logits (1, n, V)
        are returned; None (nothing done) when the text is longer than ``max_chars``, or on a device."""
        n = s.remaining
        if not 0 < n <= self.max_chars or self.runtime.provider != "cpu":
            return None
        with self.runtime.prompt_lock:  # (the buffers are shared; lanes' prompt calls take the lock too)
            call, ids, states, logits, states_out = self._io.get(n) or self._bind(n)
            ids[:] = s.todo[s.done : s.done + n]  # (every row: the padding rows are copies)
            for buf, a in zip(states, s.state.arrays, strict=True):
                buf[:] = a[:, None]
            call()
            s.state.arrays = tuple(o[:, 0].copy() for o in states_out)
            return logits[:1].copy()

    def _bind(self, n: int) -> _Io:
        rt = self.runtime
        b = rt.min_batch
        ids = np.zeros((b, n), np.int64)
        states = tuple(np.zeros((rt.layers, b, rt.hidden), np.float32) for _ in rt.state_inputs)
        logits = np.zeros((b, n, rt.vocab_size), np.float32)
        states_out = tuple(np.zeros_like(a) for a in states)
        self._io[n] = io = (rt.bind(ids, states, logits, states_out), ids, states, logits, states_out)
        return io
