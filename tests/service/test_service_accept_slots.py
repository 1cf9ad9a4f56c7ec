"""Accept slots (service/accept.py): Generate calls taken through more than one pending request, on the real server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import RunningServer, error_info, generate

from service.accept import TESTED, supported
from service.config import SecurityConfig

ServerFactory = Callable[..., RunningServer]
needs_slots = pytest.mark.skipif(not supported(), reason=f"grpcio {grpc.__version__}: accept slots off")


async def burst(target: str, calls: int, metadata: tuple[tuple[str, str], ...] = ()) -> list[str | grpc.StatusCode]:
    """``calls`` Generate calls started at once (seed i, 40 characters): each one's text, or its status code."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)

        async def one(i: int) -> str | grpc.StatusCode:
            try:
                request = pb.GenerateRequest(prompt="The ", max_chars=40, sampling=pb.SamplingParams(seed=i))
                text = ""
                async for r in stub.Generate(request, metadata=metadata):
                    text += r.text
                return text
            except grpc.aio.AioRpcError as e:
                return e.code()

        return list(await asyncio.gather(*(one(i) for i in range(calls))))


def test_the_gate_takes_only_the_versions_the_slots_were_tested_with() -> None:
    assert TESTED and all(v.endswith(".") for v in TESTED)  # "1.85." cannot match 1.850
    assert supported("1.85.3") and supported("1.85.1")
    assert not supported("1.86.0") and not supported("1.8.5") and not supported("2.0.0")


@needs_slots
def test_a_burst_through_the_slots_gets_the_text_grpc_aio_alone_gives(server_factory: ServerFactory) -> None:
    with_slots, without = server_factory(accept_slots=16), server_factory(accept_slots=0)
    assert without.server.slots is None and with_slots.server.slots is not None
    texts = asyncio.run(burst(with_slots.target, 48))
    assert all(isinstance(t, str) and len(t) == 40 for t in texts), texts
    assert with_slots.server.slots.accepted >= 24  # most of the burst came through the 16 slots, not grpc.aio's one
    assert texts == asyncio.run(burst(without.target, 48))  # seeded: the same text whichever request took the call
    assert len(set(texts)) > 40


@needs_slots
def test_calls_the_slots_take_go_through_the_servers_interceptors(server_factory: ServerFactory) -> None:
    srv = server_factory(accept_slots=8, security=SecurityConfig(auth_token="t0k3n"))
    assert srv.server.slots is not None
    assert asyncio.run(burst(srv.target, 24)) == [grpc.StatusCode.UNAUTHENTICATED] * 24
    refused_by_slots = srv.server.slots.accepted
    assert refused_by_slots >= 12
    texts = asyncio.run(burst(srv.target, 24, (("authorization", "Bearer t0k3n"),)))
    assert all(isinstance(t, str) and len(t) == 40 for t in texts), texts
    assert srv.server.slots.accepted >= refused_by_slots + 12


@needs_slots
def test_errors_of_calls_the_slots_take_keep_their_status_and_details(server_factory: ServerFactory) -> None:
    srv = server_factory(accept_slots=4)

    async def bad() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = charlm_pb2_grpc.TextGenerationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await generate(stub, prompt="x", model="no-such-model")
            return e.value

    async def eight() -> list[grpc.aio.AioRpcError]:
        return list(await asyncio.gather(*(bad() for _ in range(8))))

    errors = asyncio.run(eight())
    assert srv.server.slots is not None and srv.server.slots.accepted >= 4
    assert {e.code() for e in errors} == {grpc.StatusCode.NOT_FOUND}
    assert {error_info(e).reason for e in errors} == {"MODEL_NOT_FOUND"}


@needs_slots
def test_a_server_with_slots_stops_with_streams_in_flight(server_factory: ServerFactory,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    srv = server_factory(accept_slots=16, grace_seconds=0.2)
    slots = srv.server.slots
    assert slots is not None

    async def streams_then_stop() -> list[BaseException | str]:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = charlm_pb2_grpc.TextGenerationStub(channel)

            async def long(i: int) -> str:
                request = pb.GenerateRequest(prompt="The ", max_chars=60000, sampling=pb.SamplingParams(seed=i))
                return "".join([r.text async for r in stub.Generate(request)])

            calls = [asyncio.ensure_future(long(i)) for i in range(8)]
            await asyncio.sleep(0.5)  # all streaming
            await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)

    ended = asyncio.run(streams_then_stop())
    assert len(ended) == 8 and slots.accepted >= 4
    assert all(isinstance(e, grpc.aio.AioRpcError) or (isinstance(e, str) and len(e) < 60000) for e in ended), ended
    assert not any("accept slot" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)


def test_on_an_untested_grpcio_the_server_serves_without_slots(server_factory: ServerFactory,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service")
    monkeypatch.setattr(grpc, "__version__", "1.99.0")
    srv = server_factory(accept_slots=16)
    assert srv.server.slots is None
    assert any("accept slots off: grpcio 1.99.0" in r.getMessage() for r in caplog.records)
    assert any("accept slots 0)" in r.getMessage() for r in caplog.records if r.name == "service.server")
    texts = asyncio.run(burst(srv.target, 16))
    assert all(isinstance(t, str) and len(t) == 40 for t in texts), texts
