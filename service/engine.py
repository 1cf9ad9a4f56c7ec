"""Continuous batching engine: one per model version; generate and feed requests share its step loops.

The engine is the request API on the event loop's side. Its streams are spread over lanes
(service/lane.py): on CPU one per core, each a decode batch stepped by a thread of its own, side by side;
what one step does is in service/scheduler.py (membership, chunked prefill, buffers that coalesce
characters) and service/decoding.py (one decode call for every stream of the lane, of one step or several).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from functools import cache, partial

import numpy as np

from service.config import EngineConfig
from service.cores import available_cores, quota_cores
from service.errors import InvalidArgument, Unavailable
from service.idle_looks import IdleLooks
from service.lane import Lane
from service.prompts import LonePrompts, consume
from service.runtime import Runtime
from service.sampling import validate
from service.scheduler import Scheduler
from service.stream import Stream
from service.tuning import LanePlan, describe, measure, measure_looks, plan
from service.types import Chunk, EngineObserver, FeedResult, Finish, GenerateParams, SeqState
from service.vocab import Vocab

__all__ = ["Engine", "EngineConfig", "Vocab", "available_cores", "quota_cores"]
log = logging.getLogger(__name__)
DEFAULT_CONFIG = EngineConfig()
LANE_FILL = 16  # streams a lane takes before the next when spreading them is measured no faster


class Engine:
    """Serves one model version (call every method from the event loop that started it)."""

    def __init__(
        self,
        runtime: Runtime,
        vocab: Vocab,
        config: EngineConfig = DEFAULT_CONFIG,
        model: str = "",
        observer: EngineObserver | None = None,
    ) -> None:
        self.runtime, self.vocab, self.config = runtime, vocab, config
        self.model = model or runtime.model
        # on CUDA one batch keeps the device busiest; on CPU one lane per core (see service/lane.py)
        n = config.lanes or (available_cores() if runtime.provider == "cpu" else 1)
        if n > 1 and runtime.cuda_graphs:  # (two lanes' graph captures and calls on one device broke each other)
            log.warning("%s: one lane with CUDA graphs, not %d (--cuda-graphs false for more)", self.model, n)
            n = 1
        peers: list[Scheduler] = []  # every lane adds itself
        self.lanes = [Lane(runtime, vocab, config, self.model, observer, peers) for _ in range(n)]
        self.observer = observer
        self._lone = LonePrompts(runtime, config.inline_prompt_chars)  # the prompts consumed on the event loop
        self._feeds = 0  # feed requests held by the lanes
        # Generations whose reader has not let go: one whose stream has ended in the engine may still be sending
        # its last messages, and while requests come in together one is always being sent (see _submit).
        self._reading = 0
        self._running = False
        self._starting = asyncio.Lock()
        self._looks: IdleLooks | None = None  # later looks at a measured lane plan, while idle

    @property
    def active_streams(self) -> int:
        """Generate requests held (prefilling, waiting for a row, stepping or paused)."""
        return sum(lane.active for lane in self.lanes)

    @property
    def batch_size(self) -> int:
        """Rows in the decode batches now."""
        return sum(lane.batch_size for lane in self.lanes)

    async def start(self) -> None:
        """Prepare every batch size of every lane (~1 s for the shipped model on 2 cores), then start the lanes'
        step threads and wait until each has warmed its batch (on CUDA: captured its graphs)."""
        async with self._starting:  # (concurrent callers wait for the first: the batches must not be in use)
            if self._running:
                return
            await asyncio.to_thread(self._prepare)
            loop = asyncio.get_running_loop()
            for lane in self.lanes:
                lane.start(loop)
            for lane in self.lanes:  # (no request before then: see Lane.warmed)
                await lane.warmed()
            self._running = True
            if self._looks is not None:
                self._looks.start()

    def _prepare(self) -> None:
        for i, lane in enumerate(self.lanes):  # the lanes share the decode sessions: one of them makes the calls
            lane.prepare(run=i == 0)
        self._plan_lanes()

    def _plan_lanes(self) -> None:
        """Settle ``all_threads_rows`` and ``lane_fill`` where the config leaves them to be measured (0), and
        report both, measured or set."""
        cfg = self.config
        if not (cfg.all_threads_rows and cfg.lane_fill):
            picked = self._measured_plan()
            cfg = replace(cfg, all_threads_rows=cfg.all_threads_rows or picked.all_threads_rows,
                          lane_fill=cfg.lane_fill or picked.lane_fill)
        self._use(cfg)

    def _use(self, cfg: EngineConfig) -> None:
        """Serve by ``cfg`` from now on, and report its lane plan."""
        self.config = cfg
        for lane in self.lanes:
            lane.config = cfg
        if self.observer is not None:  # (what was measured differs by machine: operators see it in /metrics)
            self.observer.lanes(self.model, len(self.lanes), cfg.all_threads_rows, cfg.lane_fill,
                                self.runtime.decode_precision, self.runtime.prompt_precision)  # fmt: skip

    def _measured_plan(self) -> LanePlan:
        """What service/tuning.py picks from this engine's own prepared calls (fixed where there is no choice)."""
        one_way = len(self.lanes) == 1 and self.runtime.threads == 1  # (nothing to choose between)
        if one_way or self.runtime.provider != "cpu" or self.runtime.device_batch:  # (device: whole batch a call)
            return LanePlan(1, LANE_FILL)
        start = time.perf_counter()
        prepared = cache(lambda i, rows, alone: self.lanes[i].prepared_call(rows, alone))  # (a later look binds none)
        timed = partial(measure, prepared, len(self.lanes), self.runtime.threads, self.config.max_batch)
        first, timings = measure_looks(timed)
        picked, cfg = plan(timings, LANE_FILL), self.config
        if not cfg.lane_fill and cfg.idle_looks:
            self._looks = IdleLooks(self.model, timings, timed, LANE_FILL, self._idle,
                                    lambda fill: self._use(replace(self.config, lane_fill=fill)),
                                    cfg.idle_looks, cfg.idle_look_after_s)  # fmt: skip
        log.info("%s: lanes measured in %.2f s: all threads from %d rows, lane fill %d (first look: %d)",
                 self.model, time.perf_counter() - start, picked.all_threads_rows, picked.lane_fill,
                 plan(first, LANE_FILL).lane_fill, extra={"timings_us": describe(timings),
                                                          "first_look_us": describe(first)})  # fmt: skip
        return picked

    async def close(self) -> None:
        """Stop the step threads (after their current steps); requests still held end with Unavailable."""
        async with self._starting:
            self._running = False
            if self._looks is not None:
                await self._looks.close()
            for lane in self.lanes:
                await lane.close(Unavailable(f"{self.model}: the engine is closed"))

    def new_state(self, seed: int | None = None) -> SeqState:
        """A fresh state (zeros, no context) with its own random stream (a random seed when None)."""
        seed = secrets.randbits(63) if seed is None else seed
        return SeqState(self.runtime.zero_state(), seed=seed)

    async def generate(
        self, state: SeqState, prompt: str, params: GenerateParams, cancel: asyncio.Event | None = None
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """Consume ``prompt`` then stream sampled characters as chunks; the last item is the Finish.

        ``state`` ends advanced past the prompt and the output. Log-probabilities, when asked, are those of
        each sampled character under the model's raw softmax (temperature 1, before penalty and truncation).
        """
        if self._looks is not None:
            await self._looks.hold()
        s = self._submit(state, prompt, params, cancel)
        self._reading += 1
        try:
            while True:
                if s.out:
                    chunk = s.take()
                    chunk.final = s.finished and s.error is None  # (every chunk is released before the end)
                    yield chunk
                elif s.finished:
                    if s.error is not None:
                        raise s.error
                    yield s.finish_record()
                    return
                elif s.paused:  # the reader caught up with a paused stream: back into the batch
                    s.paused = False
                    assert s.lane is not None
                    s.lane.resume(s)
                else:
                    await s.wait()
        finally:
            self._reading -= 1
            if not s.finished:
                await self._let_go(s)

    async def feed(self, state: SeqState, text: str, field: str = "text") -> FeedResult:
        """Advance ``state`` over ``text`` and score it: each character by the step that consumed the previous
        (``field`` names the text in errors)."""
        self._check_running()
        if self._looks is not None:
            await self._looks.hold()
        ids = self.vocab.encode_array(text, field)
        if not ids.size:
            return FeedResult()
        head = np.array([] if state.pending is None else [state.pending], np.int64)
        todo = np.concatenate((head, ids[:-1]))  # the fed ids; each one's logits score the next id
        if not todo.size:  # a single character on a fresh state: consumed, nothing to score
            state.pending = int(ids[-1])
            state.chars_consumed += 1
            return FeedResult(chars_consumed=1)
        s = Stream(state, todo, int(ids[-1]), None, None, self.runtime.vocab_size, score=True)
        s.text_chars = int(ids.size)
        s.lane = self._lane()
        s.lane.accept(s)
        self._feeds += 1
        try:
            while not s.finished:
                await s.wait()
        finally:
            self._feeds -= 1
            if not s.finished:
                await self._let_go(s)
        if s.error is not None:
            raise s.error
        return FeedResult(chars_consumed=int(ids.size), chars_scored=s.scored, nll_nats=s.nll)

    # ------------------------------------------------------------------ requests in and out

    def _submit(self, state: SeqState, prompt: str, params: GenerateParams,
                cancel: asyncio.Event | None) -> Stream:  # fmt: skip
        """Validate a generate request and queue it on a lane (prefill first when there is anything to feed)."""
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
            state.reseed(params.sampling.seed)
        # The whole prompt is fed (prefill): its last logits draw the first character, with no decode step.
        # With no prompt, the state's pending id goes straight to a batch row.
        if state.pending is not None and ids.size:
            todo = np.concatenate((np.array([state.pending], np.int64), ids))
        else:
            todo = ids  # a fresh state's prompt, or no prompt at all (empty)
        s = Stream(state, todo, None, params, cancel, self.runtime.vocab_size)
        s.seen[ids] = True
        s.prompt_chars = s.text_chars = int(ids.size)
        s.lane = lane = self._lane()
        # Only a request that comes alone: while others are being read, more are arriving, and on the loop their
        # prompts would be consumed one call each, in turn with their gRPC work; a lane takes them together.
        short = s.where == "prefill" and s.todo.size <= self.config.inline_prompt_chars
        alone = self._reading == 0 and self.active_streams == 0 and self._feeds == 0
        if not (short and alone and self._prefill_here(s)):
            lane.accept(s)
        return s

    def _prefill_here(self, s: Stream) -> bool:
        """Consume a stream's prompt and draw its first character on the event loop (see
        ``EngineConfig.inline_prompt_chars``). True when that ended it; else it is ready for a batch row."""
        logits = self._lone.consume(s)
        if logits is None:  # (longer than prompts.LONE_MAX_CHARS)
            logits = consume(self.runtime, [s], int(s.todo.size))
        s.done = int(s.todo.size)
        reason = s.first_char(logits[0, -1], self.vocab.chars)
        s.t_first = s.t_wake = time.perf_counter()
        if self.observer is not None:
            self.observer.first_char(self.model, s.t_first - s.t0)
            self.observer.chars(self.model, 1)
        s.on_chunk(s.release())
        if reason is None:
            s.where = "ready"
            return False
        s.end(reason, s.stop_sequence)
        s.on_done()
        return True

    @staticmethod
    async def _let_go(s: Stream) -> None:
        """Abandon a stream whose consumer went away, and wait until its lane has let go of the state (at its
        next step at the latest): until then the step thread may still write the state, so a session must not
        be handed to the next request (or forked) before."""
        assert s.lane is not None
        s.lane.abandon(s)
        while not s.finished:
            await s.wait()

    def _lane(self) -> Lane:
        """The first lane holding fewer than ``lane_fill`` generate requests, else the one holding the fewest."""
        for lane in self.lanes:
            if lane.active < self.config.lane_fill:
                return lane
        return min(self.lanes, key=lambda lane: lane.active)

    def _idle(self) -> bool:
        """Whether no request is held or being read."""
        return self.active_streams == 0 and self._reading == 0 and self._feeds == 0

    def _check_running(self) -> None:
        """Refuse new work unless the step loop runs (before start, after close)."""
        if not self._running:
            raise Unavailable(f"{self.model}: the engine is not running")

