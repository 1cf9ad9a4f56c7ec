"""Where an onnxruntime call runs: in the event loop's thread, or in a worker thread, by its expected duration.

onnxruntime releases the GIL, so a call in the worker thread lets the event loop serve consumers and the
network meanwhile; but the hand-off costs tens to hundreds of microseconds (two thread wake-ups, more on a
busy machine). So calls expected (from recent ones of the same kind) to take longer than ``thread_above_us``
run in the worker thread, and short ones (small batches of a small model) run inline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Call = asyncio.Future[tuple[T, float]]  # a launched call: its result and its duration (s)


class Offload:
    """Launches calls inline or in one worker thread; remembers recent durations per kind of call."""

    def __init__(self, run_in_thread: bool, thread_above_us: float) -> None:
        self.run_in_thread, self.thread_above_us = run_in_thread, thread_above_us
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="charlm-ort")
        self._expected: dict[str, float] = {}  # kind -> recent call duration (s, moving average)
        self.yielded = False  # a call went to the thread since the caller last cleared this (so it yielded)

    def launch(self, kind: str, fn: Callable[..., T], *args: Any) -> Call[T]:
        """Start ``fn(*args)``: inline (the future is already done) or in the worker thread (returns at once)."""

        def timed() -> tuple[T, float]:
            start = time.perf_counter()
            result = fn(*args)
            return result, time.perf_counter() - start

        loop = asyncio.get_running_loop()
        if not self.run_in_thread or self._expected.get(kind, 0.0) * 1e6 < self.thread_above_us:
            done: Call[T] = loop.create_future()
            try:
                done.set_result(timed())
            except Exception as e:
                done.set_exception(e)
            return done
        self.yielded = True
        return loop.run_in_executor(self._executor, timed)

    async def finish(self, kind: str, call: Call[T]) -> tuple[T, float]:
        """Await a launched call (no yield when it ran inline); its result and duration."""
        result, seconds = await call
        self._expected[kind] = 0.8 * self._expected.get(kind, 0.0) + 0.2 * seconds
        return result, seconds

    def shutdown(self) -> None:
        """Wait for a call still in the worker thread, then stop the thread (blocking)."""
        self._executor.shutdown()
