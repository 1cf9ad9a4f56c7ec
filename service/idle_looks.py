"""Later looks at a measured lane plan, taken while the engine is idle.

The engine measures its lane plan before it serves (service/tuning.py). On a 2-vCPU VM a slow stretch of
seconds can outlast the start's looks and leave a lane fill of 8 or 16 where 2 steps faster (2 of 50 starts in
the sixty-first pass; docs/performance-history.md): until a restart, the streams such a fill keeps in one lane are
served slower (in process on that VM, 8 streams in one lane at 0.73-0.75x of their chars/s spread over two, 16 at
0.60-0.64x; ``python -m bench.lane_fills``, the sixty-third pass).
So where the plan kept a fill above ``FILL_KEPT``, the row counts it left unsettled are timed again once the
engine has been idle for a while, a look at a time, until a lower fill is found or the looks run out.

A look times the lanes' own prepared decode calls, whose buffers the lanes use when they hold streams: a
request that comes meanwhile first stops the look and waits for it to end (``hold``: within one timing, 3.9 ms
at the median and 15.6 at most for the shipped model on 2 vCPUs with every row count unsettled); that look then
counts for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from service.tuning import Interrupted, Timed, Timing, look_again, plan, unsettled

log = logging.getLogger(__name__)
FILL_KEPT = 2  # 1 and 2 part on little (0.85-1.0x at 2 rows); above 2, a fill cost what one lane held 10-40%


class IdleLooks:
    """Looks again at ``timings``' unsettled row counts whenever ``idle()`` has held for ``idle_s`` seconds with
    no request, at most ``looks`` times, until the lane fill they pick (``plan(timings, default_fill)``) is at
    most FILL_KEPT; ``use`` gets each lower fill."""

    def __init__(self, model: str, timings: Sequence[Timing], measure: Timed, default_fill: int,
                 idle: Callable[[], bool], use: Callable[[int], None], looks: int, idle_s: float) -> None:  # fmt: skip
        self.model, self.timings, self.looks_left = model, list(timings), looks
        self.fill = plan(timings, default_fill).lane_fill
        self._measure, self._default_fill, self._idle, self._use = measure, default_fill, idle, use
        self._idle_s = idle_s
        self._last_request = time.perf_counter()
        self._stop = False  # (read by the look's thread between timings)
        self._quiet = asyncio.Event()  # set while no look runs
        self._quiet.set()
        self._task: asyncio.Task[None] | None = None

    def wanted(self) -> bool:
        """Whether a look may still lower the fill."""
        return self.looks_left > 0 and self.fill > FILL_KEPT and bool(unsettled(self.timings))

    @property
    def looking(self) -> bool:
        """Whether a look is under way."""
        return not self._quiet.is_set()

    def start(self) -> None:
        """(event loop) Begin waiting for idle moments."""
        if self._task is None and self.wanted():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="charlm-idle-looks")

    async def hold(self) -> None:
        """(event loop, before a request reaches the lanes) Stop a look under way and wait for its end."""
        self._last_request = time.perf_counter()
        if not self._quiet.is_set():
            self._stop = True
            await self._quiet.wait()

    async def close(self) -> None:
        """Stop a look under way, wait for it, and look no more."""
        self._stop = True
        await self._quiet.wait()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        since: float | None = None  # when the engine was first seen idle since it was last seen busy
        while self.wanted():
            await asyncio.sleep(self._idle_s / 2)
            now = time.perf_counter()
            since = (since or now) if self._idle() else None
            # seen idle at every poll for idle_s: a lane's step thread is long done with the stream that ended last
            if since is not None and now - max(since, self._last_request) >= self._idle_s:
                await self._look()
                since = None  # (the next look comes after idle_s more: a slow stretch may last seconds)

    async def _look(self) -> None:
        """One look at the unsettled rows, in a thread; an interrupted one counts for nothing."""
        rows = unsettled(self.timings)
        self._stop = False
        self._quiet.clear()  # (from here a request waits: the lanes' buffers are the look's)
        start = time.perf_counter()
        try:
            timings = await asyncio.to_thread(look_again, self._measure, self.timings, lambda: self._stop)
        except Interrupted:
            log.debug("%s: a look at rows %s while idle was interrupted by a request", self.model, rows)
            return
        except Exception:  # (the start's plan stands; the lanes' own calls fail their streams if they fail)
            log.exception("%s: a look at the lanes while idle failed; no more looks", self.model)
            self.looks_left = 0
            return
        finally:
            self._quiet.set()
        self.looks_left -= 1
        self.timings = timings
        fill = plan(self.timings, self._default_fill).lane_fill
        log.info("%s: lanes looked at again while idle in %.2f s (rows %s): lane fill %d (was %d)",
                 self.model, time.perf_counter() - start, rows, min(fill, self.fill), self.fill)  # fmt: skip
        if fill < self.fill:
            self.fill = fill
            self._use(fill)
