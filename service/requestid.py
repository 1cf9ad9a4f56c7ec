"""Request ids: every charlm.v1 call gets one, to tie what its client saw to the server's log lines about it.

The id is the client's ``x-request-id`` metadata when it sent a usable one (1 to 128 printable ASCII
characters), else 16 fresh hex characters. The client gets it back as initial metadata, before the first
message, and in the trailers of a failed call.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Iterable
from typing import Any

import grpc

KEY = "x-request-id"
MAX_CHARS = 128


def usable(value: object) -> bool:
    """True for an id the server keeps as the client sent it: 1 to 128 characters of printable ASCII."""
    return isinstance(value, str) and 0 < len(value) <= MAX_CHARS and value.isascii() and value.isprintable()


def request_id(metadata: Iterable[Any] | None) -> str:
    """The call's id: the first ``x-request-id`` entry if usable, else a fresh one (anything else is ignored)."""
    for key, value in metadata or ():
        if key == KEY:
            if usable(value):
                return str(value)
            break
    return os.urandom(8).hex()


async def send(context: Any, rid: str) -> None:
    """Sends ``rid`` as the call's initial metadata, at its start. grpc.aio cannot add metadata to the batch of
    the first message (or of a unary response): this is a batch of its own, and the call must wait for it
    (~0.1 ms on this 2-core VM; sending it in a task beside the call's first work measured no faster)."""
    await context.send_initial_metadata(((KEY, rid),))


class _Status(namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A grpc.Status (the class grpc_status.rpc_status.to_status makes)."""


def with_id(status: grpc.Status, rid: str) -> grpc.Status:
    """``status`` with ``rid`` added to its trailing metadata: a call refused before the servicer (service/auth.py)
    sends no initial metadata, and a client reads the id from either."""
    if not rid:
        return status
    trailing = (*status.trailing_metadata, (KEY, rid))  # type: ignore[attr-defined]  # grpc-stubs lack it
    return _Status(status.code, status.details, trailing)  # type: ignore[attr-defined]
