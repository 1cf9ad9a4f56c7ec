"""The streams a DataPlane has in progress: admitted up to the server's limit, refused once it drains."""

from __future__ import annotations

import asyncio
from typing import Protocol

from service import errors


class StreamObserver(Protocol):
    """Told how many streams are in progress (the Prometheus metrics implement it)."""

    def streams(self, active: int) -> None:
        """``active`` streams are in progress."""


class InFlight:
    """``with``: one Generate, Feed or Chat stream in progress, from its admission to its end."""

    # A class, not a generator-based context manager: after an idle gap every layer of a request's first message
    # runs cold, and a generator is two more frames to enter and leave (docs/performance-history.md, the
    # thirty-fifth pass).

    def __init__(self, max_streams: int, observer: StreamObserver | None = None) -> None:
        self.max_streams, self._observer = max_streams, observer
        self.count = 0
        self.draining = False
        self.idle = asyncio.Event()  # set while no stream is in progress
        self.idle.set()

    def refuse_if_draining(self) -> None:
        """Raises UNAVAILABLE once the server has begun to drain: new work goes to another replica."""
        if self.draining:
            raise errors.Unavailable("the server is shutting down; retry on another replica")

    def __enter__(self) -> None:
        self.refuse_if_draining()
        if self.count >= self.max_streams:
            raise errors.ResourceExhausted(f"the server is at its limit of {self.max_streams} streams")
        self.count += 1
        self.idle.clear()
        if self._observer:
            self._observer.streams(self.count)

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()
        if self._observer:
            self._observer.streams(self.count)
