"""Prompt calls: streams' next ids through one sequence call from their own states, and a lone prompt's call.

A prompt (or fed text) is consumed by sequence calls of the prompt graph (``Runtime.prompt_graph``); a lane takes
the prompts that wait together in one call (``consume``). A short prompt that comes alone is consumed on the event
loop (service/engine.py), on its way to the request's first character: ``LonePrompts`` makes that call through a
binding prepared for its length, which skips onnxruntime's feed conversion and output allocation: a one-character
request with a 16-character prompt, after 1 ms idle, 831-862 µs in process against 854-883 µs through
``Runtime.run`` (the two toggled in one process, 300 requests each, three runs); the same outputs.

On a device every call runs ``min_batch`` (256) rows, and ``Runtime.run`` copied all of them in and out: the
padded states in, and every row's logits at every position and states out (~3 MB for a 16-character prompt).
There the lone prompt runs ``one_row_graph`` instead: the one row goes in and is repeated inside the call, and
only its state and its last position's logits come out. The rows and the arithmetic are the same, so the
outputs are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

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
    runtime's shared session, padded as ``Runtime.run`` pads (copies of the row up to ``min_batch``); on a device
    (or with ``one_row``) every length through one session of ``one_row_graph`` instead."""

    def __init__(self, runtime: Runtime, max_chars: int, one_row: bool | None = None) -> None:
        # (capped: --inline-prompt-chars may be set far higher, and every length held would keep its buffers)
        self.runtime, self.max_chars = runtime, min(max_chars, LONE_MAX_CHARS)
        self._io: dict[int, _Io] = {}
        self._one_row: ort.InferenceSession | None = None
        if runtime.provider != "cpu" if one_row is None else one_row:
            graph = one_row_graph(onnx.load_from_string(runtime.prompt_graph), runtime.min_batch, runtime.input_name,
                                  runtime.logits_name, runtime.state_inputs)  # fmt: skip
            self._one_row = runtime.prompt_session(graph.SerializeToString())

    def consume(self, s: Stream) -> np.ndarray | None:
        """As ``consume`` of ``s`` alone over the rest of its text: its state advances and its logits (1, n, V)
        are returned, only the last position's (1, 1, V) through ``one_row_graph``; None (nothing done) when the
        text is longer than ``max_chars``."""
        n = s.remaining
        if not 0 < n <= self.max_chars:
            return None
        rt, ids = self.runtime, s.todo[None, s.done : s.done + n]
        if self._one_row is not None:
            feed = {_ONE + rt.input_name: ids, **{_ONE + k: a[:, None] for k, a in zip(rt.state_inputs, s.state.arrays,
                                                                                      strict=True)}}  # fmt: skip
            with rt.prompt_lock:  # (by name: an artifact's graph may list its outputs in any order)
                logits, *states = self._one_row.run([_ONE + o for o in rt.output_names], feed)
            s.state.arrays = tuple(a[:, 0] for a in states)
            return logits
        with rt.prompt_lock:  # (the buffers are shared; lanes' prompt calls take the lock too)
            call, ids_in, states_in, logits, states_out = self._io.get(n) or self._bind(n)
            ids_in[:] = ids  # (every row: the padding rows are copies)
            for buf, a in zip(states_in, s.state.arrays, strict=True):
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


_ONE = "charlm_one/"  # prefix of one_row_graph's inputs and outputs


def one_row_graph(model: onnx.ModelProto, rows: int, ids: str, logits: str,
                  states: tuple[str, ...]) -> onnx.ModelProto:  # fmt: skip
    """A copy of the artifact's graph that takes one row and runs ``rows``: each input (``_ONE`` + its name; ids
    (1, T), states (layers, 1, hidden)) is repeated to ``rows`` rows inside the call, and each output (``_ONE`` +
    its name: the logits ``logits`` (1, 1, V) of the last position, the states (layers, 1, hidden)) keeps the
    first row only."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {"ids_repeats": [rows, 1], "state_repeats": [1, rows, 1],  # Tile's repeats; Slice's starts, ends, axes:
              "logits_starts": [0, -1], "logits_ends": [1, np.iinfo(np.int64).max], "logits_axes": [0, 1],  # [:1, -1:]
              "state_starts": [0], "state_ends": [1], "state_axes": [1]}  # [:, :1]  # fmt: skip
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), _ONE + k) for k, v in consts.items())
    repeats = {ids: "ids_repeats", **dict.fromkeys(states, "state_repeats")}
    for i in g.input:
        if i.name in repeats:
            g.node.insert(0, helper.make_node("Tile", [_ONE + i.name, _ONE + repeats[i.name]], [i.name]))
            i.name = _ONE + i.name
    for o in g.output:
        cut = [_ONE + ("logits" if o.name == logits else "state") + k for k in ("_starts", "_ends", "_axes")]
        g.node.append(helper.make_node("Slice", [o.name, *cut], [_ONE + o.name]))
        o.name = _ONE + o.name
    return m
