"""Continuous batching engine: one per model version; generate and feed requests share its step loop.

The loop itself (membership, one decode call per step for every stream, chunked prefill, buffers that
coalesce characters) is in service/scheduler.py; this module is the request API on top of it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import numpy as np

from service.errors import InvalidArgument, Unavailable
from service.runtime import Runtime
from service.sampling import validate
from service.scheduler import EngineConfig, Scheduler
from service.stream import Stream
from service.types import Chunk, EngineObserver, FeedResult, Finish, GenerateParams, SeqState
from service.vocab import Vocab

__all__ = ["Engine", "EngineConfig", "Vocab"]
DEFAULT_CONFIG = EngineConfig()


class Engine(Scheduler):
    """Serves one model version (call every method from the event loop that runs it)."""

    def __init__(
        self,
        runtime: Runtime,
        vocab: Vocab,
        config: EngineConfig = DEFAULT_CONFIG,
        model: str = "",
        observer: EngineObserver | None = None,
    ) -> None:
        super().__init__(runtime, vocab, config, model, observer)
        self._task: asyncio.Task[None] | None = None

    @property
    def active_streams(self) -> int:
        """Generate requests held (prefilling, waiting for a row, stepping or paused)."""
        return self._active

    @property
    def batch_size(self) -> int:
        """Rows in the decode batch now."""
        return self._batch.n

    async def start(self) -> None:
        """Start the step loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"charlm engine {self.model}")

    async def close(self) -> None:
        """Stop the step loop; requests still held end with Unavailable."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # a call already in the worker thread finishes before the batch is torn down
        await asyncio.get_running_loop().run_in_executor(None, self._offload.shutdown)
        self._fail_all(Unavailable(f"{self.model}: the engine is closed"))

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
                if s.error is not None:
                    raise s.error
                if s.buf and (s.flush or s.where != "batch"):  # (in the batch, characters go out when due)
                    chunk = s.take()
                    if s.where == "paused":  # the reader caught up: back into the batch
                        self._enqueue(s)
                    yield chunk
                elif s.where == "done":
                    yield self._finish_of(s)
                    return
                else:
                    await s.wait()
        finally:
            if s.where != "done":
                self._abandon(s)

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
        self._prefilling.append(s)
        self._kick.set()
        try:
            while s.where != "done":
                await s.wait()
        finally:
            if s.where != "done":
                self._abandon(s)
        if s.error is not None:
            raise s.error
        return FeedResult(chars_consumed=int(ids.size), chars_scored=s.scored, nll_nats=s.nll)

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
        todo = np.concatenate((head, ids[:-1])) if ids.size else head[:0]
        pending = int(ids[-1]) if ids.size else state.pending
        s = Stream(state, todo, pending, params, cancel, self.runtime.vocab_size)
        s.seen[ids] = True
        s.prompt_chars = int(ids.size)
        if not todo.size:  # nothing to feed (empty prompt, or one character on a fresh state)
            state.pending = pending
        state.chars_consumed += int(ids.size)
        self._active += 1
        if s.where == "prefill":
            self._prefilling.append(s)
            self._kick.set()
        else:
            self._enqueue(s)
        return s

    def _check_running(self) -> None:
        """Refuse new work unless the step loop runs (before start, after close)."""
        if self._task is None:
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
