"""The step loop behind an Engine: one onnxruntime call per step advances every decoding stream of a model.

Each iteration (1) applies membership changes (streams that finished, paused or left; streams ready to
join), (2) runs one decode step for the whole batch, ids (B, 1), and samples every row at once, (3) feeds
one chunk of at most ``prefill_chunk`` characters to the streams still consuming their prompts (or fed
text), batched together, so that a long prompt never stalls the others for more than one chunk. Consumers
are woken per chunk, not per character: characters pile up in each stream's buffer while its reader is
busy, and a stream whose buffer is full leaves the batch until its reader catches up, so a slow reader
costs the others nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from service.batch import DecodeBatch, Joiner
from service.offload import Offload
from service.runtime import Runtime
from service.sampling import BatchParams, log_softmax, sample
from service.stream import Stream
from service.types import EngineObserver, FinishReason
from service.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How one model's engine batches."""

    max_batch: int = 256  # decode rows per step; further streams wait for a free row
    prefill_chunk: int = 256  # characters per sequence call when consuming prompts and fed text
    stream_buffer_chars: int = 4096  # unread characters per stream before it stops being stepped
    # Calls expected to take longer than thread_above_us run in a worker thread, the others inline (see
    # service/offload.py): the hand-off costs ~100-300 µs on 2 busy cores, more than a step of up to ~16
    # rows of the shipped model is worth (docs/performance.md); but blocking the loop for long calls would
    # starve the network (new streams wait). run_in_thread=False keeps every call in the loop thread;
    # thread_above_us=0 sends every call to the thread.
    run_in_thread: bool = True
    thread_above_us: float = 500.0
    # Consumers are woken (and so messages sent) about messages_per_s times a second at most, over all the
    # decoding streams: with n streams in the batch, a stream's characters wait up to n / messages_per_s
    # seconds and leave together. A message costs ~50-100 µs of CPU (server and client together), a
    # character at batch 64 ~21 µs of engine CPU, so a message per character would cost several times the
    # engine (docs/performance.md). A stream's first character leaves at once. 0 = wake every stream at
    # every step.
    messages_per_s: float = 2000.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "prefill_chunk", "stream_buffer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("thread_above_us", "messages_per_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


class Scheduler:
    """The streams of one model and the loop that steps them (Engine adds the request API on top)."""

    def __init__(self, runtime: Runtime, vocab: Vocab, config: EngineConfig, model: str,
                 observer: EngineObserver | None) -> None:  # fmt: skip
        if len(vocab) != runtime.vocab_size:
            raise ValueError(f"{model}: vocabulary has {len(vocab)} characters, the model {runtime.vocab_size}")
        self.runtime, self.vocab, self.config, self.observer = runtime, vocab, config, observer
        self.model = model or runtime.model
        self._batch = DecodeBatch(runtime, config.max_batch)
        self._rows: list[Stream] = []  # the streams of the batch rows, in row order
        self._params = BatchParams.of([])
        self._sampled: list[tuple[int, Stream]] = []  # rows that draw a uniform each step
        self._uniforms = np.zeros(self._batch.capacity)
        self._arange = np.arange(self._batch.capacity)
        self._want_logprobs = False
        self._prefilling: list[Stream] = []
        self._ready: deque[Stream] = deque()
        self._paused: set[Stream] = set()  # out of the batch until their readers catch up
        self._dirty = False  # batch membership must be rebuilt before the next step
        self._active = 0
        self._kick = asyncio.Event()
        self._offload = Offload(config.run_in_thread, config.thread_above_us)
        self._phase = 0.0  # of the latest stream's wake-ups (see _deliver)

    def _enqueue(self, s: Stream) -> None:
        """Queue a stream for a batch row."""
        s.where = "ready"
        self._paused.discard(s)
        self._ready.append(s)
        self._dirty = True
        self._kick.set()

    def _abandon(self, s: Stream) -> None:
        """The consumer went away: a batch row is freed at the next step; elsewhere the stream ends now."""
        s.abandoned = True
        if s.where == "batch":
            self._dirty = True
            self._kick.set()
        elif s.where != "done":
            self._end(s, None)

    def _end(self, s: Stream, reason: FinishReason | None, stop: str = "") -> None:
        """The one place a stream becomes done (its state is consistent by then)."""
        s.where, s.finish_reason, s.stop_sequence = "done", reason, stop
        self._paused.discard(s)
        s.t_end = time.perf_counter()
        s.sync_rng()
        s.state.chars_consumed += s.generated
        if not s.score:
            self._active -= 1
        s.wake()

    def _fail_all(self, error: BaseException) -> None:
        """End every stream the loop holds with ``error`` (the engine is closing, or a step failed)."""
        for i, s in enumerate(self._rows):
            if s.where == "batch":  # a failed call swapped no buffers: rows still hold consistent states
                self._save_row(s, i)
        for s in [*self._rows, *self._prefilling, *self._ready, *self._paused]:
            if s.where != "done":
                s.error = error
                self._end(s, None)
        self._rows, self._prefilling = [], []
        self._ready.clear()
        self._paused.clear()
        self._batch.rebuild([], [])
        self._dirty = False

    async def _loop(self) -> None:
        """Admit, decode, prefill; forever."""
        while True:
            if not (self._rows or self._prefilling or self._ready or self._dirty):
                self._kick.clear()
                await self._kick.wait()
            try:
                self._admit()
                if self._batch.n:
                    await self._decode()
                if self._prefilling:
                    await self._prefill()
            except Exception as e:  # a failed step fails its streams, never the loop
                log.exception("%s: engine step failed", self.model)
                self._fail_all(e)
            if not self._offload.yielded:
                await asyncio.sleep(0)  # let consumers and the network run between steps
            self._offload.yielded = False

    def _admit(self) -> None:
        """Rebuild the batch: drop rows that left, save abandoned ones' states, add ready streams."""
        if not self._dirty:
            return
        self._dirty = False
        b = self._batch
        keep: list[int] = []
        rows: list[Stream] = []
        for i, s in enumerate(self._rows):
            if s.where != "batch":  # finished or paused while stepping: state already saved
                continue
            if s.abandoned:
                self._save_row(s, i)
                self._end(s, None)
                continue
            keep.append(i)
            rows.append(s)
        joining: list[Joiner] = []
        while self._ready and len(rows) < self.config.max_batch:
            s = self._ready.popleft()
            if s.where != "ready":
                continue
            if s.cancel is not None and s.cancel.is_set():
                self._end(s, "cancelled")
                continue
            assert s.state.pending is not None
            s.where = "batch"
            joining.append(Joiner(s.state.arrays, s.state.pending, s.seen))
            rows.append(s)
        b.rebuild(keep, joining)
        self._rows = rows
        self._params = BatchParams.of([s.sampling for s in rows])
        self._sampled = [(i, s) for i, s in enumerate(rows) if s.sampling.temperature > 0]
        self._want_logprobs = any(s.lps is not None for s in rows)

    def _save_row(self, s: Stream, row: int) -> None:
        """Copy a row's state out of the batch into the stream's SeqState (its next id is the pending one)."""
        b = self._batch
        s.state.arrays = b.row_state(row)
        s.state.pending = int(b.ids[row])
        s.seen = b.seen[row].copy()

    async def _decode(self) -> None:
        """One step of the whole batch: feed every row's pending id, sample every row's next id."""
        b, n = self._batch, self._batch.n
        call = self._offload.launch("decode", b.step)
        u = self._uniforms  # drawn while a threaded step runs (onnxruntime releases the GIL)
        for i, s in self._sampled:
            u[i] = s.next_uniform()
        logits, dt = await self._offload.finish("decode", call)  # (n, V)
        ids = sample(logits, self._params, u[:n], b.seen[:n])  # (n,)
        b.ids[:] = ids
        b.seen[self._arange[:n], ids] = True
        lps = log_softmax(logits)[self._arange[:n], ids].tolist() if self._want_logprobs else None
        self._deliver(ids.tolist(), lps)
        if self.observer is not None:
            self.observer.step(self.model, n, dt)
            self.observer.chars(self.model, n)

    def _deliver(self, ids: list[int], lps: list[float] | None) -> None:
        """Append each row's character to its stream; finish, pause or wake streams as needed."""
        chars, cap, now = self.vocab.chars, self.config.stream_buffer_chars, time.perf_counter()
        rate = self.config.messages_per_s
        hold = len(self._rows) / rate if rate > 0 else 0.0  # how long a stream's characters may wait
        due = now - hold  # streams last woken at or before `due` are woken
        if lps is not None:
            for s, lp in zip(self._rows, lps, strict=True):
                if s.lps is not None:
                    s.lps.append(lp)
        # This loop runs for every row at every step: plain locals, one attribute per fact (~0.5 µs a row).
        for i, (s, k) in enumerate(zip(self._rows, ids, strict=True)):
            c = chars[k]
            buf = s.buf
            buf.append(c)
            s.generated = generated = s.generated + 1
            first = s.t_first is None
            if first:
                s.t_first = now
                if self.observer is not None:
                    self.observer.first_char(self.model, now - s.t0)
            if s.has_stops and (stop := s.match_stop(c)) is not None:
                self._leave(s, i, "stop", stop)
            elif generated >= s.max_chars:
                self._leave(s, i, "length")
            elif s.cancel is not None and s.cancel.is_set():
                self._leave(s, i, "cancelled")
            elif len(buf) >= cap:
                self._leave(s, i, None)
            elif first or s.t_wake <= due:
                # A first character leaves at once and gives the stream a phase of its own, so that streams
                # that started together send in different steps: a burst of messages would stall the next step.
                s.t_wake = now - self._next_phase() * hold if first else now
                s.wake()

    def _next_phase(self) -> float:
        """The next of a low-discrepancy sequence in [0, 1) (golden-ratio steps): evenly spread phases."""
        self._phase = (self._phase + 0.6180339887498949) % 1.0
        return self._phase

    def _leave(self, s: Stream, row: int, reason: FinishReason | None, stop: str = "") -> None:
        """Take a row out of the batch after this step: finished (reason given) or paused (None)."""
        self._save_row(s, row)
        self._dirty = True
        if reason is None:
            s.where = "paused"
            self._paused.add(s)
            s.wake()
        else:
            self._end(s, reason, stop)

    async def _prefill(self) -> None:
        """Feed one chunk to every stream still consuming text, as one (P, L) sequence call."""
        group: list[Stream] = []
        for s in self._prefilling:
            if s.where != "prefill":
                continue
            if s.cancel is not None and s.cancel.is_set():
                self._end(s, "cancelled")
            elif len(group) < self.config.max_batch:
                group.append(s)
        # The shortest remaining text sets the chunk: everyone advances together and short prompts finish first.
        n = min(self.config.prefill_chunk, *(s.remaining for s in group)) if group else 0
        if n:
            ids = np.stack([s.todo[s.done : s.done + n] for s in group])  # (P, n)
            per_tensor = zip(*(s.state.arrays for s in group), strict=True)
            states = tuple(np.stack(a, axis=1) for a in per_tensor)  # each (layers, P, H)
            call = self._offload.launch("prefill", self.runtime.run, ids, states)
            (logits, new), _ = await self._offload.finish("prefill", call)  # logits (P, n, V)
            for i, s in enumerate(group):
                if s.where != "prefill":  # abandoned during the call: its state stays as it was
                    continue
                if s.score:
                    self._score(s, logits[i], n)
                s.state.arrays = tuple(np.ascontiguousarray(a[:, i]) for a in new)
                s.done += n
                s.state.pending = int(s.todo[s.done]) if s.remaining else s.pending_after
                if not s.remaining and s.score:
                    self._end(s, None)
                elif not s.remaining:
                    self._enqueue(s)
        self._prefilling = [s for s in self._prefilling if s.where == "prefill"]

    @staticmethod
    def _score(s: Stream, logits: np.ndarray, n: int) -> None:
        """Add the NLL of the ids that follow the ``n`` fed ones (logits (n, V))."""
        nxt = np.append(s.todo[s.done + 1 : s.done + n + 1], [] if s.done + n < s.todo.size else [s.pending_after])
        s.nll -= float(log_softmax(logits)[np.arange(n), nxt.astype(np.int64)].sum())
        s.scored += n
