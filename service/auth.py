"""Bearer-token authentication of charlm.v1 calls: a grpc.aio server interceptor over a rotatable token set.

Health (grpc.health.v1) and reflection stay open, so that load balancers and healthchecks need no token; every
other method, known or not, needs ``authorization: Bearer <token>`` matching an accepted token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from charlm.v1 import charlm_pb2

from service import errors
from service.config import file_stamp, visible_ascii
from service.logs import Call, log_access
from service.metrics import Metrics
from service.requestid import request_id
from service.servicer import abort

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
_SERVICE = charlm_pb2.DESCRIPTOR.services_by_name["TextGeneration"]
# Counted by name in charlm_requests_total; any other method name is the caller's to choose, so not a label.
_KNOWN = {f"/{_SERVICE.full_name}/{m}": m for m in _SERVICE.methods_by_name}


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """The tokens of a token file: one per line, blank lines and ``#`` comments skipped (ValueError if none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--auth-token-file {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    tokens = [t.strip() for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]
    for n, t in enumerate(tokens, 1):
        if not visible_ascii(t):
            raise ValueError(f"--auth-token-file {path}: token {n} is not printable ASCII without spaces")
    if not tokens:
        raise ValueError(f"--auth-token-file {path}: holds no token (one per line)")
    return tuple(t.encode() for t in tokens)


class Tokens:
    """The accepted tokens: the fixed one, and the file's, re-read when the file changes (mtime, size, inode)."""

    def __init__(self, token: str = "", path: Path | None = None) -> None:
        self._fixed = (token.encode(),) if token else ()
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: tuple[bytes, ...] = ()
        if path is not None:
            self._stamp = file_stamp(path)
            self._from_file = read_tokens(path)  # a bad file at start is an error; later, the old tokens stay

    def current(self) -> tuple[bytes, ...]:
        """Every accepted token, the file re-read first if it changed (a stat per call: ~1 µs)."""
        if self._path is not None:
            stamp = file_stamp(self._path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._from_file = read_tokens(self._path)
                    log.info("auth: %d tokens from %s", len(self._from_file), self._path)
                except ValueError as e:  # mid-rotation: keep serving the tokens last read
                    log.warning("auth: keeping the %d tokens read before: %s", len(self._from_file), e)
        return self._fixed + self._from_file

    def accepts(self, token: bytes) -> bool:
        """True when ``token`` equals an accepted one (compared in constant time, with every token)."""
        matches = [hmac.compare_digest(token, t) for t in self.current()]
        return any(matches)


def bearer(metadata: Iterable[Any] | None) -> bytes | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry (scheme in any case), or None."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode("utf-8", "replace")
    return None


def _refusal(e: errors.Unauthenticated, handler: grpc.RpcMethodHandler | None, rid: str) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind (unary or streaming either way) that aborts with ``e`` (and the call's
    request id ``rid`` in the trailers)."""

    async def unary(request: Any, context: Any) -> None:
        await abort(e, context, rid)

    async def stream(request: Any, context: Any) -> Any:
        await abort(e, context, rid)
        yield  # (an async generator, as a streaming handler must be; abort raises before this)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(unary)
    if not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    if not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(stream)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call but health and reflection that lacks an accepted bearer token."""

    def __init__(self, tokens: Tokens, metrics: Metrics, access_log: bool = False) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._access_log = access_log  # refusals are logged as any finished call is (service/logs.py)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler when the call may go on, else one that refuses it."""
        method: str = details.method  # type: ignore[attr-defined]  # grpc-stubs lack the attributes
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        token = bearer(details.invocation_metadata)  # type: ignore[attr-defined]
        if token is not None and self._tokens.accepts(token):
            return await continuation(details)
        if token is None:
            e = errors.Unauthenticated("missing bearer token: send 'authorization: Bearer <token>' metadata")
        else:
            e = errors.Unauthenticated("the bearer token was not accepted")
        if method in _KNOWN:
            self._metrics.request(_KNOWN[method], "UNAUTHENTICATED", None)
        rid = request_id(details.invocation_metadata)  # type: ignore[attr-defined]
        if self._access_log:
            log_access(Call(_KNOWN.get(method, method), rid), "UNAUTHENTICATED", 0.0, e.message)
        log.debug("refused %s (request id %s): %s", method, rid, e.message)
        return _refusal(e, await continuation(details), rid)
