"""The decode batch: every decoding stream's state in preallocated arrays, advanced by one onnxruntime call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from service.runtime import Runtime, States

Call = Callable[[], None]
Calls = dict[int, tuple[tuple[Call, Call], tuple[Call, Call]]]  # see DecodeBatch._bound


@dataclass
class Joiner:
    """A stream entering the batch: its state [layers, hidden] per tensor, the id to feed, its seen-mask (V,)."""

    states: States
    pending: int
    seen: np.ndarray


class DecodeBatch:
    """States of up to ``capacity`` rows in two preallocated buffer sets, used alternately.

    Each step reads ids and states from one buffer set and writes logits, new states and the sampling head's
    draws (the next ids: service/sampling_head.py) into the other through a prepared onnxruntime binding, so
    steady-state steps allocate, convert and copy nothing. Rows are
    always packed at the front (a contiguous [layers, n, hidden] view); ``rebuild`` gathers the kept rows
    and appends the joining ones when membership changes, which happens far less often than steps.
    """

    def __init__(self, runtime: Runtime, capacity: int) -> None:
        self.runtime = runtime
        self.capacity = max(capacity, runtime.min_batch)
        L, H, V = runtime.layers, runtime.hidden, runtime.vocab_size
        size = L * self.capacity * H
        self._bufs = [[np.zeros(size, np.float32) for _ in runtime.state_inputs] for _ in range(2)]
        self._idsets = [np.zeros(self.capacity, np.int64) for _ in range(2)]  # per buffer set, like states
        self.uniforms = np.zeros(self.capacity, np.float32)  # each row's uniform for the head's next draw
        self.inv_temperature = np.ones(self.capacity, np.float32)  # per row, for the head (1 where unused)
        self._logits = np.zeros(self.capacity * V, np.float32)
        # several steps per call (Runtime.bind_steps): each row's K uniforms, the K drawn ids, the states after
        # the first K - 1 steps (the last step's go to the other buffer set, as a single step's do), for the
        # most steps a call runs (those past decode_steps: calls of at most few_rows rows only)
        self.steps = runtime.decode_steps  # the latest (or next: use_steps) call's steps, while it runs several
        self.step_choices: tuple[int, ...] = ()  # see use_steps
        K = max(runtime.step_counts)
        self._step_uniforms = np.zeros(self.capacity * K, np.float32)
        self._step_ids = np.zeros(self.capacity * K, np.int64)
        sizes = [size if j < runtime.decode_steps - 1 else L * min(self.capacity, runtime.few_rows) * H
                 for j in range(K - 1)]  # fmt: skip
        self._step_bufs = [[np.zeros(n, np.float32) for _ in runtime.state_inputs] for n in sizes]
        self.seen = np.zeros((self.capacity, V), bool)  # per row: characters seen in the request
        self.n = 0  # live rows
        self._rows = 0  # rows each call runs: n, padded up to runtime.min_batch
        self._cur = 0  # which buffer set holds the current states
        # the prepared calls by row count, [steps (1, or several: step_choices)][lane][buffer set]:
        # the buffers never move, so a binding stays valid (and preparing one costs more than the step it runs
        # at small batches, i.e. at every join or leave)
        self._bound: dict[int, Calls] = {}
        self._calls: Calls | None = None

    @property
    def ids(self) -> np.ndarray:
        """(n,) ids the next step feeds: after a step, the head's draws; overwrite rows sampled elsewhere."""
        return self._idsets[self._cur][: self.n]

    def states(self) -> States:
        """Current states of the live rows, each [layers, n, hidden] (views)."""
        return tuple(v[:, : self.n] for v in self._views(self._cur, self._rows))

    def use_steps(self, k: int) -> None:
        """Make the next ``steps_call`` one of ``k`` steps: one of ``step_choices``, the several steps a call of
        the current rows may run (largest first; none where the runtime runs one step per call). ``step_uniforms``
        and ``step_ids`` are then (n, k)."""
        if k not in self.step_choices:
            raise ValueError(f"{k} steps: a call of {self._rows} rows runs {self.step_choices or 'one'}")
        self.steps = k
        if self._calls is not None and k not in self._calls:  # a fallback's calls (rare), bound on first use
            self._prepared(k)

    @property
    def step_uniforms(self) -> np.ndarray:
        """(n, K) uniforms of ``steps_call``: row i's draw of each step (overwrite the rows' before each call)."""
        return self._step_uniforms[: self._rows * self.steps].reshape(self._rows, -1)[: self.n]

    @property
    def step_ids(self) -> np.ndarray:
        """(n, K) ids drawn by the latest ``steps_call`` (its last column is ``ids``)."""
        return self._step_ids[: self._rows * self.steps].reshape(self._rows, -1)[: self.n]

    def row_state(self, row: int, step: int = 0) -> States:
        """A copy of one row's state, each [layers, hidden]; ``step`` 1..K-1: after that step of the latest
        ``steps_call`` instead of after all of them."""
        bufs = self._step_bufs[step - 1] if 0 < step < self.steps else None
        return tuple(v[:, row].copy() for v in self._views(self._cur, self._rows, bufs))

    def step(self, alone: bool = True) -> np.ndarray:
        """Feed ``ids`` to every row and draw the next ``ids``: one onnxruntime call; returns logits (n, V)
        (a view, valid until the next step). ``alone``: no other batch steps meanwhile, so the call may use
        all of onnxruntime's threads; else it runs on the calling thread alone (Runtime.decoder_session)."""
        assert self._calls is not None and self.n > 0
        self._calls[1][not alone][self._cur]()
        self._cur ^= 1
        return self._logits[: self._rows * self.runtime.vocab_size].reshape(self._rows, -1)[: self.n]

    def steps_call(self, alone: bool = True) -> np.ndarray:
        """``steps`` (K, see use_steps) steps in one call (Runtime.bind_steps), each row drawing from its
        ``step_uniforms``; returns ``step_ids`` (n, K); ``ids`` is then the last column. No logits."""
        assert self._calls is not None and self.n > 0 and self.steps > 1
        self._calls[self.steps][not alone][self._cur]()
        self._cur ^= 1
        return self.step_ids

    def rebuild(self, keep: Sequence[int], joining: Sequence[Joiner]) -> None:
        """New membership: the rows ``keep`` (old indices, in their new order), then ``joining``."""
        n = len(keep) + len(joining)
        if n > self.capacity:
            raise ValueError(f"batch of {n} rows exceeds capacity {self.capacity}")
        rows = self._rows_for(n)
        keep_idx = np.asarray(keep, dtype=np.int64)
        src = self._views(self._cur, self._rows)
        dst = self._views(1 - self._cur, rows)
        for k, (s, d) in enumerate(zip(src, dst, strict=True)):
            d[:, : len(keep)] = s[:, keep_idx]
            for j, joiner in enumerate(joining):
                d[:, len(keep) + j] = joiner.states[k]
            d[:, n:] = 0.0  # padding rows (see Runtime.min_batch): any finite state will do
        src_ids, dst_ids = self._idsets[self._cur], self._idsets[1 - self._cur]
        dst_ids[:n] = np.concatenate([src_ids[keep_idx], np.array([j.pending for j in joining], np.int64)])
        dst_ids[n:rows] = 0
        self.uniforms[n:rows], self.inv_temperature[n:rows] = 0.0, 1.0
        self._step_uniforms[:] = 0.0  # (padding rows' uniforms, wherever a call of any K puts them)
        seen = [self.seen[keep_idx], *(j.seen[None, :] for j in joining)]
        self.seen[:n] = np.concatenate(seen)
        self._cur = 1 - self._cur
        self.n, self._rows = n, rows
        self._calls = self._prepared() if n else None
        self.steps, self.step_choices = self._steps_of(rows)

    def prepare(self, run: bool) -> None:
        """Bind the calls of every row count up to capacity now (``run``: and make each call once), so that
        memory reaches its size at startup instead of growing as new batch sizes come (onnxruntime keeps
        some state per input shape); call only while the batch is empty."""
        # Largest first: each call's scratch then fits in what the larger one before it freed. In growing order,
        # without onnxruntime's arena (RuntimeConfig.cpu_mem_arena), every call needed a new, larger block and
        # the server started at ~700 MiB instead of ~200.
        for rows in self.row_counts():
            calls = self._calls_for(rows)
            if run:  # one call per session (the state is the session's, not the binding's); not of the several
                for lane in (False, True):  # steps' sessions: K times as long, ~5 s for the shipped model
                    calls[1][lane][0]()

    def row_counts(self) -> list[int]:
        """Every number of rows a call of this batch runs (live rows padded up to ``runtime.min_batch``), largest
        first."""
        return sorted({self._rows_for(n) for n in range(1, self.capacity + 1)}, reverse=True)

    def prepared_call(self, rows: int, alone: bool) -> Callable[[], None]:
        """(while the batch is empty: for timing, service/tuning.py) The prepared decode call of ``rows`` rows, of
        ``decode_steps`` steps, on all threads (``alone``) or the calling thread's. (Not of the more steps a call
        of few rows runs: the timings compare ways to run one call, and those take twice as long to time.)"""
        k = self.runtime.decode_steps
        return self._calls_for(self._rows_for(rows), k)[k][not alone][0]

    def warm(self) -> None:
        """(in the thread that will step the batch, before its first step) Nothing to do for numpy buffers; see
        DeviceBatch.warm."""

    def _rows_for(self, n: int) -> int:
        """Rows a call runs for ``n`` live rows: ``n``, padded up to ``runtime.min_batch``."""
        return max(n, self.runtime.min_batch) if n else 0

    def _steps_of(self, rows: int) -> tuple[int, tuple[int, ...]]:
        """``steps`` and ``step_choices`` for calls of ``rows`` rows: the runtime's steps for them, then its
        ``decode_steps`` (a fallback where the characters may not wait for as many)."""
        rt = self.runtime
        choices = tuple(sorted({rt.steps_for(rows), rt.decode_steps} - {1}, reverse=True))
        return (choices[0] if choices else 1), choices

    def _calls_for(self, rows: int, *more: int) -> Calls:
        """(while the batch is empty) The calls of ``rows`` rows, as ``_prepared`` (which binds the current row
        count's)."""
        assert self.n == 0
        self._rows = rows
        try:
            return self._prepared(*more)
        finally:
            self._rows = 0

    def _prepared(self, *more: int) -> Calls:
        """The calls of the current row count, bound on first use: single steps, the first of its
        ``step_choices`` and the steps ``more`` (a fallback's: bound for every row count, ~5 MiB more a lane)."""
        calls = self._bound.setdefault(self._rows, {})
        for k in (1, *self._steps_of(self._rows)[1][:1], *more):
            if k not in calls:
                bind = self._bind if k == 1 else partial(self._bind_steps, k=k)
                calls[k] = ((bind(0, False), bind(1, False)), (bind(0, True), bind(1, True)))
        return calls

    def _views(self, which: int, rows: int, bufs: list[np.ndarray] | None = None) -> States:
        """Buffer set ``which`` (or ``bufs``) as contiguous [layers, rows, hidden] arrays."""
        r = self.runtime
        bufs = self._bufs[which] if bufs is None else bufs
        return tuple(b[: r.layers * rows * r.hidden].reshape(r.layers, rows, r.hidden) for b in bufs)

    def _bind(self, which: int, lane: bool) -> Callable[[], None]:
        """The call that reads buffer set ``which`` and writes the other."""
        rows, v = self._rows, self.runtime.vocab_size
        ids, next_ids, inv_t, states, new_states = self._io(which)
        logits = self._logits[: rows * v].reshape(rows, 1, v)
        u = self.uniforms[:rows].reshape(rows, 1)
        return self.runtime.bind_decoder(ids, states, logits, new_states, u, inv_t, next_ids, lane)

    def _bind_steps(self, which: int, lane: bool, k: int) -> Callable[[], None]:
        """The call of ``k`` steps that reads buffer set ``which`` and leaves the last step's in the other."""
        rows = self._rows
        ids, next_ids, inv_t, states, new_states = self._io(which)
        u, step_ids = self._step_uniforms[: rows * k].reshape(rows, k), self._step_ids[: rows * k].reshape(rows, k)
        between = [self._views(which, rows, bufs) for bufs in self._step_bufs[: k - 1]]
        return self.runtime.bind_steps(ids, states, new_states, between, u, inv_t, next_ids, step_ids, lane)

    def _io(self, which: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, States, States]:
        """What every call of the current row count reads from buffer set ``which`` and writes to the other:
        ids (rows, 1), the next ids (rows, 1), inverse temperatures (rows, 1), states, new states."""
        rows = self._rows
        ids, next_ids = (self._idsets[i][:rows].reshape(rows, 1) for i in (which, 1 - which))
        inv_t = self.inv_temperature[:rows].reshape(rows, 1)
        return ids, next_ids, inv_t, self._views(which, rows), self._views(1 - which, rows)
