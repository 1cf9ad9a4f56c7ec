"""Request ids: every charlm.v1 call gets one, to tie what its client saw to the server's log lines about it.

The id is the client's ``x-request-id`` metadata when it sent a usable one (1 to 128 printable ASCII
characters; the rule, shared with the client, is charlm.v1's: proto/charlm/v1/metadata.py), else 16 fresh hex
characters. The client gets it back in the call's trailers. Not as initial
metadata: grpc.aio sends custom initial metadata as a batch of its own, which the call must wait for (~0.1 ms
of every call on this 2-core VM, against a 2 ms target for the first character). charlm's client sends an id
with every call, so it knows it from the start.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable
from typing import Any

import grpc
from charlm.v1.metadata import REQUEST_ID_KEY as KEY
from charlm.v1.metadata import fresh_request_id, usable_request_id


def request_id(metadata: Iterable[Any] | None) -> str:
    """The call's id: the first ``x-request-id`` entry if usable, else a fresh one (anything else is ignored)."""
    for key, value in metadata or ():
        if key == KEY:
            if usable_request_id(value):
                return str(value)
            break
    return fresh_request_id()


def attach(context: Any, rid: str) -> None:
    """Puts ``rid`` in the call's trailers (a failed call's status carries it too: ``with_id``)."""
    context.set_trailing_metadata(((KEY, rid),))


class _Status(namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A grpc.Status (the class grpc_status.rpc_status.to_status makes)."""


def with_id(status: grpc.Status, rid: str) -> grpc.Status:
    """``status`` with ``rid`` added to its trailing metadata (an abort's own trailers replace those attached)."""
    if not rid:
        return status
    trailing = (*status.trailing_metadata, (KEY, rid))  # type: ignore[attr-defined]  # grpc-stubs lack it
    return _Status(status.code, status.details, trailing)  # type: ignore[attr-defined]
