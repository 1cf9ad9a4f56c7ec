"""What one engine step does to the streams of a lane: who is in its batch, prompts, and how streams end.

A model's engine has one or more lanes (service/engine.py), each with a batch of its own. The step loop of a
lane (service/lane.py) runs in a thread of its own (the "step thread"; onnxruntime releases the
GIL during a call, so the event loop serves the network meanwhile) and talks to the event loop only through
service/handoff.py. Each iteration (1) applies membership changes (streams that finished, paused or left;
streams ready to join), (2) runs one decode call for the whole batch (service/decoding.py), (3) feeds
one chunk of at most ``prefill_chunk`` characters to the streams still consuming their prompts (or fed
text), batched together, so that a long prompt never stalls the others for more than one chunk; a prompt's
last logits draw its first character. Characters are released to readers by a message budget, not per
character, and a stream with too many unread characters leaves the batch until its reader catches up, so a
slow reader costs the others nothing.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import onnxruntime as ort

from service.batch import Joiner
from service.config import EngineConfig
from service.device import new_batch
from service.handoff import Handoff
from service.prompts import consume
from service.runtime import Runtime
from service.sampling import BatchParams, by_head
from service.stream import Stream
from service.types import EngineObserver, FinishReason
from service.vocab import Vocab

log = logging.getLogger(__name__)


class Scheduler:
    """Membership, prompts and endings of one lane's streams (service/decoding.py adds the decode calls,
    service/lane.py the thread and its commands).

    Every method below runs in the step thread, except where noted.
    """

    def __init__(self, runtime: Runtime, vocab: Vocab, config: EngineConfig, model: str,
                 observer: EngineObserver | None, peers: list[Scheduler] | None = None) -> None:  # fmt: skip
        if len(vocab) != runtime.vocab_size:
            raise ValueError(f"{model}: vocabulary has {len(vocab)} characters, the model {runtime.vocab_size}")
        self.runtime, self.vocab, self.config, self.observer = runtime, vocab, config, observer
        self.model = model or runtime.model
        self._batch = new_batch(runtime, config.max_batch)
        self._rows: list[Stream] = []  # the streams of the batch rows, in row order
        self._rest = np.zeros(0, np.int64)  # rows the sampling head does not draw for (see _admit)
        self._params = BatchParams.of([])  # of the rows in _rest
        self._sampled_rows = np.zeros(0, np.int64)  # rows that draw a uniform each step (temperature > 0)
        self._sampled: list[Stream] = []  # their streams
        self._arange = np.arange(self._batch.capacity)
        self._want_logprobs = False
        self._track_seen = False  # some row has a repetition penalty: keep the rows' seen-masks current
        self._prefilling: list[Stream] = []
        self._ready: deque[Stream] = deque()
        self._paused: set[Stream] = set()  # out of the batch until their readers catch up
        self._dirty = False  # batch membership must be rebuilt before the next step
        self._active = 0  # generate requests held (event loop side)
        self._handoff = Handoff()
        # all the model's lanes, this one included (read across threads: only whether they hold work), its index
        self._peers = peers if peers is not None else []
        self._index = len(self._peers)
        self._peers.append(self)
        self._own_prompts: ort.InferenceSession | None = None  # see prepare_prompts
        # the model's release ticks count from its first lane's start (see _release_tick)
        self._origin: float = self._peers[0]._origin if len(self._peers) > 1 else time.perf_counter()

    def _enqueue(self, s: Stream) -> None:
        """Queue a stream for a batch row."""
        s.where = "ready"
        self._paused.discard(s)
        self._ready.append(s)
        self._dirty = True

    def _end(self, s: Stream, reason: FinishReason | None, stop: str = "") -> None:
        """The one place a stream of the lane becomes done (its state is consistent by then)."""
        s.end(reason, stop)
        self._paused.discard(s)
        if s.buf:
            self._handoff.post(s.on_chunk, s.release())
        self._handoff.post(self._ended, s)

    def _ended(self, s: Stream) -> None:
        """(event loop) A stream is done: tell its consumer, count it out."""
        if not s.score:
            self._active -= 1
        s.on_done()

    def _held(self) -> list[Stream]:
        """Every stream the lane holds that has not ended: in its batch, prefilling, ready or paused."""
        return [s for s in (*self._rows, *self._prefilling, *self._ready, *self._paused) if s.where != "done"]

    def _request_ids(self) -> str:
        """The request ids of the streams the lane holds, for a log line (service/logs.py: REQUEST_ID)."""
        return ",".join(s.request_id or "-" for s in self._held()) or "none"

    def _fail_all(self, error: BaseException) -> None:
        """End every stream the loop holds with ``error`` (the engine is closing, or a step failed)."""
        for i, s in enumerate(self._rows):
            if s.where == "batch":  # a failed call swapped no buffers: rows still hold consistent states
                try:
                    self._save_row(s, i)
                except Exception:  # the batch itself is broken: the stream still ends (its state as it joined)
                    log.exception("%s: a row's state could not be saved (request %s)", self.model, s.request_id)
        for s in self._held():  # (ending one changes no other's `where`)
            s.error = error
            self._end(s, None)
        self._rows, self._prefilling = [], []
        self._ready.clear()
        self._paused.clear()
        self._batch.rebuild([], [])
        self._dirty = False

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
            if s.abandoned:  # (its consumer went away while it moved here from another lane: Lane._abandon)
                self._end(s, None)
                continue
            assert s.state.pending is not None
            s.where = "batch"
            joining.append(Joiner(s.state.arrays, s.state.pending, s.seen))
            rows.append(s)
        b.rebuild(keep, joining)
        self._rows = rows
        head = [by_head(s.sampling) for s in rows]
        self._rest = np.flatnonzero(~np.array(head, bool))
        self._params = BatchParams.of([rows[i].sampling for i in self._rest])
        inv_t = [1 / s.sampling.temperature if h else 1 for s, h in zip(rows, head, strict=True)]
        b.inv_temperature[: len(rows)] = inv_t
        self._sampled_rows = np.flatnonzero([s.sampling.temperature > 0 for s in rows])
        self._sampled = [rows[i] for i in self._sampled_rows]
        self._want_logprobs = any(s.lps is not None for s in rows)
        self._track_seen = any(s.sampling.repetition_penalty != 1.0 for s in rows)

    def _save_row(self, s: Stream, row: int, step: int = 0) -> None:
        """Copy a row's state out of the batch into the stream's SeqState (its next id is the pending one);
        ``step`` 1..K-1: as it was after that step of the latest several steps' call."""
        b = self._batch
        s.state.arrays = b.row_state(row, step)
        s.state.pending = int(b.step_ids[row, step - 1] if 0 < step < b.steps else b.ids[row])
        s.seen = b.seen[row].copy()

    def _hold(self) -> float:
        """How long a stream's characters may wait to be released (the message budget over the batch)."""
        rate = self.config.messages_per_s  # the model's, over the rows of all its lanes
        return self._model_rows() / rate if rate > 0 else 0.0

    def _release_tick(self, now: float, hold: float) -> float:
        """The model's latest release tick at or before ``now``; a stream last released before it is due.

        Ticks come every ``hold`` seconds on one clock for all the model's lanes, so a batch's streams are
        released in the same call and their messages leave together: gRPC then costs about half the CPU a
        message, in the server and in its clients alike, of messages spread over time (~80-90 against
        ~200 µs each at 1,000 messages/s; ``python -m bench.transport --paced``, docs/performance.md).
        """
        return now - (now - self._origin) % hold if hold > 0 else now

    def _model_rows(self) -> int:
        """Rows in the decode batches of all the model's lanes."""
        return sum(p._batch.n for p in self._peers)

    def prepare_prompts(self) -> None:
        """(before start) A prompt-call session of this lane's own when the model has other lanes (CPU)."""
        if len(self._peers) > 1:
            self._own_prompts = self.runtime.lane_prompts()

    def _prompt_session(self) -> ort.InferenceSession | None:
        """Where the next prompt call runs: on all of onnxruntime's threads (None) while no other lane holds
        work, else on this lane's thread alone, as decode calls side by side do. Two lanes' prompt calls on
        the shared threads would wait for each other, and for a core: in a burst of 64 streams on 2 cores, a
        call of 15 prompts of 16 characters took 10 ms, where 16 take 2.8 ms alone (docs/performance-history.md,
        "A burst of new streams")."""
        others = (p for p in self._peers if p is not self)
        if self._own_prompts is None or not any(p._batch.n or p._prefilling or p._ready for p in others):
            return None
        return self._own_prompts

    def _first_seen(self, s: Stream, now: float) -> None:
        """A stream's first character, released at once: its clocks (its next release is at the next tick)."""
        s.t_first = s.t_wake = now
        if self.observer is not None:
            self.observer.first_char(self.model, now - s.t0)

    def _leave(self, s: Stream, row: int, reason: FinishReason | None, stop: str = "", step: int = 0) -> None:
        """Take a row out of the batch after this step (``step``: see _save_row): finished (reason given) or
        paused (None)."""
        self._save_row(s, row, step)
        self._dirty = True
        if reason is None:
            s.where = "paused"
            self._paused.add(s)
            if s.buf:
                self._handoff.post(s.on_chunk, s.release())
            self._handoff.post(s.on_pause)
        else:
            self._end(s, reason, stop)

    def _prefill(self) -> None:
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
            group = group[: max(1, self.config.prefill_chars // n)]  # the rest go in the next call
            logits = consume(self.runtime, group, n, self._prompt_session())  # (P, n, V)
            for i, s in enumerate(group):
                if s.score:
                    s.score_chunk(logits[i], n)
                s.done += n
                if s.remaining:
                    s.state.pending = int(s.todo[s.done])
                elif s.score:
                    s.state.pending = s.pending_after
                    self._end(s, None)
                else:
                    self._first_char(s, logits[i, n - 1])
        self._prefilling = [s for s in self._prefilling if s.where == "prefill"]

    def _first_char(self, s: Stream, logits: np.ndarray) -> None:
        """A prompt is consumed: its last logits (V,) draw the first character, with no decode step."""
        reason = s.first_char(logits, self.vocab.chars)
        self._first_seen(s, time.perf_counter())
        if self.observer is not None:
            self.observer.chars(self.model, 1)
        if reason is not None:
            self._end(s, reason, s.stop_sequence)
        else:
            self._handoff.post(s.on_chunk, s.release())
            self._enqueue(s)
