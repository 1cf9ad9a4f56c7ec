"""The gRPC port's TLS credentials from PEM files, checked first so that a bad file is a one-line error."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from service.config import SecurityConfig


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
    except (ssl.SSLError, ValueError) as e:
        raise ValueError(f"--tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: not a PEM certificate chain and its "
                         f"matching, unencrypted private key ({getattr(e, 'reason', None) or e})") from None
    if cfg.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.tls_client_ca))
        except ssl.SSLError as e:
            raise ValueError(f"--tls-client-ca {cfg.tls_client_ca}: not PEM CA certificates "
                             f"({e.reason or e})") from None


def server_credentials(cfg: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials (client certificates required when ``tls_client_ca`` is set), or None for plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    cert = _read(cfg.tls_cert, "--tls-cert", "certificate chain")
    key = _read(cfg.tls_key, "--tls-key", "private key")
    ca = None if cfg.tls_client_ca is None else _read(cfg.tls_client_ca, "--tls-client-ca", "CA certificate")
    _check(cfg)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
