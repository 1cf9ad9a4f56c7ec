"""Structured logs: one record per line, as logfmt (key=value) or JSON; and the access log of finished RPCs."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

access = logging.getLogger("service.access")  # its own name, so that collectors can route or mute it
_SESSION_ID = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{24}\b")  # secrets.token_hex(16), as error messages quote it


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED})  # logging's `extra=`
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """{"ts": ..., "level": ..., "logger": ..., "msg": ...} per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class LogfmtFormatter(logging.Formatter):
    """ts=... level=... logger=... msg="..." per line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_quote(str(v))}" for k, v in _fields(record).items())


def _quote(v: str) -> str:
    if v and not any(c in v for c in ' "=\n\t'):
        return v
    return json.dumps(v)  # JSON string escaping is valid logfmt quoting


def setup_logging(fmt: str = "logfmt", level: str = "INFO") -> None:
    """Routes all logs, and Python warnings, to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # else warnings.warn writes plain text to stderr, between the JSON lines


def session_ref(session_id: str) -> str:
    """The first 8 characters of a session id, for logs: enough to follow a session, too few to use it (ids
    are bearer capabilities)."""
    return session_id[:8]


# The request id of the RPC a task serves (set by the servicer): the engine stamps it on each stream it queues, so
# that what a step thread logs about a stream names the call it belongs to.
REQUEST_ID: ContextVar[str] = ContextVar("charlm_request_id", default="")


class Call:
    """What one RPC did, filled in as it runs (once per RPC, never per message) and logged when it ends."""

    __slots__ = ("chars_consumed", "chars_generated", "model", "request_id", "rpc", "session_id", "started")

    def __init__(self, rpc: str, request_id: str = "") -> None:
        self.rpc = rpc
        self.request_id = request_id  # service/requestid.py: the client's x-request-id, or one made for the call
        self.started = time.perf_counter()
        self.model = ""  # as requested ("" = the default), the served "name:version" once known
        self.session_id = ""
        self.chars_consumed: int | None = None  # None: not counted (e.g. a stream cut short)
        self.chars_generated: int | None = None

    def fields(self) -> dict[str, object]:
        """rpc, request_id, model, session (its first 8 characters) and the character counts known, as log fields."""
        fields: dict[str, object] = {"rpc": self.rpc}
        if self.request_id:
            fields["request_id"] = self.request_id
        if self.model:
            fields["model"] = self.model
        if self.session_id:
            fields["session"] = session_ref(self.session_id)
        if self.chars_consumed is not None:
            fields["chars_consumed"] = self.chars_consumed
        if self.chars_generated is not None:
            fields["chars_generated"] = self.chars_generated
        return fields


def log_access(call: Call, code: str, seconds: float, error: str = "") -> None:
    """The access-log line of a finished RPC: its fields, status code, duration and, if it failed, why."""
    fields: dict[str, object] = {"code": code, "ms": round(seconds * 1000, 3), **call.fields()}
    if error:
        fields["error"] = _SESSION_ID.sub(r"\1...", error)  # messages quote whole ids, for the client's sake
    access.info("%s %s %.1f ms", call.rpc, code, seconds * 1000, extra=fields)
