"""Retries: UNAVAILABLE is retried on idempotent calls only.

The real server never fails on purpose, so this unit test of the client's channel configuration uses a
stand-in servicer that answers UNAVAILABLE a set number of times before succeeding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc

from client import Client, Unavailable


class Flaky(charlm_pb2_grpc.TextGenerationServicer):
    """Fails the first ``failures`` calls of each method with UNAVAILABLE, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()

    def _maybe_fail(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        self._maybe_fail("GetModel", context)
        return pb.ModelInfo(name="m", version=1)

    def Generate(self, request: pb.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.GenerateResponse]:
        self._maybe_fail("Generate", context)
        yield pb.GenerateResponse(text="x", finish=pb.Finish(reason=pb.FINISH_REASON_LENGTH, generated_chars=1))

    def DeleteSession(self, request: pb.DeleteSessionRequest,
                      context: grpc.ServicerContext) -> pb.DeleteSessionResponse:
        self._maybe_fail("DeleteSession", context)
        return pb.DeleteSessionResponse()


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    charlm_pb2_grpc.add_TextGenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_idempotent_call_is_retried(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, retries=4) as client:
        assert client.model("m").spec == "m:1"
    assert servicer.calls["GetModel"] == 3


def test_mutating_and_streaming_calls_are_not_retried(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, retries=4) as client:
        with pytest.raises(Unavailable):
            client.generate("a").result()
        with pytest.raises(Unavailable):
            client.delete_session("s")
    assert servicer.calls["Generate"] == 1 and servicer.calls["DeleteSession"] == 1


def test_retries_can_be_turned_off(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, retries=1) as client, pytest.raises(Unavailable) as err:
        client.model("m")
    assert err.value.message == "try again" and servicer.calls["GetModel"] == 1
