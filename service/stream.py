"""One request inside the engine: what it still has to consume, its output buffer, its place in the batch.

A stream lives on both sides of service/handoff.py: the step thread owns its progress (``where``, the
buffer of characters not yet released, the state), the event loop owns what was released to the reader
(``out``, ``taken``, ``finished``). Each side writes only its own fields; the step thread tells the loop
through events (``on_chunk``, ``on_pause``, ``on_done``), the loop tells the step thread through commands.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from service.logs import REQUEST_ID
from service.sampling import BatchParams, by_head, draw_one, effective, log_softmax, sample
from service.types import Chunk, Finish, FinishReason, GenerateParams, Sampling, SeqState

Where = Literal["prefill", "ready", "batch", "moving", "paused", "done"]

# Uniforms drawn from a stream's rng at once. Refilling a block (the generator's state saved, one numpy call) was
# most of a lane's per-call Python for uniforms with 64: 256 took that part of a 32-row call from a median of ~75
# to ~55 µs, in-process (docs/performance-history.md, "Lanes that run dry, and the step thread's Python"); a list
# of 256 floats is ~8 KB a stream.
UNIFORM_BLOCK = 256


class Holder(Protocol):
    """What holds a stream's row (a lane, service/lane.py): the engine hands the stream over through it."""

    def accept(self, s: Stream) -> None: ...
    def resume(self, s: Stream) -> None: ...
    def abandon(self, s: Stream) -> None: ...


class Stream:
    """A generate or feed request: its state, its prompt still to feed, and the characters not yet read.

    Lifecycle: "prefill" (sequence calls over ``todo``) -> "ready" (waiting for a batch row) -> "batch"
    (one character per engine step) <-> "paused" (too many unread characters until the reader catches up)
    -> "done"; "batch" -> "moving" -> "ready" when its lane gives the row to a peer that ran dry (Lane._give).
    A feed request is done when its prefill is.
    """

    def __init__(
        self,
        state: SeqState,
        todo: np.ndarray,
        pending_after: int | None,
        params: GenerateParams | None,
        cancel: asyncio.Event | None,
        vocab_size: int,
        score: bool = False,
    ) -> None:
        self.state = state
        self.todo = todo  # (N,) ids to feed: the state's pending id, then the prompt but its last char
        self.done = 0  # how many of todo are fed
        self.pending_after = pending_after  # the state's pending id once todo is fed
        self.params = params if params is not None else GenerateParams()
        self.sampling: Sampling = effective(self.params.sampling)
        self.max_chars = self.params.max_chars
        self.cancel = cancel
        self.request_id = REQUEST_ID.get()  # the RPC's (service/logs.py), for what the step thread logs of it
        # ---- the step thread's (after submission)
        self.where: Where = "prefill" if todo.size else "ready"
        self.score = score  # a feed request: score the fed text, generate nothing
        self.prompt_chars = 0
        self.text_chars = 0  # the request's new text (prompt or fed text): counted into the state as consumed
        self.abandoned = False  # the consumer went away
        self.error: BaseException | None = None  # set before on_done
        self.seen = np.zeros(vocab_size, bool)  # characters of this request, for the repetition penalty
        # feed scoring
        self.nll = 0.0
        self.scored = 0
        # output not yet released to the reader
        self.buf: list[str] = []  # characters, or several steps' characters at once
        self.lps: list[float] | None = [] if self.params.logprobs else None
        self.sent = 0  # characters released (posted to the loop)
        self.generated = 0
        self.finish_reason: FinishReason | None = None
        self.stop_sequence = ""
        self._tail = ""
        self.has_stops = bool(self.params.stop)
        self._stop_keep = max((len(s) for s in self.params.stop), default=1) - 1  # tail chars kept between steps
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.t_wake = 0.0  # when the engine last released characters
        self.t_end: float | None = None
        # the rng is read in blocks; `sync_rng` rewinds it to exactly the draws used
        self._ublock: list[float] = []
        self._uk = 0
        self._usaved: Mapping[str, Any] | None = None
        self._useed = False  # the open block starts with the state's seed draw
        # ---- the event loop's
        self.out: deque[Chunk] = deque()  # released chunks the reader has not taken
        self.taken = 0  # characters the reader took (read by the step thread for flow control)
        self.paused = False  # the step thread paused the stream; the reader resumes it once caught up
        self.finished = False  # on_done ran: the stream's results and state are final
        self.waiter: asyncio.Future[Any] | None = None
        self.lane: Holder | None = None  # the lane that holds it (set by the engine; changed by Lane._moved)

    @property
    def remaining(self) -> int:
        """Ids of ``todo`` not fed yet."""
        return int(self.todo.size) - self.done

    def next_uniform(self) -> float:
        """The stream's next uniform in [0, 1), from its own rng."""
        if self._uk == len(self._ublock):
            self._new_block()
        u = self._ublock[self._uk]
        self._uk += 1
        return u

    def next_uniforms(self, k: int) -> list[float]:
        """The stream's next ``k`` uniforms (k <= UNIFORM_BLOCK), as ``k`` calls of ``next_uniform`` would give."""
        if self._uk + k > len(self._ublock):
            self._new_block()
        u = self._ublock[self._uk : self._uk + k]
        self._uk += k
        return u

    def unuse_uniforms(self, k: int) -> None:
        """Give back the latest ``k`` uniforms (drawn for steps whose characters were not kept)."""
        self._uk -= k

    def _new_block(self) -> None:
        """Draw the next UNIFORM_BLOCK uniforms at once (the rng is rewound to those used by ``sync_rng``); the
        state's seed draw first while it is unused (SeqState.first_uniform)."""
        self.sync_rng()
        st = self.state
        self._useed = st.seed_draw_next
        head = [st.first_uniform()] if self._useed else []
        self._usaved = st.rng.bit_generator.state
        self._ublock = head + st.rng.random(UNIFORM_BLOCK - len(head)).tolist()

    def _first_uniform(self) -> float:
        """The first character's uniform: the state's own while no block is open (saving and restoring the
        generator's state for a block cost a cold request ~30 µs on its way to the first character)."""
        return self.state.first_uniform() if self._usaved is None else self.next_uniform()

    def sync_rng(self) -> None:
        """Leave the rng exactly after the uniforms used, as if they had been drawn one at a time."""
        if self._usaved is not None:
            st, used = self.state, self._uk
            if self._useed:  # the block opened with the seed's draw: unused if no uniform of the block was
                st.seed_drawn, used = used > 0, max(used - 1, 0)
            # A block used to its end (as calls of 8 steps use it) leaves the rng where it is already: skipping
            # the rewind takes a stream's uniforms from 0.31 to 0.20 µs a character (in-process, 8 at a time)
            if used < len(self._ublock) - self._useed:
                st.rng.bit_generator.state = self._usaved
                st.rng.random(used)
        self._usaved, self._ublock, self._uk, self._useed = None, [], 0, False

    def first_char(self, logits: np.ndarray, chars: Sequence[str]) -> FinishReason | None:
        """A prompt is consumed: draw the first character from its last logits (V,) into the buffer; the
        stream's finish when that character ends it ("stop" or "length"), else None."""
        sampling = self.sampling
        if by_head(sampling):  # the common case, without the batch machinery (~10 µs instead of ~100)
            k = draw_one(logits, sampling.temperature, self._first_uniform())
        else:
            u = np.array([self._first_uniform() if sampling.temperature > 0 else 0.0])
            k = int(sample(logits[None], BatchParams.of([sampling]), u, self.seen[None])[0])
        self.seen[k] = True
        self.state.pending = k
        if self.lps is not None:
            self.lps.append(float(log_softmax(logits)[k]))
        self.buf.append(chars[k])
        self.generated = 1
        if self.has_stops and (stop := self.match_stop(chars[k])) is not None:
            self.stop_sequence = stop
            return "stop"
        return "length" if self.max_chars <= 1 else None

    def end(self, reason: FinishReason | None, stop: str = "") -> None:
        """Done (finished when ``reason`` is given, else failed or abandoned): its results and state are final."""
        self.where, self.finish_reason, self.stop_sequence = "done", reason, stop
        self.t_end = time.perf_counter()
        self.sync_rng()
        self.state.chars_consumed += self._text_consumed() + self.generated

    def _text_consumed(self) -> int:
        """Characters of the new text the state has consumed: all once its prefill is done; after a consumer
        went away mid-text, those fed so far and the pending one."""
        if self.done >= self.todo.size:
            return self.text_chars
        if self.done == 0:
            return 0
        # todo is the state's pending id (if any), then the text (a feed's without its last character)
        head = self.todo.size - self.text_chars + (1 if self.score else 0)
        return self.done + 1 - head

    def match_stop(self, char: str) -> str | None:
        """Append ``char`` to the output tail; the stop sequence the output now ends with, if any."""
        tail = self._tail + char
        for s in self.params.stop:
            if tail.endswith(s):
                return s
        self._tail = tail[-self._stop_keep :] if self._stop_keep > 0 else ""
        return None

    def score_chunk(self, logits: np.ndarray, n: int) -> None:
        """(step thread) Add the NLL of the ids that follow the ``n`` fed from ``done`` on (logits (n, V))."""
        nxt = self.todo[self.done + 1 : self.done + n + 1]
        if self.done + n >= self.todo.size:  # the last fed id is followed by the text's last character
            nxt = np.append(nxt, np.int64(self.pending_after or 0))
        self.nll -= float(log_softmax(logits)[np.arange(n), nxt].sum())
        self.scored += n

    def release(self) -> Chunk:
        """(step thread) Everything buffered as one chunk (coalesced characters); the buffer restarts."""
        chunk = Chunk("".join(self.buf), self.lps)
        self.sent += len(chunk.text)
        self.buf = []
        if self.lps is not None:
            self.lps = []
        return chunk

    def unread(self) -> int:
        """(step thread) Characters generated that the reader has not taken yet."""
        return self.generated - self.taken

    # ------------------------------------------------------------------ event loop side

    def on_chunk(self, chunk: Chunk) -> None:
        """A chunk was released."""
        self.out.append(chunk)
        self._notify()

    def on_pause(self) -> None:
        """The step thread took the stream out of the batch until its reader catches up."""
        self.paused = True
        self._notify()

    def on_done(self) -> None:
        """The stream ended (finished, failed or abandoned); every chunk was released before this."""
        self.finished = True
        self._notify()

    def take(self) -> Chunk:
        """Every released chunk not yet taken, as one (a reader that fell behind gets one message)."""
        out = self.out
        chunk = out.popleft()
        if out:
            chunks = [chunk, *out]
            out.clear()
            lps = None if chunk.logprobs is None else [lp for c in chunks for lp in c.logprobs or ()]
            chunk = Chunk("".join(c.text for c in chunks), lps)
        self.taken += len(chunk.text)
        return chunk

    def finish_record(self) -> Finish:
        """The Finish record of a done stream."""
        end = self.t_end if self.t_end is not None else time.perf_counter()
        return Finish(
            reason=self.finish_reason or "cancelled",
            stop_sequence=self.stop_sequence,
            prompt_chars=self.prompt_chars,
            generated_chars=self.generated,
            time_to_first_char_ms=(self.t_first - self.t0) * 1e3 if self.t_first is not None else 0.0,
            total_ms=(end - self.t0) * 1e3,
            seed=self.state.seed or 0,
        )

    def _notify(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        """Wait for the next event from the step thread."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
