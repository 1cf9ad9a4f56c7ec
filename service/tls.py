"""The gRPC port's TLS credentials from PEM files, checked first so that a bad file is a one-line error, and
re-read when they change, so that certificates rotate without a restart."""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any

import grpc

from service.config import SecurityConfig, file_stamp

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]  # (mtime_ns, size, inode) per file, None where stat failed


def _read(path: Path, flag: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read the {what}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{flag} {path}: not a PEM {what} (no -----BEGIN line)")
    return data


def _no_password() -> bytes:
    # Without a callback, OpenSSL would ask for an encrypted key's passphrase on the terminal.
    raise ValueError("the key is encrypted")


def _check(cfg: SecurityConfig) -> None:
    """Parses the files with Python's ssl (gRPC says only that a handshake failed, later, per connection)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key), password=_no_password)
    except (OSError, ValueError) as e:  # (ssl.SSLError is an OSError; so is a file gone since _read: a rotation)
        raise ValueError(f"--tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: not a PEM certificate chain and its "
                         f"matching, unencrypted private key ({_why(e)})") from None
    if cfg.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.tls_client_ca))
        except OSError as e:
            raise ValueError(f"--tls-client-ca {cfg.tls_client_ca}: not PEM CA certificates ({_why(e)})") from None


def _why(e: Exception) -> object:
    """An ssl or file error's reason, in a few words."""
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or e


def _load(cfg: SecurityConfig) -> grpc.ServerCertificateConfiguration:
    """The files' certificate configuration, checked (ValueError with a one-line message naming flag and file)."""
    assert cfg.tls_cert is not None and cfg.tls_key is not None  # (server_credentials checked: TLS is on)
    cert = _read(cfg.tls_cert, "--tls-cert", "certificate chain")
    key = _read(cfg.tls_key, "--tls-key", "private key")
    ca = None if cfg.tls_client_ca is None else _read(cfg.tls_client_ca, "--tls-client-ca", "CA certificate")
    _check(cfg)
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


class CertificateFiles:
    """The certificate, key and client CA files, re-read when one changes (mtime, size, inode): see fetch()."""

    def __init__(self, cfg: SecurityConfig) -> None:
        self._cfg = cfg
        self._paths = [p for p in (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if p is not None]
        self._lock = threading.Lock()  # gRPC may call fetch() from several of its threads at once
        self._seen = self.stamp()  # the files' stamp last read, whether they were good or not
        self.initial = _load(cfg)  # a bad file at start is an error; later, the certificate loaded before stays

    def stamp(self) -> Stamp:
        """The files' (mtime_ns, size, inode), a stat each (~1 µs)."""
        return tuple(file_stamp(p) for p in self._paths)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The files' new configuration if they changed and are good, else None (gRPC keeps the one it has).

        gRPC core calls it before each new connection's handshake, on one of its own threads (no asyncio here).
        A broken file (half written, a key that does not match yet) is logged once and tried again once it
        changes: key and certificate are usually replaced one after the other.
        """
        with self._lock:
            stamp = self.stamp()
            if stamp == self._seen:
                return None
            self._seen = stamp
            try:
                config = _load(self._cfg)
            except ValueError as e:  # mid-rotation: keep serving the certificate loaded before
                log.warning("tls: keeping the certificate loaded before: %s", e)
                return None
        if self.stamp() != stamp:
            # Replaced while being read: the key may be from one pair, the chain from another. The next
            # connection sees the new stamp and reads the files again.
            return None
        log.info("tls: new certificate from %s", ", ".join(map(str, self._paths)))
        return config


def server_credentials(cfg: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials (client certificates required when ``tls_client_ca`` is set) that follow changes of the
    files, or None for plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    files = CertificateFiles(cfg)
    fetch: Any = files.fetch  # (grpc-stubs say it never returns None, grpc's docs that None means "unchanged")
    return grpc.dynamic_ssl_server_credentials(files.initial, fetch,
                                               require_client_authentication=cfg.tls_client_ca is not None)
