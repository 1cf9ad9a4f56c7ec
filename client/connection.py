"""Connection options and channel construction shared by the sync and asyncio clients."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from charlm.v1.metadata import REQUEST_ID_KEY, fresh_request_id, usable_request_id

from client.errors import invalid_argument

DEFAULT_TARGET = "127.0.0.1:50051"
_SERVICE = "charlm.v1.TextGeneration"
# Only calls that change nothing may be retried: a retried Generate/Feed/Chat/Create/Fork/Delete could run twice.
IDEMPOTENT_METHODS = ("GetModel", "ListModels", "GetSession", "ListSessions")


def target_from_env(default: str = DEFAULT_TARGET) -> str:
    """``CHARLM_TARGET`` if set, else the default."""
    return os.environ.get("CHARLM_TARGET") or default


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach the server: target, TLS, bearer token, default deadlines, keepalive and retries."""

    target: str = field(default_factory=target_from_env)  # read when the options are made: $CHARLM_TARGET or default
    tls: bool = False  # implied by ca_file / cert_file
    ca_file: Path | None = None  # PEM roots; None uses the system roots
    cert_file: Path | None = None  # PEM client certificate (mutual TLS), with key_file
    key_file: Path | None = None
    server_name: str | None = None  # override the TLS host name checked against the certificate
    token: str | None = None  # sent as "authorization: Bearer <token>" on every call
    request_id: str | None = None  # x-request-id of every call that names none (a job's tag); None = fresh each
    timeout: float | None = 30.0  # default deadline (s) of unary calls; None = no deadline
    stream_timeout: float | None = None  # default deadline (s) of Generate/Feed/Chat; None = no deadline
    keepalive_s: float | None = None  # HTTP/2 ping interval; None = no keepalive pings
    keepalive_timeout_s: float = 20.0
    retries: int = 4  # attempts for UNAVAILABLE on idempotent calls (1 = no retry)
    max_message_bytes: int = 16 * 1024 * 1024
    extra_options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def secure(self) -> bool:
        """True when the channel uses TLS."""
        return self.tls or self.ca_file is not None or self.cert_file is not None


def service_config(retries: int) -> str:
    """The gRPC service config: retry UNAVAILABLE with backoff, on idempotent methods only."""
    names: list[dict[str, str]] = [{"service": _SERVICE, "method": m} for m in IDEMPOTENT_METHODS]
    names.append({"service": "grpc.health.v1.Health", "method": "Check"})
    policy = {
        "maxAttempts": max(2, min(retries, 5)),
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config: dict[str, Any] = {"methodConfig": [{"name": names, "retryPolicy": policy}] if retries > 1 else []}
    return json.dumps(config)


def channel_options(opts: ConnectOptions) -> list[tuple[str, Any]]:
    """Channel arguments for grpc.(aio.)(secure_|insecure_)channel."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if opts.retries > 1 else 0),
        ("grpc.service_config", service_config(opts.retries)),
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
    ]
    if opts.keepalive_s is not None:
        options += [
            ("grpc.keepalive_time_ms", int(opts.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(opts.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if opts.server_name:
        options.append(("grpc.ssl_target_name_override", opts.server_name))
    return options + list(opts.extra_options)


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the {what}: {e.strerror}") from e


def credentials(opts: ConnectOptions) -> grpc.ChannelCredentials:
    """TLS channel credentials from the CA and client certificate files (ValueError naming an unreadable file)."""
    if (opts.cert_file is None) != (opts.key_file is None):
        raise ValueError("mutual TLS needs both a client certificate and its key (cert_file and key_file)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(opts.ca_file, "CA certificate"),
        private_key=_read(opts.key_file, "client key"),
        certificate_chain=_read(opts.cert_file, "client certificate"),
    )


Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CallMetadata:
    """What every call of a client sends (the bearer token), and the id of a call that names none."""

    base: Metadata = ()
    default_id: str | None = None  # ConnectOptions.request_id

    @classmethod
    def of(cls, opts: ConnectOptions) -> CallMetadata:
        """From the connection options: the token, if any, and the default request id."""
        return cls((("authorization", f"Bearer {opts.token}"),) if opts.token else (), opts.request_id)

    def for_call(self, request_id: str | None) -> tuple[Metadata, str]:
        """One call's metadata with ``x-request-id``, and the id: ``request_id``, else the default, else a fresh one
        (16 hex characters), so that a call's id is known before it starts. InvalidArgument, before anything is
        sent, for an id the server would not keep (gRPC itself fails a call whose metadata is not printable
        ASCII); None or "" fall back."""
        request_id = request_id or self.default_id or fresh_request_id()
        if not usable_request_id(request_id):
            raise invalid_argument("request_id", "must be 1 to 128 printable ASCII characters, no space at either end")
        return (*self.base, (REQUEST_ID_KEY, request_id)), request_id


def _check_target(target: str) -> None:
    # gRPC would log C-core errors to stderr for an empty target and then fail with an obscure message.
    if not target.strip():
        raise ValueError("the target is empty: pass host:port")


def sync_channel(opts: ConnectOptions) -> grpc.Channel:
    """A blocking channel for ``Client``."""
    _check_target(opts.target)
    if opts.secure:
        return grpc.secure_channel(opts.target, credentials(opts), channel_options(opts))
    return grpc.insecure_channel(opts.target, channel_options(opts))


def aio_channel(opts: ConnectOptions) -> grpc.aio.Channel:
    """An asyncio channel for ``AsyncClient`` (create it inside the running event loop)."""
    _check_target(opts.target)
    if opts.secure:
        return grpc.aio.secure_channel(opts.target, credentials(opts), channel_options(opts))
    return grpc.aio.insecure_channel(opts.target, channel_options(opts))
