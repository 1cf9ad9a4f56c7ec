"""Every error path through the real server: its status code, its google.rpc.ErrorInfo reason and field."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import error_info, generate

from service.config import Limits

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def fails(coro, code: grpc.StatusCode, reason: str, field: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Awaits ``coro``, expecting it to fail with ``code`` and ErrorInfo ``reason``; returns the message."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    assert e.value.code() == code, e.value.details()
    info = error_info(e.value)
    assert info.reason == reason
    if field is not None:
        assert field in info.metadata["field"], info.metadata
        assert field in str(e.value.details())
    return str(e.value.details())


@pytest.mark.parametrize(("sampling", "field"), [
    (pb.SamplingParams(temperature=10.5), "temperature"),
    (pb.SamplingParams(temperature=-1), "temperature"),
    (pb.SamplingParams(top_k=1000), "top_k"),
    (pb.SamplingParams(top_p=1.5), "top_p"),
    (pb.SamplingParams(top_p=-0.1), "top_p"),
    (pb.SamplingParams(repetition_penalty=0.5), "repetition_penalty"),
    (pb.SamplingParams(repetition_penalty=11), "repetition_penalty"),
])
async def test_bad_sampling_parameter_names_the_field(stub, sampling: pb.SamplingParams, field: str) -> None:
    await fails(generate(stub, prompt="The ", max_chars=5, sampling=sampling), INVALID, "INVALID_ARGUMENT", field)


async def test_bad_generate_requests(stub) -> None:
    await fails(generate(stub, prompt="The ", max_chars=0), INVALID, "INVALID_ARGUMENT", "max_chars")
    msg = await fails(generate(stub, prompt="The ", max_chars=10**6), INVALID, "INVALID_ARGUMENT", "max_chars")
    assert "65536" in msg
    msg = await fails(generate(stub, prompt="The €", max_chars=5), INVALID, "INVALID_ARGUMENT", "prompt")
    assert "€" in msg and "U+20AC" in msg
    await fails(generate(stub, prompt="", max_chars=5), INVALID, "INVALID_ARGUMENT", "prompt")
    await fails(generate(stub, prompt="The ", max_chars=5, stop=[""]), INVALID, "INVALID_ARGUMENT", "stop")


async def test_unknown_model(stub) -> None:
    for model in ("nope", "tiny-lstm:7"):
        msg = await fails(generate(stub, model=model, prompt="a", max_chars=1), grpc.StatusCode.NOT_FOUND,
                          "MODEL_NOT_FOUND")
        assert model in msg and "tiny-gru:1" in msg  # names what is served
    await fails(stub.GetModel(pb.GetModelRequest(model="nope")), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    await fails(stub.CreateSession(pb.CreateSessionRequest(model="nope")), grpc.StatusCode.NOT_FOUND,
                "MODEL_NOT_FOUND")


async def test_session_errors(stub) -> None:
    nf = grpc.StatusCode.NOT_FOUND
    await fails(generate(stub, session_id="unknown", max_chars=1), nf, "SESSION_NOT_FOUND")
    await fails(stub.ForkSession(pb.ForkSessionRequest(session_id="unknown")), nf, "SESSION_NOT_FOUND")
    await fails(stub.DeleteSession(pb.DeleteSessionRequest(session_id="unknown")), nf, "SESSION_NOT_FOUND")
    await fails(stub.Feed(iter([pb.FeedRequest(session_id="unknown", text="a")])), nf, "SESSION_NOT_FOUND")
    await fails(stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=10**7)), INVALID, "INVALID_ARGUMENT",
                "ttl_seconds")
    s = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-rnn", prime="The "))
    await fails(generate(stub, session_id=s.id, model="tiny-gru", max_chars=1), grpc.StatusCode.FAILED_PRECONDITION,
                "FAILED_PRECONDITION", "model")
    fresh = await stub.CreateSession(pb.CreateSessionRequest(model="tiny-rnn"))
    await fails(generate(stub, session_id=fresh.id, max_chars=1), INVALID, "INVALID_ARGUMENT", "prompt")
    await fails(stub.Feed(iter([pb.FeedRequest(session_id=s.id, text="z€")])), INVALID, "INVALID_ARGUMENT", "text")
    await fails(stub.CreateSession(pb.CreateSessionRequest(prime="z€")), INVALID, "INVALID_ARGUMENT", "prime")


async def test_busy_session_is_aborted(stub) -> None:
    s = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
    long = stub.Generate(pb.GenerateRequest(session_id=s.id, max_chars=60000))
    assert (await long.read()).text
    await fails(generate(stub, session_id=s.id, max_chars=1), grpc.StatusCode.ABORTED, "SESSION_BUSY")
    await fails(stub.Feed(iter([pb.FeedRequest(session_id=s.id, text="a")])), grpc.StatusCode.ABORTED,
                "SESSION_BUSY")
    long.cancel()
    for _ in range(100):  # the disconnected stream releases the session
        if not (await stub.GetSession(pb.GetSessionRequest(session_id=s.id))).busy:
            break
        await asyncio.sleep(0.05)
    await generate(stub, session_id=s.id, max_chars=3)


async def test_limits(server_factory) -> None:
    srv = server_factory(limits=Limits(max_streams=1, max_prompt_chars=10, max_chars=100_000))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        await fails(generate(stub, prompt="a" * 11, max_chars=5), INVALID, "INVALID_ARGUMENT", "prompt")
        await fails(generate(stub, prompt="a", max_chars=100_001), INVALID, "INVALID_ARGUMENT", "max_chars")
        await fails(stub.CreateSession(pb.CreateSessionRequest(prime="a" * 11)), INVALID, "INVALID_ARGUMENT",
                    "prime")
        long = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=100_000))  # runs while the others fail
        assert (await long.read()).text
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        await fails(generate(stub, prompt="a", max_chars=5), exhausted, "RESOURCE_EXHAUSTED")
        await fails(stub.Feed(iter([pb.FeedRequest(text="a")])), exhausted, "RESOURCE_EXHAUSTED")
        long.cancel()


async def test_message_size_limit(server_factory) -> None:
    srv = server_factory(limits=Limits(max_message_bytes=1000))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(stub, prompt="a" * 2000, max_chars=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
