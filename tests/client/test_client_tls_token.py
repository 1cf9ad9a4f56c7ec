"""TLS (server-verified and mutual) and bearer tokens against the real charlm server, through the library and CLI.

Certificates come from the `certs` fixture (tests/fixtures/tls.py, made by openssl for localhost/127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from fixtures.charlm_client import PROMPT, REPO, assert_one_line_error, cli_command, cli_env
from fixtures.server import RunningServer, start_server

from client import Client, Unauthenticated, Unavailable
from service.config import SecurityConfig

TOKEN = "s3cret-token"


def run_cli(target: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`charlm ARGS` against ``target``, with CHARLM_TOKEN set to ``token`` (unset when None)."""
    env = {k: v for k, v in cli_env(target).items() if k != "CHARLM_TOKEN"}
    if token is not None:
        env["CHARLM_TOKEN"] = token
    return subprocess.run(cli_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(model_repo: Path, certs: Path) -> Iterator[RunningServer]:
    """TLS with the server's certificate only, and a bearer token."""
    srv = start_server(model_repo, security=SecurityConfig(auth_token=TOKEN, tls_cert=certs / "server.pem",
                                                           tls_key=certs / "server.key"))
    yield srv
    srv.stop()


@pytest.fixture
def mtls_server(server_factory: Callable[..., RunningServer], certs: Path, tmp_path: Path) -> RunningServer:
    """Mutual TLS (client certificates signed by ca.pem required) and tokens from a file."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# accepted tokens\nold-token\n{TOKEN}\n")
    return server_factory(security=SecurityConfig(auth_token_file=tokens, tls_cert=certs / "server.pem",
                                                  tls_key=certs / "server.key", tls_client_ca=certs / "ca.pem"))


def test_tls_and_token_through_the_library(tls_server: RunningServer, certs: Path) -> None:
    with Client(tls_server.target, ca_file=certs / "ca.pem", token=TOKEN) as client:
        assert client.models().default_model == "tiny-lstm:1"
        assert len("".join(client.generate(PROMPT, max_chars=20, seed=1))) == 20
    for token in (None, "wrong"):
        with Client(tls_server.target, ca_file=certs / "ca.pem", token=token) as client:
            assert client.health() == "SERVING"  # health stays open: load balancers and healthchecks need no token
            with pytest.raises(Unauthenticated) as e:
                client.models()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.reason == "UNAUTHENTICATED"
            with pytest.raises(Unauthenticated):
                "".join(client.generate(PROMPT, max_chars=5))  # streaming calls too
    with Client(tls_server.target, token=TOKEN, retries=1, timeout=5) as plaintext, pytest.raises(Unavailable):
        plaintext.models()  # the port speaks TLS only


def test_mutual_tls_through_the_library(mtls_server: RunningServer, certs: Path) -> None:
    mutual = {"ca_file": certs / "ca.pem", "cert_file": certs / "client.pem", "key_file": certs / "client.key"}
    for token in (TOKEN, "old-token"):  # every line of the token file is accepted
        with Client(mtls_server.target, token=token, **mutual) as client:
            session = client.create_session(prime="The ")
            assert "".join(session.generate(max_chars=10, seed=2))
    with Client(mtls_server.target, ca_file=certs / "ca.pem", token=TOKEN, retries=1, timeout=5) as no_cert, \
            pytest.raises(Unavailable):
        no_cert.models()  # the server demands a client certificate
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        Client(mtls_server.target, ca_file=certs / "ca.pem", cert_file=certs / "client.pem")


def test_mutual_tls_and_token_through_the_cli(mtls_server: RunningServer, certs: Path) -> None:
    tls = ("--ca", str(certs / "ca.pem"), "--cert", str(certs / "client.pem"), "--key", str(certs / "client.key"))
    proc = run_cli(mtls_server.target, "models", "--json", *tls, token=TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["default_model"] == "tiny-lstm:1"
    health = run_cli(mtls_server.target, "health", *tls)  # the container healthcheck: no token needed
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    for token in (None, "wrong"):
        line = assert_one_line_error(run_cli(mtls_server.target, "models", *tls, token=token), "UNAUTHENTICATED")
        assert "--token" in line  # the hint says what to pass


def test_tls_health_through_the_cli_needs_only_the_ca(tls_server: RunningServer, certs: Path) -> None:
    proc = run_cli(tls_server.target, "health", "--ca", str(certs / "ca.pem"))
    assert (proc.returncode, proc.stdout.strip()) == (0, "SERVING"), proc.stderr
    assert run_cli(tls_server.target, "health", "--timeout", "3").returncode != 0  # plaintext gets nowhere
