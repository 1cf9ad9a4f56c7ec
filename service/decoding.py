"""The decode call of a lane: one onnxruntime call advances every stream of the batch by one step, or by K.

The call's sampling head (service/sampling_head.py) draws the plain rows' next ids inside it; rows with
greedy, truncated or penalised sampling are drawn here from its logits. When every row is drawn by the head,
the call may run K chained steps instead (service/multistep.py): the Python of a step (uniforms, handing out
characters, waking the event loop) then runs once per K steps: on 2 busy cores the server served 1.2x more
characters at 64 streams, 1.1x at 256, with 10-20% less CPU, and one stream 1.5x more (docs/performance.md).
K is 16 for a lane of at most 64 rows, 8 above (RuntimeConfig.few_rows_steps): 64 streams ~3 points nearer the raw
engine, where a lane's 32 rows spent ~7% of its time in that Python; past 64 rows a call of 16 steps is slower.
A device batch (CUDA) runs 16 or 8 at any rows (RuntimeConfig.device_steps).
A stream's text is the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.sampling import log_softmax, sample
from service.scheduler import Scheduler
from service.stream import Stream


class Decoding(Scheduler):
    """A lane's decode calls and the delivery of their characters (in the step thread)."""

    _step_s = 0.0  # seconds per decode step, as the latest decode call took

    def _steps(self) -> int:
        """Steps the next decode call runs: 1, or K when every row is drawn by the sampling head, no prompt
        waits for its first character, characters may wait for release at all, and K - 1 steps (what the
        call holds its first character back) take at most the longer of half that wait and ``steps_wait_ms``:
        the most of the batch's ``step_choices`` that do (16 for a lane of up to 64 rows or a device batch, else 8:
        Runtime.steps_for).
        """
        hold = self._hold()
        if self._rest.size or self._want_logprobs or self._prefilling or hold == 0.0:
            return 1
        return steps_within(self._batch.step_choices, self._step_s, max(hold / 2, self.config.steps_wait_ms / 1e3))

    def _decode(self) -> None:
        """One decode call of the whole batch: feed every row's pending id, draw its next one (or K)."""
        b, n, k = self._batch, self._batch.n, self._steps()
        # Alone: the only lane with rows may use all of onnxruntime's threads; lanes side by side use one each.
        alone = self._model_rows() == n and n >= self.config.all_threads_rows
        if k > 1:
            # each row's K draws, in the order K single steps would take them; one numpy conversion for the batch
            b.use_steps(k)
            b.step_uniforms[...] = [s.next_uniforms(k) for s in self._rows]
            start = time.perf_counter()
            ids = b.steps_call(alone)  # (n, K)
            dt = time.perf_counter() - start
            kept = self._deliver(self.vocab.texts(ids), k)
        else:
            u = b.uniforms
            u[self._sampled_rows] = [s.next_uniform() for s in self._sampled]  # one numpy call, not one per row
            start = time.perf_counter()
            logits = b.step(alone)  # (n, V); b.ids now holds the head's draws, to be fed by the next step
            dt = time.perf_counter() - start
            ids, rest = b.ids, self._rest
            if rest.size:  # greedy, truncated or penalised rows: drawn here from the logits instead
                ids[rest] = sample(logits[rest], self._params, u[rest], b.seen[rest])
            if self._track_seen:
                b.seen[self._arange[:n], ids] = True
            if self._want_logprobs:
                for s, lp in zip(self._rows, log_softmax(logits)[self._arange[:n], ids].tolist(), strict=True):
                    if s.lps is not None:
                        s.lps.append(lp)
            chars = self.vocab.chars
            kept = self._deliver([chars[i] for i in ids.tolist()], 1)
        self._step_s = dt / k
        if self.observer is not None:
            self.observer.step(self.model, n, dt / k, k)
            self.observer.chars(self.model, kept)

    def _deliver(self, texts: list[str], k: int) -> int:
        """Hand each row its ``k`` new characters; finish, pause or wake streams as needed. A row keeps them up
        to its length, its stop sequence or a full buffer, whichever comes first; one that leaves keeps its
        state after the step of its last character kept. Returns the characters kept."""
        post, chunk_event, cap = self._handoff.post, Stream.on_chunk, self.config.stream_buffer_chars
        now, hold = time.perf_counter(), self._hold()
        due, kept = self._release_tick(now, hold), 0  # streams last released at or before `due` are released
        # This loop runs for every row at every call: plain locals, one attribute per fact (~1 µs a row).
        for i, (s, text) in enumerate(zip(self._rows, texts, strict=True)):
            first = s.t_first is None
            if first:
                self._first_seen(s, now)
            end, stop = min(k, s.max_chars - s.generated, cap - s.generated + s.taken), None  # (all >= 1 here)
            if s.has_stops:
                for m, c in enumerate(text[:end], 1):
                    if (stop := s.match_stop(c)) is not None:
                        end = m
                        break
            step = 0  # the row's state is the batch's (after all k steps)
            if end < k:
                text, step = text[:end], end
                s.unuse_uniforms(k - end)  # the steps not kept: the rng is left as single steps leave it
            s.buf.append(text)
            s.generated = generated = s.generated + end
            kept += end
            if stop is not None:
                self._leave(s, i, "stop", stop, step)
            elif generated >= s.max_chars:
                self._leave(s, i, "length", step=step)
            elif s.cancel is not None and s.cancel.is_set():
                self._leave(s, i, "cancelled", step=step)
            elif generated - s.taken >= cap:  # (s.unread(), inline: this loop is hot)
                self._leave(s, i, None, step=step)
            elif first or s.t_wake <= due:  # (a first character leaves at once)
                if not first:
                    s.t_wake = now
                post(chunk_event, s, s.release())
        return kept


def steps_within(choices: Sequence[int], step_s: float, wait_s: float) -> int:
    """The most steps of ``choices`` (largest first) whose first K - 1, at ``step_s`` each, take at most ``wait_s``
    (what a call of K steps holds its first character back); 1 when none do."""
    return next((k for k in choices if (k - 1) * step_s <= wait_s), 1)
