"""TLS (server-verified and mutual) and the bearer token, through the library and the CLI.

The charlm server has no TLS of its own (it sits behind a proxy that terminates it), so these tests put the
client's channel options against a stand-in servicer served over TLS with certificates made by openssl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc
from fixtures.charlm_client import REPO, cli_command, cli_env

from client import Client, Unavailable

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(name: str, cwd: Path) -> None:
    """A P-256 key and a certificate for localhost/127.0.0.1 signed by ca.pem."""
    (cwd / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, server.{pem,key} and client.{pem,key} in one folder."""
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=charlm-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign", cwd=d)
    _issue("server", d)
    _issue("client", d)
    return d


class Recorder(charlm_pb2_grpc.TextGenerationServicer):
    """Answers ListModels and remembers the authorization metadata it saw."""

    def __init__(self) -> None:
        self.authorization: list[str] = []

    def ListModels(self, request: pb.ListModelsRequest,
                   context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self.authorization += [str(v) for k, v in context.invocation_metadata() if k == "authorization"]
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="m", version=1)], default_model="m:1")


@pytest.fixture
def tls_server(certs: Path) -> Iterator[tuple[Recorder, str]]:
    """A mutual-TLS server (client certificates required) on an ephemeral port of localhost."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    charlm_pb2_grpc.add_TextGenerationServicer_to_server(recorder, server)
    creds = grpc.ssl_server_credentials([((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
                                        root_certificates=(certs / "ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    yield recorder, f"localhost:{port}"
    server.stop(None)


def test_mutual_tls_and_token_through_the_library(tls_server: tuple[Recorder, str], certs: Path) -> None:
    recorder, target = tls_server
    with Client(target, ca_file=certs / "ca.pem", cert_file=certs / "client.pem", key_file=certs / "client.key",
                token="s3cret") as client:
        assert client.models().default_model == "m:1"
    assert recorder.authorization == ["Bearer s3cret"]
    with Client(target, ca_file=certs / "ca.pem", retries=1, timeout=5) as no_cert, pytest.raises(Unavailable):
        no_cert.models()  # the server demands a client certificate
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        Client(target, ca_file=certs / "ca.pem", cert_file=certs / "client.pem")


def test_mutual_tls_and_token_through_the_cli(tls_server: tuple[Recorder, str], certs: Path) -> None:
    recorder, target = tls_server
    env = {**cli_env(target), "CHARLM_TOKEN": "from-env"}
    proc = subprocess.run(cli_command("models", "--json", "--ca", str(certs / "ca.pem"), "--cert",
                                      str(certs / "client.pem"), "--key", str(certs / "client.key")),
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["default_model"] == "m:1"
    assert recorder.authorization == ["Bearer from-env"]
