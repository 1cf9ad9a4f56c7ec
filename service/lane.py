"""One lane of an engine: a decode batch with its step thread, and the commands the event loop sends it.

An engine (service/engine.py) runs one lane per core on CPU. A lane's onnxruntime calls run on its own
thread alone while other lanes step too, so the lanes' calls proceed side by side: on 2 busy cores, two
batches of 32 rows stepped this way made 15-20% more characters per second than one batch of 64 on both
cores, whose every operator waits for its slowest thread (docs/performance.md). A lane that steps alone uses
all of onnxruntime's threads from ``EngineConfig.all_threads_rows`` rows; prompt calls use them whenever it
steps alone (Scheduler._prompt_session). New streams fill one lane up to ``EngineConfig.lane_fill`` before
the next gets any, then go to the lane holding the fewest. Which is faster depends on the machine, so the
engine measures both before it serves (service/tuning.py).

A lane left with no requests takes half of the rows of the busiest lane (``_give``). Lanes' calls do not run
equally fast (the cores are shared with the event loop, gRPC and the clients), so at the end of a burst of
64 streams of 2,000 characters on 2 cores, one lane's share finished a median 77 ms before the other's (of a
~0.5 s level), one core idle meanwhile; with rows moved, 24 ms (docs/performance-history.md, "Lanes that run dry").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from service.decoding import Decoding
from service.stream import Stream

log = logging.getLogger(__name__)

SHARE_MIN_ROWS = 8  # a lane gives rows to one that ran dry only while it holds this many requests (and 2 x lane_fill)
SHARE_MIN_CHARS = 32  # ...and only rows with this many characters still to generate (4 calls of 8 steps)


class Lane(Decoding):
    """A decode batch and the thread that steps it; the event loop talks to it only through commands."""

    _thread: threading.Thread | None = None
    _stopping = False
    _closing: BaseException | None = None  # (event loop) what close ends streams with, from its start on
    moved_rows = 0  # (step thread) rows this lane gave to peers that ran dry (see _give)
    _share_to: Lane | None = None  # (step thread) a peer that ran dry, until this lane gives it rows or can't
    _warm: threading.Event  # set by the step thread once its batch is warm (made by start)

    @property
    def active(self) -> int:
        """(event loop) Generate requests this lane holds."""
        return self._active

    @property
    def batch_size(self) -> int:
        """Rows in the decode batch now."""
        return self._batch.n

    def prepare(self, run: bool) -> None:
        """(before start) Bind every batch size now (``run``: and make one call of each; see DecodeBatch.prepare),
        and build this lane's own prompt session (see Scheduler.prepare_prompts)."""
        self._batch.prepare(run)
        self.prepare_prompts()

    def prepared_call(self, rows: int, alone: bool) -> Callable[[], None]:
        """(before start) A prepared decode call of ``rows`` rows, to time (service/tuning.py; DecodeBatch)."""
        return self._batch.prepared_call(rows, alone)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """(event loop) Start the step thread; its events run on ``loop``."""
        if self._thread is None:
            self._handoff.attach(loop)
            self._stopping, self._closing = False, None
            name = f"charlm-step {self.model}/{self._index}"
            self._warm = threading.Event()
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    async def warmed(self) -> None:
        """(event loop) Wait until the step thread has warmed its batch (DeviceBatch.warm: on CUDA the graphs'
        capture, which another thread's CUDA calls meanwhile, a request's prompt among them, could break)."""
        await asyncio.to_thread(self._warm.wait)

    async def close(self, error: BaseException) -> None:
        """(event loop) Stop the step thread after its current step; streams still held end with ``error``."""
        self._closing = error
        thread, self._thread = self._thread, None
        if thread is not None:
            self._handoff.command(self._stop)
            await asyncio.to_thread(thread.join)
        # the step thread is gone: its state is this thread's now (commands it never ran included)
        self._handoff.run_commands()
        self._fail_all(error)
        self._handoff.send()

    # ------------------------------------------------------------------ event loop side: commands

    def accept(self, s: Stream) -> None:
        """A new request (generate or feed)."""
        if not s.score:
            self._active += 1  # (counted out by _ended)
        self._handoff.command(self._accept, s)

    def resume(self, s: Stream) -> None:
        """A paused stream's reader caught up."""
        self._handoff.command(self._resume, s)

    def abandon(self, s: Stream) -> None:
        """A stream's consumer went away (thread-safe: a lane's step thread forwards one that moved on)."""
        self._handoff.command(self._abandon, s)

    def _ended(self, s: Stream) -> None:
        """(event loop) A stream is done; a lane left with none asks the busiest for half of its rows."""
        super()._ended(s)
        if self._active == 0 and self._thread is not None:
            busiest = max(self._peers, key=lambda p: p._active)
            if isinstance(busiest, Lane) and busiest is not self and \
                    busiest._active >= max(SHARE_MIN_ROWS, 2 * self.config.lane_fill):  # fmt: skip
                busiest._handoff.command(setattr, busiest, "_share_to", self)  # (see _give)

    def _moved(self, s: Stream, to: Lane) -> None:
        """(event loop) A row this lane gave away joins ``to``'s queue; back here if ``to`` is closing; ended
        if both are (the engine is closing). Nothing if this lane ended it meanwhile (its _ended counts it out)."""
        if s.where != "moving":
            return
        self._active -= 1
        for lane in (to, self):
            if lane._closing is None:
                s.lane = lane
                lane.accept(s)
                return
        s.error = self._closing
        s.end(None)
        s.on_done()

    # ------------------------------------------------------------------ the step thread

    def _run(self) -> None:
        """The step thread: run commands, admit, decode, prefill, send the events; until stopped."""
        h = self._handoff
        try:
            self._batch.warm()  # (on CUDA: its graphs are captured now, in this thread, which keeps them)
        except Exception:  # its calls then fail as they come, each failing its streams
            log.exception("%s: warming the decode batch failed", self.model)
        finally:
            self._warm.set()
        while not self._stopping:
            try:
                h.run_commands()
                if self._share_to is not None:  # (before _admit: the rows it gives leave the batch there)
                    self._give(self._share_to)
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
                ids = self._request_ids()
                log.exception("%s: engine step failed; failing requests %s", self.model, ids,
                              extra={"request_ids": ids})  # fmt: skip
                self._fail_all(e)
            h.send()  # one wake-up of the event loop per step, for every stream's news

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
        """The consumer went away: a batch row is freed at the next step; elsewhere the stream ends now. One that
        moved to another lane meanwhile is that lane's to let go; one moving ends where it joins (_admit)."""
        if s.lane is not None and s.lane is not self:
            s.lane.abandon(s)
            return
        s.abandoned = True
        if s.where == "batch":
            self._dirty = True
        elif s.where not in ("done", "moving"):
            self._end(s, None)

    def _give(self, to: Lane) -> None:
        """A peer ran dry: hand it half of the batch's rows, among those with enough left to generate, each
        state saved as a pause saves it; the event loop then queues them on ``to`` (_moved). While too few rows
        are in the batch but more are on their way (prompts), it waits for them. A row's text is the same in
        any lane's batch (tests/service_core)."""
        # (to._active: read across threads, as a hint that it took requests of its own meanwhile)
        off = self._stopping or to._closing is not None or to._active > 0
        live = [(i, s) for i, s in enumerate(self._rows) if s.where == "batch"]  # (not those that left this step)
        if not off and len(live) < SHARE_MIN_ROWS and (self._prefilling or self._ready):
            return  # asked again at the next step
        self._share_to = None
        if off or len(live) < SHARE_MIN_ROWS:
            return
        rows = [(i, s) for i, s in live if _movable(s)]
        for i, s in rows[-(len(live) // 2) :]:
            self._save_row(s, i)
            s.where = "moving"
            self._handoff.post(self._moved, s, to)
            self._dirty = True
            self.moved_rows += 1

    def _stop(self) -> None:
        """Leave the step loop after this command."""
        self._stopping = True


def _movable(s: Stream) -> bool:
    """A live batch row that may move to another lane: not leaving, with enough left to generate."""
    cancelled = s.cancel is not None and s.cancel.is_set()
    return not s.abandoned and not cancelled and s.max_chars - s.generated >= SHARE_MIN_CHARS
