"""Sessions through the real server: continuation, forks, listing, TTL expiry and LRU eviction."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import error_info, generate

from service.config import SessionConfig


async def test_continuing_a_session_equals_one_shot_with_the_same_seed(stub) -> None:
    one = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-gru", prime="The keeper "))
    two = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-gru", prime="The keeper "))
    assert one.id != two.id and one.chars_consumed == len("The keeper ") and one.model == "tiny-gru:1"
    whole, _, _, _ = await generate(stub, session_id=one.id, max_chars=60, sampling=pb.SamplingParams(seed=9))
    first, _, f1, _ = await generate(stub, session_id=two.id, max_chars=25, sampling=pb.SamplingParams(seed=9))
    rest, _, f2, _ = await generate(stub, session_id=two.id, max_chars=35)  # no seed: the stream continues
    assert first + rest == whole
    assert f1.session_id == two.id and f2.model == "tiny-gru:1"
    # the same as a stateless request with the primed text as its prompt
    stateless, _, _, _ = await generate(stub, model="tiny-gru", prompt="The keeper ", max_chars=60,
                                        sampling=pb.SamplingParams(seed=9))
    assert stateless == whole
    got = await stub.GetSession(pb.GetSessionRequest(session_id=two.id))
    assert got.chars_consumed == len("The keeper ") + 60 and not got.busy and got.state_bytes > 0


async def test_a_fork_evolves_independently(stub) -> None:
    source = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-lstm", prime="He lit the stove"))
    fork = await stub.ForkSession(pb.ForkSessionRequest(session_id=source.id, ttl_seconds=77))
    assert fork.id != source.id and fork.ttl_seconds == 77 and fork.chars_consumed == source.chars_consumed
    on_fork, _, _, _ = await generate(stub, session_id=fork.id, prompt=", and", max_chars=50,
                                      sampling=pb.SamplingParams(seed=3))
    await generate(stub, session_id=fork.id, max_chars=30)  # the fork moves on
    on_source, _, _, _ = await generate(stub, session_id=source.id, prompt=", and", max_chars=50,
                                        sampling=pb.SamplingParams(seed=3))
    assert on_source == on_fork  # the source was untouched by what the fork did
    s = await stub.GetSession(pb.GetSessionRequest(session_id=source.id))
    f = await stub.GetSession(pb.GetSessionRequest(session_id=fork.id))
    assert s.chars_consumed == source.chars_consumed + 55 and f.chars_consumed == source.chars_consumed + 85


async def test_list_and_delete(stub) -> None:
    a = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-rnn"))
    b = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-gru", ttl_seconds=30))
    rnn = await stub.ListSessions(pb.ListSessionsRequest(model="tiny-rnn"))
    assert a.id in {s.id for s in rnn.sessions} and b.id not in {s.id for s in rnn.sessions}
    every = await stub.ListSessions(pb.ListSessionsRequest())
    assert {a.id, b.id} <= {s.id for s in every.sessions}
    assert b.ttl_seconds == 30 and b.expires_at == pytest.approx(b.last_used_at + 30)
    await stub.DeleteSession(pb.DeleteSessionRequest(session_id=a.id))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetSession(pb.GetSessionRequest(session_id=a.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and error_info(e.value).reason == "SESSION_NOT_FOUND"


async def test_idle_sessions_expire_and_say_so(server_factory) -> None:
    srv = server_factory(sessions=SessionConfig(ttl_seconds=0.3, sweep_seconds=0.1))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        s = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
        kept = await stub.CreateSession(pb.CreateSessionRequest(prime="The ", ttl_seconds=60))
        await asyncio.sleep(0.6)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(stub, session_id=s.id, max_chars=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(e.value).reason == "SESSION_EXPIRED" and "expired" in str(e.value.details())
        await generate(stub, session_id=kept.id, max_chars=5)


async def test_least_recently_used_idle_session_is_evicted(server_factory) -> None:
    srv = server_factory(sessions=SessionConfig(max_sessions=2))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        a = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
        b = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
        await generate(stub, session_id=a.id, max_chars=3)  # b is now the least recently used
        await stub.CreateSession(pb.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetSession(pb.GetSessionRequest(session_id=b.id))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and error_info(e.value).reason == "SESSION_EVICTED"
        await stub.GetSession(pb.GetSessionRequest(session_id=a.id))
