"""Certificates rotated under a running server: new connections get the new files, a broken file changes nothing.

The files are replaced as cert-manager or certbot do, by writing a temporary file and renaming it over the old one.
`certs` and `other_certs` (tests/fixtures/tls.py) come from two unrelated CAs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.server import RunningServer

from client import Client, Unavailable
from service.config import SecurityConfig

SERVER = ("server.pem", "server.key")


def put(data: bytes, dst: Path) -> None:
    """Replaces ``dst`` atomically with ``data`` (write a temporary file, then rename it over ``dst``)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def copy(src: Path, dst: Path, *names: str) -> None:
    """Puts the files ``names`` of folder ``src`` into folder ``dst``, one after the other."""
    for name in names:
        put((src / name).read_bytes(), dst / name)


def reaches(srv: RunningServer, trusted: Path, client_certs: Path | None = None) -> bool:
    """True when a new channel trusting only ``trusted``/ca.pem (presenting ``client_certs``' client
    certificate, if given) completes a health check."""
    mutual: dict[str, Any] = {} if client_certs is None else {"cert_file": client_certs / "client.pem",
                                              "key_file": client_certs / "client.key"}
    with Client(srv.target, ca_file=trusted / "ca.pem", retries=1, timeout=5, **mutual) as client:
        try:
            return client.health() == "SERVING"
        except Unavailable:
            return False


@pytest.fixture
def rotating(server_factory: Callable[..., RunningServer], certs: Path, tmp_path: Path) -> RunningServer:
    """A TLS server whose certificate and key (those of `certs`) are files in tmp_path that a test may replace."""
    copy(certs, tmp_path, *SERVER)
    return server_factory(security=SecurityConfig(tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key"))


def test_a_certificate_from_a_new_ca_is_served_to_new_connections(
        rotating: RunningServer, certs: Path, other_certs: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.tls")
    assert reaches(rotating, certs) and not reaches(rotating, other_certs)
    with Client(rotating.target, ca_file=certs / "ca.pem") as before:
        assert before.health() == "SERVING"
        copy(other_certs, tmp_path, *SERVER)
        assert reaches(rotating, other_certs) and not reaches(rotating, certs)
        assert before.health() == "SERVING"  # a connection made before keeps its handshake
    assert [r.message for r in caplog.records if r.levelno == logging.INFO] == [
        f"tls: new certificate from {tmp_path / 'server.pem'}, {tmp_path / 'server.key'}"]


def test_a_broken_replacement_keeps_the_old_certificate(
        rotating: RunningServer, certs: Path, other_certs: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.tls")
    copy(other_certs, tmp_path, "server.pem")  # the new chain, the old key: they do not match (yet)
    for _ in range(2):
        assert reaches(rotating, certs) and not reaches(rotating, other_certs)
    put(b"garbage\n", tmp_path / "server.pem")  # e.g. a tool that writes in place, caught half-way
    assert reaches(rotating, certs)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [  # once per change, however many connections see it; the start-up checks' words
        f"tls: keeping the certificate loaded before: --tls-cert {tmp_path / 'server.pem'} / --tls-key "
        f"{tmp_path / 'server.key'}: not a PEM certificate chain and its matching, unencrypted private key "
        "(KEY_VALUES_MISMATCH)",
        f"tls: keeping the certificate loaded before: --tls-cert {tmp_path / 'server.pem'}: not a PEM certificate "
        "chain (no -----BEGIN line)"]
    copy(other_certs, tmp_path, *SERVER)  # the complete pair, at last
    assert reaches(rotating, other_certs) and not reaches(rotating, certs)


def test_a_replaced_client_ca_is_picked_up(server_factory: Callable[..., RunningServer], certs: Path,
                                           other_certs: Path, tmp_path: Path) -> None:
    copy(certs, tmp_path, "ca.pem")
    srv = server_factory(security=SecurityConfig(tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                                                 tls_client_ca=tmp_path / "ca.pem"))
    assert reaches(srv, certs, client_certs=certs) and not reaches(srv, certs, client_certs=other_certs)
    copy(other_certs, tmp_path, "ca.pem")  # client certificates are now signed by the other CA
    assert reaches(srv, certs, client_certs=other_certs) and not reaches(srv, certs, client_certs=certs)
