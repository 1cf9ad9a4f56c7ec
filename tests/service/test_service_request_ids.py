"""Request ids on the real server: the client's or a fresh one, sent back in the trailers, in the access log."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import RunningServer, error_info

from service.batch import DecodeBatch
from service.config import SecurityConfig
from service.requestid import request_id

FRESH = re.compile(r"[0-9a-f]{16}")


def sent_id(metadata: Any) -> str | None:
    """The x-request-id in some metadata, or None."""
    return next((v for k, v in metadata or () if k == "x-request-id"), None)


def with_id(rid: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", rid),)


async def test_a_client_id_comes_back_and_is_logged(logged_server: RunningServer, access_line: Any) -> None:
    async with grpc.aio.insecure_channel(logged_server.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=20), metadata=with_id("client id/1"))
        messages = [m async for m in call]
        assert messages[-1].HasField("finish") and sent_id(await call.trailing_metadata()) == "client id/1"
        assert sent_id(await call.initial_metadata()) is None  # (a batch of its own: see service/requestid.py)
        unary = stub.ListModels(pb.ListModelsRequest(), metadata=with_id("c" * 128))  # the longest kept
        await unary
        assert sent_id(await unary.trailing_metadata()) == "c" * 128
    generate, listed = access_line("client id/1"), access_line("c" * 128)
    assert (generate.rpc, generate.code, generate.chars_generated) == ("Generate", "OK", 20)
    assert (listed.rpc, listed.code) == ("ListModels", "OK")


async def test_a_failed_engine_step_names_the_requests_it_fails(logged_server: RunningServer,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    def failing(self: DecodeBatch, alone: bool = True) -> object:  # a fault in onnxruntime, one step or several
        raise RuntimeError("the onnxruntime call failed")

    monkeypatch.setattr(DecodeBatch, "step", failing)
    monkeypatch.setattr(DecodeBatch, "steps_call", failing)
    async with grpc.aio.insecure_channel(logged_server.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=20), metadata=with_id("failing call/7"))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            _ = [m async for m in call]  # (its first character comes from the prompt's call; the next, a step)
    assert e.value.code() == grpc.StatusCode.INTERNAL and sent_id(e.value.trailing_metadata()) == "failing call/7"
    # the step thread's line names the client's id, as the servicer's line about the same call does
    (step,) = [r for r in caplog.records if "engine step failed" in r.getMessage()]
    assert "failing call/7" in step.getMessage() and vars(step)["request_ids"] == "failing call/7"
    assert any(getattr(r, "request_id", "") == "failing call/7" and r.levelname == "ERROR" for r in caplog.records)


async def test_an_id_is_made_for_each_call_without_one(logged_server: RunningServer, access_line: Any) -> None:
    ids = []
    async with grpc.aio.insecure_channel(logged_server.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        for _ in range(2):
            call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=5))
            _ = [m async for m in call]
            ids.append(sent_id(await call.trailing_metadata()))
            session = stub.CreateSession(pb.CreateSessionRequest(prime="The "))
            await session
            ids.append(sent_id(await session.trailing_metadata()))
    assert all(rid is not None and FRESH.fullmatch(rid) for rid in ids), ids
    assert len(set(ids)) == 4, ids
    assert [access_line(rid).rpc for rid in ids] == ["Generate", "CreateSession"] * 2


@pytest.mark.parametrize("bad", ["x" * 129, ""])
async def test_an_unusable_id_is_replaced_and_the_call_goes_on(
    bad: str, logged_server: RunningServer, access_line: Any
) -> None:
    async with grpc.aio.insecure_channel(logged_server.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=5), metadata=with_id(bad))
        finish = [m async for m in call][-1].finish
        rid = sent_id(await call.trailing_metadata())
    assert finish.generated_chars == 5 and rid is not None and FRESH.fullmatch(rid), rid
    assert access_line(rid).code == "OK"


def test_what_grpc_clients_cannot_send_is_replaced_too() -> None:
    # gRPC's own clients refuse to send these (a header value must be printable ASCII); other clients might.
    for bad in ("tab\there", "caf\u00e9", "nul\x00", "\x7f", b"bytes", "y" * 129, ""):
        assert FRESH.fullmatch(request_id((("x-request-id", bad),))), bad
    assert request_id((("user-agent", "x"), ("x-request-id", "spaced out"))) == "spaced out"
    assert FRESH.fullmatch(request_id((("x-request-id", " spaced out "),)))  # (HTTP/2: no space at either end)
    assert request_id((("x-request-id", "x" * 200), ("x-request-id", "second"))) != "second"  # the first one counts
    assert FRESH.fullmatch(request_id(None)) and request_id(()) != request_id(())  # fresh each time


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_failed_call_names_the_id_the_access_log_has(
    streaming: bool, logged_server: RunningServer, access_line: Any
) -> None:
    async with grpc.aio.insecure_channel(logged_server.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            if streaming:  # INVALID_ARGUMENT before any message
                bad = pb.GenerateRequest(prompt="The ", sampling=pb.SamplingParams(temperature=50))
                _ = [m async for m in stub.Generate(bad)]
            else:
                await stub.GetModel(pb.GetModelRequest(model="no-such-model"), metadata=with_id("mine"))
    err = failed.value
    rid = sent_id(err.trailing_metadata())
    assert rid is not None and sent_id(err.initial_metadata()) is None
    assert error_info(err).reason == ("INVALID_ARGUMENT" if streaming else "MODEL_NOT_FOUND")
    line = access_line(rid)
    assert line.code == err.code().name and line.rpc == ("Generate" if streaming else "GetModel")
    assert streaming or rid == "mine"


def test_a_refused_call_has_its_id_in_the_trailers_and_the_log(server_factory: Any, access_line: Any) -> None:
    srv = server_factory(security=SecurityConfig(auth_token="t0k3n"), access_log=True)
    with grpc.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        ids = []
        for md in (with_id("refused-1"), ()):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=5), metadata=md))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ids.append(sent_id(refused.value.trailing_metadata()))
    assert ids[0] == "refused-1" and ids[1] is not None and FRESH.fullmatch(ids[1])
    for rid in ids:
        assert (access_line(rid).rpc, access_line(rid).code) == ("Generate", "UNAUTHENTICATED")
