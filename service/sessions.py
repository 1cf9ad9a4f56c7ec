"""Server-side sessions: a store interface and its in-memory implementation (idle TTL, LRU eviction, busy lease)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from service import errors
from service.config import SessionConfig
from service.logs import session_ref
from service.types import SeqState

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class Session:
    """One session: a model's recurrent state kept between calls."""

    id: str
    model: str  # "name:version"
    state: SeqState
    ttl_seconds: float
    created_at: float  # unix seconds
    last_used_at: float
    busy: bool = False
    ending: bool = False  # busy, but its stream is ending: its lease ends as soon as the engine lets go (ms)
    holder: asyncio.Task[object] | None = field(default=None, repr=False)  # the task of the stream holding it
    _free: asyncio.Event | None = field(default=None, repr=False)

    @property
    def expires_at(self) -> float:
        """When the session expires if it stays idle."""
        return self.last_used_at + self.ttl_seconds

    @property
    def stream_ending(self) -> bool:
        """Busy with a stream that is ending: marked so, or its task was cancelled (gRPC cancels a handler's task
        when its client cancels), e.g. a Feed whose engine call is waiting for its lane to let go."""
        return self.busy and (self.ending or (self.holder is not None and self.holder.cancelling() > 0))

    async def until_free(self) -> None:
        """Waits until the stream holding the session has ended."""
        if self._free is None:
            self._free = asyncio.Event()
        await self._free.wait()

    def set_free(self) -> None:
        """The stream holding the session ended: wake whoever waits for it."""
        self.busy = self.ending = False
        self.holder = None
        if self._free is not None:
            self._free.set()
            self._free = None


class SessionObserver(Protocol):
    """What the store reports (the Prometheus metrics implement it)."""

    def sessions(self, active: int, state_bytes: int) -> None:
        """The store now holds ``active`` sessions with ``state_bytes`` bytes of state."""

    def session_gone(self, reason: str) -> None:
        """A session was removed: "expired", "evicted" or "deleted"."""


class SessionStore(Protocol):
    """The interface a shared store (e.g. Redis-backed) could implement later."""

    def create(self, model: str, state: SeqState, ttl_seconds: float = 0) -> Session:
        """Stores a new session under a fresh unguessable id; ttl 0 = the server default."""

    def get(self, session_id: str) -> Session:
        """The live session, or errors.NotFound with reason SESSION_NOT_FOUND/EXPIRED/EVICTED."""

    def list(self, model: str | None = None) -> list[Session]:
        """Live sessions, optionally of one model ("name:version")."""

    def delete(self, session_id: str) -> None:
        """Removes a session (NotFound if it is not live)."""

    def fork(self, session_id: str, ttl_seconds: float = 0) -> Session:
        """A new session with a copy of another's state; ttl 0 copies the source's."""

    def lease(self, session_id: str) -> contextlib.AbstractAsyncContextManager[Session]:
        """Exclusive use of a session for one stream; a concurrent second user gets errors.SessionBusy."""


_WHY = {"expired": "idle past its TTL", "evicted": "the least recently used idle one when the store was full"}


class InMemorySessionStore:
    """Sessions in a dict ordered by last use, so the least recently used idle one is found first."""

    def __init__(self, config: SessionConfig, observer: SessionObserver | None = None, clock: Clock = time.time):
        self._config = config
        self._observer = observer
        self._clock = clock
        self._live: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> NotFound reason, bounded
        self._bytes = 0  # state bytes of live sessions (fixed per session: kept as a running total)
        self._sweeper: asyncio.Task[None] | None = None

    def create(self, model: str, state: SeqState, ttl_seconds: float = 0) -> Session:
        """Stores a new session, evicting the least recently used idle one when the store is full."""
        ttl = self._ttl(ttl_seconds)
        if len(self._live) >= self._config.max_sessions and not self.sweep():  # sweeping is O(n): only when full
            self._evict_one()
        now = self._clock()
        # hex, 128 random bits: unguessable, and safe as a command-line argument (base64url ids could start with
        # "-", which `charlm sessions delete ID` took for an option)
        session = Session(secrets.token_hex(16), model, state, ttl, now, now)
        self._live[session.id] = session
        self._bytes += state.nbytes
        self._report()
        return session

    def get(self, session_id: str) -> Session:
        """The live session or NotFound saying whether it never existed, expired or was evicted."""
        session = self._live.get(session_id)
        if session is not None and not session.busy and self._clock() >= session.expires_at:
            self._remove(session_id, "SESSION_EXPIRED", "expired")
            session = None
        if session is None:
            reason = self._gone.get(session_id, "SESSION_NOT_FOUND")
            what = {"SESSION_EXPIRED": "expired", "SESSION_EVICTED": "was evicted (too many sessions)"}
            explain = what.get(reason, "does not exist")
            raise errors.NotFound(f"session {session_id!r} {explain}", reason, session_id=session_id)
        return session

    def list(self, model: str | None = None) -> list[Session]:
        """Live sessions, optionally of one model."""
        self.sweep()
        return [s for s in self._live.values() if model is None or s.model == model]

    def delete(self, session_id: str) -> None:
        """Removes a live session; its id is then unknown (SESSION_NOT_FOUND)."""
        self._bytes -= self.get(session_id).state.nbytes
        del self._live[session_id]
        self._report()
        if self._observer:
            self._observer.session_gone("deleted")

    def fork(self, session_id: str, ttl_seconds: float = 0) -> Session:
        """A new session with an independent copy of the source's state (RNN state is fixed-size: cheap)."""
        source = self.get(session_id)
        if source.busy:  # the engine may hold its state mid-step: a copy now could be stale
            raise errors.SessionBusy(f"session {session_id!r} is in use by a stream; fork it when it is idle",
                                     session_id=session_id)
        source.busy = True  # room for the copy must not be made by evicting its source
        try:
            forked = self.create(source.model, source.state.copy(), ttl_seconds or source.ttl_seconds)
        finally:
            source.busy = False
        self._touch(source)
        return forked

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str) -> AsyncIterator[Session]:
        """Marks the session busy for one stream; busy sessions are neither expired nor evicted. A request for a
        session whose stream is ending (its client cancelled: "stop", then "go on") waits for it, not ABORTED."""
        session = self.get(session_id)
        if session.stream_ending:
            await session.until_free()
            session = self.get(session_id)  # (it may have gone meanwhile)
        if session.busy:
            raise errors.SessionBusy(f"session {session_id!r} is in use by another stream", session_id=session_id)
        session.busy, session.holder = True, asyncio.current_task()
        self._touch(session)
        try:
            yield session
        finally:
            session.set_free()
            if self._live.get(session.id) is session:  # it may have been deleted while in use
                self._touch(session)

    def sweep(self) -> int:
        """Removes expired idle sessions; returns how many."""
        now = self._clock()
        expired = [s.id for s in self._live.values() if not s.busy and now >= s.expires_at]
        for session_id in expired:
            self._remove(session_id, "SESSION_EXPIRED", "expired")
        return len(expired)

    def start(self) -> None:
        """Starts the periodic sweeper on the running event loop."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stops the sweeper."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_seconds)
            self.sweep()

    def _ttl(self, ttl_seconds: float) -> float:
        if ttl_seconds < 0 or ttl_seconds > self._config.max_ttl_seconds:
            raise errors.InvalidArgument("ttl_seconds", f"must be in [0, {self._config.max_ttl_seconds:g}] seconds")
        return ttl_seconds or self._config.ttl_seconds

    def _evict_one(self) -> None:
        victim = next((s.id for s in self._live.values() if not s.busy), None)
        if victim is None:
            raise errors.ResourceExhausted(f"all {self._config.max_sessions} sessions are in use; try again later")
        self._remove(victim, "SESSION_EVICTED", "evicted")

    def _touch(self, session: Session) -> None:
        session.last_used_at = self._clock()
        self._live.move_to_end(session.id)

    def _remove(self, session_id: str, reason: str, label: str) -> None:
        session = self._live.pop(session_id)
        self._bytes -= session.state.nbytes
        log.info("session %s %s (%s)", session_ref(session_id), label, _WHY[label],
                 extra={"session": session_ref(session_id), "model": session.model, "reason": label})
        self._gone[session_id] = reason
        while len(self._gone) > self._config.remember_gone:
            self._gone.popitem(last=False)
        self._report()
        if self._observer:
            self._observer.session_gone(label)

    def _report(self) -> None:
        if self._observer:
            self._observer.sessions(len(self._live), self._bytes)
