"""Operations: health, reflection, /metrics, cancellation, draining, and SIGTERM on a real `python -m service`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import error_info, generate, scrape
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.config import Limits

SERVICE = "charlm.v1.TextGeneration"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_and_reflection(server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        assert await health_of(channel, "") == SERVING
        assert await health_of(channel, SERVICE) == SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in response.list_services_response.service}
            assert {SERVICE, "grpc.health.v1.Health"} <= names



async def test_health_and_reflection_calls_carry_request_ids(server) -> None:
    tagged = (("x-request-id", "probe-7"),)
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        call = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), metadata=tagged)
        assert (await call).status == SERVING and ("x-request-id", "probe-7") in tuple(await call.trailing_metadata())
        call = health.Check(health_pb2.HealthCheckRequest())  # no id sent: a fresh one
        await call
        fresh = [v for k, v in await call.trailing_metadata() if k == "x-request-id"]
        assert len(fresh) == 1 and len(fresh[0]) == 16 and int(fresh[0], 16) >= 0
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health.Check(health_pb2.HealthCheckRequest(service="charlm.v2.Nope"), metadata=tagged)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'charlm.v2.Nope'" in (e.value.details() or "") and repr(SERVICE) in (e.value.details() or "")
        assert ("x-request-id", "probe-7") in tuple(e.value.trailing_metadata() or ())
        assert error_info(e.value).reason == "SERVICE_NOT_FOUND"
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            metadata=tagged)  # fmt: skip
        assert [r.list_services_response.service[0].name async for r in call]
        assert ("x-request-id", "probe-7") in tuple(await call.trailing_metadata())


async def test_metrics_endpoint(server, stub) -> None:
    s = await stub.CreateSession(pb.CreateSessionRequest(prime="The "))
    await generate(stub, session_id=s.id, max_chars=30)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetModel(pb.GetModelRequest(model="nope"))
    m = scrape(server.metrics_url)
    assert m['charlm_requests_total{code="OK",rpc="Generate"}'] >= 1
    assert m['charlm_requests_total{code="NOT_FOUND",rpc="GetModel"}'] >= 1
    assert m['charlm_chars_generated_total{model="tiny-lstm:1"}'] >= 30
    assert m["charlm_active_sessions"] >= 1 and m["charlm_session_state_bytes"] > 0
    assert m["charlm_active_streams"] == 0
    for histogram in ("charlm_batch_size", "charlm_step_seconds", "charlm_time_to_first_char_seconds"):
        assert m[f'{histogram}_count{{model="tiny-lstm:1"}}'] >= 1
    # the lanes and the choices measured at start (service/tuning.py)
    assert m['charlm_lanes{model="tiny-lstm:1"}'] >= 1 and m['charlm_lane_fill{model="tiny-lstm:1"}'] >= 1
    assert m['charlm_lane_all_threads_rows{model="tiny-lstm:1"}'] >= 1
    assert m['charlm_decode_int8{model="tiny-lstm:1"}'] == 1  # auto, the default: int8 on the CPU
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        assert "charlm_sessions_removed_total" in r.read().decode()  # declared even before any removal


async def test_process_metrics_request_durations_and_draining(server, stub, caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    await stub.ListModels(pb.ListModelsRequest())
    await generate(stub, prompt="The ", max_chars=20)
    m = scrape(server.metrics_url)
    assert m["process_resident_memory_bytes"] > 0 and m["process_cpu_seconds_total"] > 0
    assert any(k.startswith("python_info{") for k in m)
    assert m['charlm_request_seconds_count{rpc="ListModels"}'] >= 1
    assert m['charlm_request_seconds_bucket{le="0.0005",rpc="Generate"}'] == 0  # a stream takes longer
    assert m['charlm_request_seconds_bucket{le="600.0",rpc="Generate"}'] >= 1
    assert m["charlm_draining"] == 0
    assert not [r for r in caplog.records if r.name == "service.access"]  # the access log is off by default


async def test_cancelling_a_stream_frees_its_slot(server_factory) -> None:
    srv = server_factory(limits=Limits(max_streams=1))
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        for _ in range(3):  # each cancelled stream leaves room for the next one
            call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=60000))
            assert (await call.read()).text
            call.cancel()
            for _ in range(100):
                if scrape(srv.metrics_url)["charlm_active_streams"] == 0:
                    break
                await asyncio.sleep(0.05)
        text, _, _, _ = await generate(stub, prompt="The ", max_chars=10)
        assert len(text) == 10


async def test_draining_refuses_new_work_and_finishes_in_flight(server_factory) -> None:
    srv = server_factory(grace_seconds=5.0)
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        in_flight = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=3000))
        first = await in_flight.read()
        drained = srv.drain()
        await asyncio.sleep(0.2)
        assert await health_of(channel, "") == NOT_SERVING and await health_of(channel, SERVICE) == NOT_SERVING
        assert scrape(srv.metrics_url)["charlm_draining"] == 1
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(stub, prompt="a", max_chars=1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and error_info(e.value).reason == "DRAINING"
        text = [first.text]
        while (r := await in_flight.read()) != grpc.aio.EOF:  # type: ignore[attr-defined]
            text.append(r.text)
            finish = r.finish if r.HasField("finish") else None
        assert finish is not None and finish.reason == pb.FINISH_REASON_LENGTH and len("".join(text)) == 3000
        await asyncio.wrap_future(drained)


async def test_streams_still_running_after_the_grace_period_end_cancelled(server_factory) -> None:
    srv = server_factory(grace_seconds=0.2)
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        call = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=65536))
        text = [(await call.read()).text]
        srv.drain()
        while (r := await call.read()) != grpc.aio.EOF:  # type: ignore[attr-defined]
            text.append(r.text)
            finish = r.finish if r.HasField("finish") else None
        assert finish is not None and finish.reason == pb.FINISH_REASON_CANCELLED
        assert finish.generated_chars == len("".join(text)) < 65536


async def test_draining_refuses_new_chat_turns_and_ends_idle_feed_and_chat_streams(server_factory) -> None:
    srv = server_factory(grace_seconds=0.5)
    async with grpc.aio.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        chats = [stub.Chat(), stub.Chat()]
        for chat in chats:
            await chat.write(pb.ChatRequest(open=pb.ChatOpen(model="tiny-lstm")))
            await chat.read()
            await chat.write(pb.ChatRequest(feed="The "))
            await chat.read()
        feed = stub.Feed()
        await feed.write(pb.FeedRequest(model="tiny-lstm", text="The keeper"))
        drained = srv.drain()
        await asyncio.sleep(0.1)
        await chats[0].write(pb.ChatRequest(generate=pb.ChatGenerate(max_chars=5)))  # a new turn is new work
        ended = [chats[0].read(), chats[1].read(), feed]  # the other two wait idle until the grace period ends
        for call in ended:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and error_info(e.value).reason == "DRAINING"
        await asyncio.wrap_future(drained)


def test_sigterm_drains_and_exits_zero(model_repo: Path, tmp_path: Path) -> None:
    log = (tmp_path / "server.log").open("w+")
    proc = python_m_service(model_repo, log, CHARLM_METRICS_PORT="-1", CHARLM_GRACE_SECONDS="5")
    try:
        port = serving_record(proc, Path(log.name))["port"]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        stream = stub.Generate(pb.GenerateRequest(prompt="The ", max_chars=2000))
        text = [next(stream).text]
        proc.send_signal(signal.SIGTERM)
        finish = None
        for r in stream:  # the in-flight stream completes (or ends cleanly, cancelled) despite the signal
            text.append(r.text)
            if r.HasField("finish"):
                finish = r.finish
        assert finish is not None and finish.generated_chars == len("".join(text))
        assert proc.wait(timeout=30) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    lines = [json.loads(ln) for ln in Path(log.name).read_text().splitlines() if ln.startswith("{")]
    assert any(ln["msg"] == "stopped" for ln in lines)


def test_what_the_start_made_is_kept_out_of_the_collectors_passes(model_repo: Path, tmp_path: Path) -> None:
    log = (tmp_path / "server.log").open("w+")
    proc = python_m_service(model_repo, log, CHARLM_METRICS_PORT="0")
    try:
        serving = serving_record(proc, Path(log.name))
        url = f"http://127.0.0.1:{serving['metrics_port']}/metrics"
        deadline = time.monotonic() + 30
        while (frozen := scrape(url)["charlm_gc_frozen_objects"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # (the gauge is set just after the "serving" line)
        # the modules, the models and gRPC's objects: tens of thousands, none of them walked by a full collection
        assert frozen > 10_000
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def python_m_service(model_repo: Path, log: IO[str], **env: str) -> subprocess.Popen[bytes]:
    """A real `python -m service` on a free port, logging JSON lines to ``log``, with ``env`` added to ours."""
    return subprocess.Popen([sys.executable, "-m", "service", "--model-repo", str(model_repo), "--port", "0"],
                            cwd=Path(__file__).resolve().parents[2], stderr=log, stdout=log,
                            env={**os.environ, "CHARLM_LOG_FORMAT": "json", **env})  # fmt: skip


def serving_record(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> dict[str, Any]:
    """The server's structured "serving" log line, once it is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            if line.startswith("{") and "port" in (record := json.loads(line)):
                return record
        time.sleep(0.1)
    raise AssertionError(f"server did not start: {log.read_text()}")
