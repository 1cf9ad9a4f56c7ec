"""Continuous batching engine: one per model version; generate and feed requests share its step loop.

The loop itself (membership, one decode call per step for every stream, chunked prefill, buffers that
coalesce characters) is in service/scheduler.py and runs in a thread of its own; this module is the request
API on top of it, on the event loop's side of service/handoff.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator

import numpy as np

from service.config import EngineConfig
from service.errors import InvalidArgument, Unavailable
from service.runtime import Runtime
from service.sampling import validate
from service.scheduler import Scheduler
from service.stream import Stream
from service.types import Chunk, EngineObserver, FeedResult, Finish, GenerateParams, SeqState
from service.vocab import Vocab

__all__ = ["Engine", "EngineConfig", "Vocab"]
log = logging.getLogger(__name__)
DEFAULT_CONFIG = EngineConfig()


class Engine(Scheduler):
    """Serves one model version (call every method from the event loop that started it)."""

    def __init__(
        self,
        runtime: Runtime,
        vocab: Vocab,
        config: EngineConfig = DEFAULT_CONFIG,
        model: str = "",
        observer: EngineObserver | None = None,
    ) -> None:
        super().__init__(runtime, vocab, config, model, observer)

    @property
    def active_streams(self) -> int:
        """Generate requests held (prefilling, waiting for a row, stepping or paused)."""
        return self._active

    @property
    def batch_size(self) -> int:
        """Rows in the decode batch now."""
        return self._batch.n

    async def start(self) -> None:
        """Start the step thread."""
        if self._thread is None:
            self._handoff.attach(asyncio.get_running_loop())
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"charlm-step {self.model}", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Stop the step thread (after its current step); requests still held end with Unavailable."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._handoff.command(self._stop)
            await asyncio.to_thread(thread.join)
        # the step thread is gone: its state is this thread's now (commands it never ran included)
        self._handoff.run_commands()
        self._fail_all(Unavailable(f"{self.model}: the engine is closed"))
        self._handoff.send()

    def new_state(self, seed: int | None = None) -> SeqState:
        """A fresh state (zeros, no context) with its own random stream (a random seed when None)."""
        seed = secrets.randbits(63) if seed is None else seed
        return SeqState(self.runtime.zero_state(), None, 0, np.random.default_rng(seed), seed)

    async def generate(
        self, state: SeqState, prompt: str, params: GenerateParams, cancel: asyncio.Event | None = None
    ) -> AsyncIterator[Chunk | Finish]:
        """Consume ``prompt`` then stream sampled characters as chunks; the last item is the Finish.

        ``state`` ends advanced past the prompt and the output. Log-probabilities, when asked, are those of
        each sampled character under the model's raw softmax (temperature 1, before penalty and truncation).
        """
        s = self._submit(state, prompt, params, cancel)
        try:
            while True:
                if s.out:
                    yield s.take()
                elif s.finished:
                    if s.error is not None:
                        raise s.error
                    yield self._finish_of(s)
                    return
                elif s.paused:  # the reader caught up with a paused stream: back into the batch
                    s.paused = False
                    self._handoff.command(self._resume, s)
                else:
                    await s.wait()
        finally:
            if not s.finished:
                self._handoff.command(self._abandon, s)

    async def feed(self, state: SeqState, text: str) -> FeedResult:
        """Advance ``state`` over ``text`` and score it: each character by the step that consumed the previous."""
        self._check_running()
        ids = self.vocab.encode_array(text, "text")
        if not ids.size:
            return FeedResult()
        head = np.array([] if state.pending is None else [state.pending], np.int64)
        todo = np.concatenate((head, ids[:-1]))  # the fed ids; each one's logits score the next id
        state.chars_consumed += int(ids.size)
        if not todo.size:  # a single character on a fresh state: consumed, nothing to score
            state.pending = int(ids[-1])
            return FeedResult(chars_consumed=1)
        s = Stream(state, todo, int(ids[-1]), None, None, self.runtime.vocab_size, score=True)
        self._handoff.command(self._accept, s)
        try:
            while not s.finished:
                await s.wait()
        finally:
            if not s.finished:
                self._handoff.command(self._abandon, s)
        if s.error is not None:
            raise s.error
        return FeedResult(chars_consumed=int(ids.size), chars_scored=s.scored, nll_nats=s.nll)

    # ------------------------------------------------------------------ the step thread

    def _run(self) -> None:
        """The step thread: run commands, admit, decode, prefill, send the events; until stopped."""
        h = self._handoff
        while not self._stopping:
            try:
                h.run_commands()
                if not (self._rows or self._prefilling or self._ready or self._dirty):
                    h.send()
                    if not self._stopping:
                        h.sleep()
                    continue
                self._admit()
                if self._batch.n:
                    self._decode()
                if self._prefilling:
                    self._prefill()
            except Exception as e:  # a failed step fails its streams, never the thread
                log.exception("%s: engine step failed", self.model)
                self._fail_all(e)
            h.send()  # one wake-up of the event loop per step, for every stream's news

    # ------------------------------------------------------------------ commands (run by the step thread)

    def _accept(self, s: Stream) -> None:
        """A new request: prefill first when it has anything to feed, else straight to a batch row."""
        if s.where == "prefill":
            self._prefilling.append(s)
        else:
            self._enqueue(s)

    def _resume(self, s: Stream) -> None:
        """A paused stream's reader caught up: back into the batch."""
        if s.where == "paused":
            self._enqueue(s)

    def _abandon(self, s: Stream) -> None:
        """The consumer went away: a batch row is freed at the next step; elsewhere the stream ends now."""
        s.abandoned = True
        if s.where == "batch":
            self._dirty = True
        elif s.where != "done":
            self._end(s, None)

    def _stop(self) -> None:
        """Leave the step loop after this command."""
        self._stopping = True

    # ------------------------------------------------------------------ requests in and out

    def _submit(self, state: SeqState, prompt: str, params: GenerateParams, cancel: asyncio.Event | None) -> Stream:
        """Validate a generate request and queue it (prefill first when there is anything to feed)."""
        self._check_running()
        validate(params.sampling, self.runtime.vocab_size)
        if params.max_chars < 1:
            raise InvalidArgument("max_chars", f"{params.max_chars} must be >= 1")
        if any(not stop for stop in params.stop):  # (one with characters outside the vocabulary just never matches)
            raise InvalidArgument("stop", "a stop sequence is empty")
        ids = self.vocab.encode_array(prompt, "prompt")
        if not ids.size and state.pending is None:
            raise InvalidArgument("prompt", "is empty and the state has no context to continue from")
        if params.sampling.seed is not None:
            state.rng, state.seed = np.random.default_rng(params.sampling.seed), params.sampling.seed
        head = np.array([] if state.pending is None else [state.pending], np.int64)
        # The whole prompt is fed (prefill): its last logits draw the first character, with no decode step.
        # With no prompt, the state's pending id goes straight to a batch row.
        todo = np.concatenate((head, ids)) if ids.size else head[:0]
        s = Stream(state, todo, None, params, cancel, self.runtime.vocab_size)
        s.seen[ids] = True
        s.prompt_chars = int(ids.size)
        state.chars_consumed += int(ids.size)
        self._active += 1
        self._handoff.command(self._accept, s)
        return s

    def _check_running(self) -> None:
        """Refuse new work unless the step loop runs (before start, after close)."""
        if self._thread is None:
            raise Unavailable(f"{self.model}: the engine is not running")

    def _finish_of(self, s: Stream) -> Finish:
        """The Finish record of a done stream."""
        end = s.t_end if s.t_end is not None else time.perf_counter()
        return Finish(
            reason=s.finish_reason or "cancelled",
            stop_sequence=s.stop_sequence,
            prompt_chars=s.prompt_chars,
            generated_chars=s.generated,
            time_to_first_char_ms=(s.t_first - s.t0) * 1e3 if s.t_first is not None else 0.0,
            total_ms=(end - s.t0) * 1e3,
            seed=s.state.seed or 0,
        )
