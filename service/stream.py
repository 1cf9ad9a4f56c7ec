"""One request inside the engine: what it still has to consume, its output buffer, its place in the batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from service.types import Chunk, FinishReason, GenerateParams, Sampling, SeqState

Where = Literal["prefill", "ready", "batch", "paused", "done"]
UNIFORM_BLOCK = 64  # uniforms drawn from a stream's rng at once: one numpy call per 64 characters


class Stream:
    """A generate or feed request: its state, its prompt still to feed, and the characters not yet read.

    Lifecycle: "prefill" (sequence calls over ``todo``) -> "ready" (waiting for a batch row) -> "batch"
    (one character per engine step) <-> "paused" (buffer full until the reader catches up) -> "done".
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
        self.sampling: Sampling = self.params.sampling
        self.max_chars = self.params.max_chars
        self.cancel = cancel
        self.where: Where = "prefill" if todo.size else "ready"
        self.score = score  # a feed request: score the fed text, generate nothing
        self.prompt_chars = 0
        self.abandoned = False  # the consumer went away
        self.error: BaseException | None = None
        self.seen = np.zeros(vocab_size, bool)  # characters of this request, for the repetition penalty
        # feed scoring
        self.nll = 0.0
        self.scored = 0
        # output
        self.buf: list[str] = []
        self.lps: list[float] | None = [] if self.params.logprobs else None
        self.generated = 0
        self.finish_reason: FinishReason | None = None
        self.stop_sequence = ""
        self._tail = ""
        self.has_stops = bool(self.params.stop)
        self._stop_keep = max((len(s) for s in self.params.stop), default=1) - 1  # tail chars kept between steps
        self.waiter: asyncio.Future[Any] | None = None
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.t_wake = 0.0  # when the engine last woke the consumer for new characters (shifted by a phase)
        self.flush = False  # the buffer is due to go out (set by wake; characters before it are held)
        self.t_end: float | None = None
        # the rng is read in blocks; `sync_rng` rewinds it to exactly the draws used
        self._ublock: list[float] = []
        self._uk = 0
        self._usaved: Mapping[str, Any] | None = None

    @property
    def remaining(self) -> int:
        """Ids of ``todo`` not fed yet."""
        return int(self.todo.size) - self.done

    def next_uniform(self) -> float:
        """The stream's next uniform in [0, 1), from its own rng."""
        if self._uk == len(self._ublock):
            self.sync_rng()
            self._usaved = self.state.rng.bit_generator.state
            self._ublock = self.state.rng.random(UNIFORM_BLOCK).tolist()
        u = self._ublock[self._uk]
        self._uk += 1
        return u

    def sync_rng(self) -> None:
        """Leave the rng exactly after the uniforms used, as if they had been drawn one at a time."""
        if self._usaved is not None:
            self.state.rng.bit_generator.state = self._usaved
            self.state.rng.random(self._uk)
        self._usaved, self._ublock, self._uk = None, [], 0

    def match_stop(self, char: str) -> str | None:
        """Append ``char`` to the output tail; the stop sequence the output now ends with, if any."""
        tail = self._tail + char
        for s in self.params.stop:
            if tail.endswith(s):
                return s
        self._tail = tail[-self._stop_keep :] if self._stop_keep > 0 else ""
        return None

    def take(self) -> Chunk:
        """Everything buffered, as one chunk (coalesced characters)."""
        chunk = Chunk("".join(self.buf), self.lps)
        self.buf, self.flush = [], False
        if self.lps is not None:
            self.lps = []
        return chunk

    def wake(self) -> None:
        """Release the buffer to the consumer and wake it if it waits."""
        self.flush = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        """Wait until the engine has something for the consumer."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
