"""service.tls.CertificateFiles, the fetcher gRPC core calls before each handshake, without a server."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from service import tls
from service.config import SecurityConfig


@pytest.fixture
def files(certs: Path, tmp_path: Path) -> tls.CertificateFiles:
    """The fetcher over copies of `certs`' server certificate and key in tmp_path."""
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((certs / name).read_bytes())
    return tls.CertificateFiles(SecurityConfig(tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key"))


def touch(path: Path) -> None:
    """Renames a copy of ``path`` over it, as certificate tools do: a new inode, so a new stamp."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def test_files_are_read_again_only_when_they_change(files: tls.CertificateFiles, tmp_path: Path) -> None:
    assert isinstance(files.initial, grpc.ServerCertificateConfiguration)
    assert files.fetch() is None
    touch(tmp_path / "server.key")
    assert isinstance(files.fetch(), grpc.ServerCertificateConfiguration)
    assert files.fetch() is None


def test_concurrent_handshakes_take_a_change_once(files: tls.CertificateFiles, tmp_path: Path) -> None:
    touch(tmp_path / "server.pem")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: files.fetch(), range(64)))
    assert sum(r is not None for r in results) == 1


def test_files_replaced_while_being_read_are_read_again(files: tls.CertificateFiles, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    load = tls._load

    def load_then_replace(cfg: SecurityConfig) -> Any:
        config = load(cfg)
        touch(tmp_path / "server.key")  # the next key lands between the reads of a pair
        return config

    monkeypatch.setattr(tls, "_load", load_then_replace)
    touch(tmp_path / "server.pem")
    assert files.fetch() is None  # a pair read across a change may not match
    monkeypatch.setattr(tls, "_load", load)
    assert files.fetch() is not None


def test_a_file_gone_between_its_read_and_its_check_keeps_the_old_certificate(
        files: tls.CertificateFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    check, key = tls._check, tmp_path / "server.key"
    saved = key.read_bytes()

    def remove_then_check(cfg: SecurityConfig) -> None:
        key.unlink()  # a rotation that removes the old file before it writes the new one
        check(cfg)

    monkeypatch.setattr(tls, "_check", remove_then_check)
    touch(tmp_path / "server.pem")
    assert files.fetch() is None  # a one-line warning, not an exception into gRPC core (a traceback, per handshake)
    assert "tls: keeping the certificate loaded before: --tls-cert" in caplog.text
    monkeypatch.setattr(tls, "_check", check)
    key.write_bytes(saved)
    assert files.fetch() is not None
