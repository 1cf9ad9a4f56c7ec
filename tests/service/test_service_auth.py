"""Bearer-token authentication and TLS files on the real server, through the generated stubs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.server import RunningServer, error_info, scrape, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.config import SecurityConfig

ServerFactory = Callable[..., RunningServer]


def bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{scheme} {token}"),)


def write_tokens(path: Path, *tokens: str) -> None:
    """Replaces the token file atomically, as a mounted Kubernetes secret is (a new inode)."""
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(tokens) + "\n")
    os.replace(tmp, path)


def refused(call: Callable[[], object]) -> str:
    """The ErrorInfo reason of a call that must fail with UNAUTHENTICATED."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value  # type: ignore[attr-defined]
    return error_info(e.value).reason


def test_every_kind_of_call_needs_the_token(server_factory: ServerFactory) -> None:
    srv = server_factory(security=SecurityConfig(auth_token="t0k3n"))
    with grpc.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        gen = pb.GenerateRequest(prompt="The ", max_chars=5)
        for md in ((), bearer("wrong"), bearer("t0k3n", scheme="Basic")):
            assert refused(lambda md=md: stub.ListModels(pb.ListModelsRequest(), metadata=md)) == "UNAUTHENTICATED"
            assert refused(lambda md=md: list(stub.Generate(gen, metadata=md))) == "UNAUTHENTICATED"
            assert refused(lambda md=md: stub.Feed(iter([pb.FeedRequest(text="x")]), metadata=md))
            assert refused(lambda md=md: list(stub.Chat(iter([pb.ChatRequest(open=pb.ChatOpen())]), metadata=md)))
        unknown = channel.unary_unary("/charlm.v1.TextGeneration/Nope")
        assert refused(lambda: unknown(b""))  # deny by default: unknown methods too
        with pytest.raises(grpc.RpcError) as e:
            unknown(b"", metadata=bearer("t0k3n"))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert stub.ListModels(pb.ListModelsRequest(), metadata=bearer("t0k3n", "bearer")).default_model
        text = "".join(r.text for r in stub.Generate(gen, metadata=bearer("t0k3n")))
        assert len(text) == 5
        # health and reflection stay open, for load balancers and grpcurl
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(iter(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))))
        assert "charlm.v1.TextGeneration" in {s.name for s in answer.list_services_response.service}
    m = scrape(str(srv.metrics_url))
    assert m['charlm_requests_total{code="UNAUTHENTICATED",rpc="ListModels"}'] == 3
    assert m['charlm_requests_total{code="UNAUTHENTICATED",rpc="Chat"}'] == 3
    assert not any('rpc="Nope"' in k for k in m)  # a caller's method names never become labels


def test_a_refused_call_is_in_the_access_log_and_not_timed(server_factory: ServerFactory,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    srv = server_factory(security=SecurityConfig(auth_token="t0k3n"), access_log=True)
    with caplog.at_level(logging.INFO, logger="service.access"), grpc.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)
        assert refused(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=bearer("wrong"))) == "UNAUTHENTICATED"
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1 and lines[0].code == "UNAUTHENTICATED" and lines[0].rpc == "ListModels"  # type: ignore[attr-defined]
    assert "wrong" not in caplog.text  # (the token it sent is not logged)
    m = scrape(str(srv.metrics_url))
    assert m['charlm_requests_total{code="UNAUTHENTICATED",rpc="ListModels"}'] == 1
    assert m.get('charlm_request_seconds_count{rpc="ListModels"}', 0) == 0  # refusals do not drag it to 0 s


def test_token_file_rotates_without_a_restart(server_factory: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    write_tokens(tokens, "old")
    srv = server_factory(security=SecurityConfig(auth_token_file=tokens, auth_token="fixed"))
    with grpc.insecure_channel(srv.target) as channel:
        stub = charlm_pb2_grpc.TextGenerationStub(channel)

        def models(token: str) -> object:
            return stub.ListModels(pb.ListModelsRequest(), metadata=bearer(token))

        assert models("old") and models("fixed")
        write_tokens(tokens, "# rotation: both for a while", "old", "new")
        assert models("old") and models("new")
        write_tokens(tokens, "new")
        assert models("new") and models("fixed")
        refused(lambda: models("old"))
        tokens.unlink()  # a file gone (or empty) mid-rotation keeps the tokens last read
        assert models("new")
        refused(lambda: models("old"))


@pytest.mark.parametrize(("security", "message"), [
    (lambda d: SecurityConfig(auth_token_file=d / "missing"), "--auth-token-file {d}/missing: cannot read it"),
    (lambda d: SecurityConfig(auth_token_file=d / "empty"), "--auth-token-file {d}/empty: holds no token"),
    (lambda d: SecurityConfig(tls_cert=d / "missing", tls_key=d / "empty"), "--tls-cert {d}/missing: cannot read"),
    (lambda d: SecurityConfig(tls_cert=d / "empty", tls_key=d / "empty"), "--tls-cert {d}/empty: not a PEM"),
    (lambda d: SecurityConfig(tls_cert=d / "server.pem", tls_key=d / "client.key"), "matching, unencrypted private"),
    (lambda d: SecurityConfig(tls_cert=d / "server.pem", tls_key=d / "server.key", tls_client_ca=d / "server.key"),
     "--tls-client-ca {d}/server.key: not PEM CA certificates"),
])
def test_bad_security_files_are_named(model_repo: Path, certs: Path, tmp_path: Path,
                                      security: Callable[[Path], SecurityConfig], message: str) -> None:
    for name in ("server.pem", "server.key", "client.key"):
        (tmp_path / name).write_bytes((certs / name).read_bytes())
    (tmp_path / "empty").write_text("\n# no token\n")
    with pytest.raises(ValueError) as e:
        start_server(model_repo, security=security(tmp_path))
    assert message.format(d=tmp_path) in str(e.value) and "\n" not in str(e.value)
