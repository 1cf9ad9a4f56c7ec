"""Unit tests of the in-memory session store (no gRPC, no model): TTL, LRU eviction, busy lease, forks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest

from service import errors
from service.config import SessionConfig
from service.sessions import InMemorySessionStore
from service.types import SeqState


class Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Records what the store reports to its observer."""

    def __init__(self) -> None:
        self.active = 0
        self.bytes = 0
        self.gone: list[str] = []

    def sessions(self, active: int, state_bytes: int) -> None:
        self.active, self.bytes = active, state_bytes

    def session_gone(self, reason: str) -> None:
        self.gone.append(reason)


def state(seed: int = 0) -> SeqState:
    return SeqState((np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32)), seed=seed)


def store(clock: Clock, rec: Recorder | None = None, **kw: Any) -> InMemorySessionStore:
    return InMemorySessionStore(SessionConfig(**{"ttl_seconds": 10, "max_sessions": 3, **kw}), rec, clock)


def reason_of(store: InMemorySessionStore, session_id: str) -> str:
    with pytest.raises(errors.NotFound) as e:
        store.get(session_id)
    return e.value.reason


def test_ids_are_unguessable_unique_and_safe_as_arguments() -> None:
    s = store(Clock(), max_sessions=1000)
    ids = {s.create("m:1", state()).id for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) >= 32 for i in ids)
    assert not any(i.startswith("-") for i in ids)  # `charlm sessions delete ID` would take it for an option


def test_idle_ttl_expires_and_reason_is_remembered() -> None:
    clock, rec = Clock(), Recorder()
    s = store(clock, rec)
    a = s.create("m:1", state())
    b = s.create("m:1", state(), ttl_seconds=100)
    assert s.get(a.id).expires_at == clock.now + 10
    clock.now += 11
    assert s.sweep() == 1
    assert reason_of(s, a.id) == "SESSION_EXPIRED"
    assert s.get(b.id) is b
    assert reason_of(s, "no-such-id") == "SESSION_NOT_FOUND"
    assert rec.gone == ["expired"] and rec.active == 1


def test_get_notices_expiry_without_a_sweep() -> None:
    clock = Clock()
    s = store(clock)
    a = s.create("m:1", state(), ttl_seconds=5)
    clock.now += 5
    assert reason_of(s, a.id) == "SESSION_EXPIRED"


def test_ttl_above_the_bound_is_rejected() -> None:
    s = store(Clock(), max_ttl_seconds=60)
    with pytest.raises(errors.InvalidArgument) as e:
        s.create("m:1", state(), ttl_seconds=61)
    assert e.value.field == "ttl_seconds"


def test_lru_idle_session_is_evicted_when_full() -> None:
    clock, rec = Clock(), Recorder()
    s = store(clock, rec)
    a, b, c = (s.create("m:1", state()) for _ in range(3))
    clock.now += 1

    async def use(session_id: str) -> None:
        async with s.lease(session_id):
            pass

    asyncio.run(use(a.id))  # a is now the most recently used; b the least
    d = s.create("m:1", state())
    assert reason_of(s, b.id) == "SESSION_EVICTED"
    assert {x.id for x in s.list()} == {a.id, c.id, d.id}
    assert rec.gone == ["evicted"] and rec.active == 3 and rec.bytes == 3 * state().nbytes


def test_expiry_and_eviction_are_logged_with_the_ids_first_8_characters(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.sessions")
    clock = Clock()
    s = store(clock, max_sessions=2)
    expiring = s.create("m:1", state(), ttl_seconds=5)
    clock.now += 5
    s.sweep()
    evicted = s.create("m:1", state())
    s.create("m:1", state())
    s.create("m:1", state())  # the store is full: `evicted` is the least recently used
    lines = [(r.getMessage(), r.session, r.reason) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [(f"session {expiring.id[:8]} expired (idle past its TTL)", expiring.id[:8], "expired"),
                     (f"session {evicted.id[:8]} evicted (the least recently used idle one when the store was "
                      "full)", evicted.id[:8], "evicted")]
    assert expiring.id not in caplog.text and evicted.id not in caplog.text  # ids are bearer capabilities


async def test_busy_sessions_are_not_evicted_and_full_busy_store_is_exhausted() -> None:
    s = store(Clock(), max_sessions=1)
    a = s.create("m:1", state())
    async with s.lease(a.id):
        with pytest.raises(errors.ResourceExhausted):
            s.create("m:1", state())
    s.create("m:1", state())
    assert reason_of(s, a.id) == "SESSION_EVICTED"


async def test_lease_is_exclusive() -> None:
    clock = Clock()
    s = store(clock)
    a = s.create("m:1", state())
    async with s.lease(a.id) as leased:
        assert leased.busy
        with pytest.raises(errors.SessionBusy) as e:
            async with s.lease(a.id):
                pass
        assert e.value.reason == "SESSION_BUSY"
        with pytest.raises(errors.SessionBusy):
            s.fork(a.id)
        clock.now += 100  # a busy session never expires
        assert s.sweep() == 0
    assert not s.get(a.id).busy


async def test_lease_touches_last_used() -> None:
    clock = Clock()
    s = store(clock)
    a = s.create("m:1", state())
    clock.now += 8
    async with s.lease(a.id):
        pass
    clock.now += 8
    assert s.get(a.id) is a  # 16 s after creation but only 8 s idle


def test_fork_is_independent() -> None:
    s = store(Clock())
    a = s.create("m:1", state(seed=3), ttl_seconds=30)
    f = s.fork(a.id)
    assert f.id != a.id and f.ttl_seconds == 30 and f.model == "m:1"
    f.state.arrays[0][:] = 1.0
    assert not a.state.arrays[0].any()
    # the random streams start equal and then advance separately
    assert a.state.rng.random() == f.state.rng.random()
    a.state.rng.random()
    assert a.state.rng.random() != f.state.rng.random()


def test_a_fork_in_a_full_store_evicts_another_session_never_its_source() -> None:
    clock = Clock()
    s = store(clock)
    a, b, c = (s.create("m:1", state()) for _ in range(3))  # a is the least recently used
    f = s.fork(a.id)
    assert reason_of(s, b.id) == "SESSION_EVICTED"
    assert {x.id for x in s.list()} == {a.id, c.id, f.id}
    assert not s.get(a.id).busy


async def test_a_fork_with_only_its_source_idle_in_a_full_store_is_exhausted() -> None:
    s = store(Clock(), max_sessions=2)
    a, b = s.create("m:1", state()), s.create("m:1", state())
    async with s.lease(b.id):
        with pytest.raises(errors.ResourceExhausted):
            s.fork(a.id)
    assert s.get(a.id).id == a.id and not s.get(a.id).busy and len(s.list()) == 2


def test_a_copy_continues_the_random_stream_where_it_is() -> None:
    drawn = state(seed=4)
    drawn.rng.random(5)
    unseeded = SeqState((np.zeros((2, 8), np.float32),))  # its generator is the only record of its stream
    for st in (drawn, unseeded):
        copy = st.copy()
        assert copy.rng.random() == st.rng.random()


def test_delete_then_not_found() -> None:
    rec = Recorder()
    s = store(Clock(), rec)
    a = s.create("m:1", state())
    s.delete(a.id)
    assert reason_of(s, a.id) == "SESSION_NOT_FOUND"
    assert rec.gone == ["deleted"] and rec.active == 0 and rec.bytes == 0


def test_list_filters_by_model() -> None:
    s = store(Clock())
    a = s.create("m:1", state())
    s.create("n:1", state())
    assert [x.id for x in s.list("m:1")] == [a.id]


def test_gone_ids_are_bounded() -> None:
    clock = Clock()
    s = store(clock, remember_gone=2, max_sessions=10)
    ids = [s.create("m:1", state()).id for _ in range(3)]
    clock.now += 100
    s.sweep()
    assert [reason_of(s, i) for i in ids] == ["SESSION_NOT_FOUND", "SESSION_EXPIRED", "SESSION_EXPIRED"]


async def test_sweeper_runs_periodically() -> None:
    clock = Clock()
    s = store(clock, sweep_seconds=0.01)
    a = s.create("m:1", state())
    s.start()
    clock.now += 100
    await asyncio.sleep(0.05)
    await s.close()
    assert a.id not in {x.id for x in s.list()}
    assert reason_of(s, a.id) == "SESSION_EXPIRED"


def test_a_copy_continues_the_seed_draw_and_a_reseed_restarts_it() -> None:
    fresh, taken = state(seed=4), state(seed=4)
    first = taken.first_uniform()
    assert fresh.copy().first_uniform() == first  # not taken yet: the copy's first is the seed's too
    copy = taken.copy()
    assert copy.first_uniform() == taken.first_uniform() != first  # taken: both go on from the generator
    taken.reseed(4)
    assert taken.first_uniform() == first
