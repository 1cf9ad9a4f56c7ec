"""The one boundary between the event loop and an engine's step thread: commands in, events out.

The step loop runs in a thread of its own, so that consecutive onnxruntime calls follow each other with no
event-loop iteration, future or thread wake-up in between (each cost tens to hundreds of microseconds on
2 busy cores, against a ~100 µs step at batch 1: docs/performance.md). The two threads share no mutable
state except through this class: the loop queues *commands* (calls the step thread makes before its next
step) and the step thread queues *events* (calls the loop makes), sent to the loop in one wake-up per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

Call = tuple[Callable[..., object], tuple[Any, ...]]


class Handoff:
    """Commands for the step thread and events for the event loop, each run in the order queued."""

    def __init__(self) -> None:
        self._commands: deque[Call] = deque()  # deque append/popleft are atomic: no lock needed
        self._wake = threading.Event()
        self._events: list[Call] = []  # step thread only
        self._outbox: deque[list[Call]] = deque()  # sent, not yet run by the loop
        self._woken = False  # a run of the outbox is scheduled on the loop and has not started yet
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that runs the events (call before the step thread posts any)."""
        self._loop = loop

    # ------------------------------------------------------------------ event loop side

    def command(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` for the step thread and wake it if it sleeps."""
        self._commands.append((fn, args))
        self._wake.set()

    # ------------------------------------------------------------------ step thread side

    def run_commands(self) -> None:
        """Run every queued command, in order."""
        self._wake.clear()  # before draining: a command queued after this sets it again
        commands = self._commands
        while commands:
            fn, args = commands.popleft()
            fn(*args)

    def sleep(self, timeout: float | None = None) -> None:
        """Block until a command is queued (or ``timeout`` seconds pass)."""
        self._wake.wait(timeout)

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` for the event loop (sent by the next ``send``)."""
        self._events.append((fn, args))

    def send(self) -> None:
        """Hand the posted events to the event loop: one wake-up for all of them, and none while the loop has
        a wake-up pending (each costs a write to its self-pipe, ~5% of a step thread's time at 64 streams)."""
        if not self._events:
            return
        events, self._events = self._events, []
        if self._loop is None:
            run_all(events)
            return
        self._outbox.append(events)
        if not self._woken:
            self._woken = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read the events
                self._loop.call_soon_threadsafe(self._run_outbox)

    def _run_outbox(self) -> None:
        """(event loop) Run every batch of events sent so far, in order."""
        self._woken = False  # before draining: events sent after this schedule a run of their own
        outbox = self._outbox
        while outbox:
            run_all(outbox.popleft())


def run_all(calls: list[Call]) -> None:
    """Run queued calls in order."""
    for fn, args in calls:
        fn(*args)
