"""charlm.v1's call metadata, beside the messages in charlm.proto: written by hand, shared by client and server.

Every call carries a request id: the client sends ``x-request-id`` (1 to 128 printable ASCII characters, no space
at either end), and the server returns the id it used in the call's trailers: the client's when ``usable``, else
16 fresh hex characters (``fresh_request_id``). One rule, here, so that the client never sends an id the server
would replace.
"""

from __future__ import annotations

import os

REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_MAX_CHARS = 128


def usable_request_id(value: object) -> bool:
    """True for an id the server keeps as the client sent it: 1 to 128 characters of printable ASCII, no space at
    either end (HTTP/2 forbids it in a header value: a proxy may strip or refuse it)."""
    return (isinstance(value, str) and 0 < len(value) <= REQUEST_ID_MAX_CHARS and value.isascii()
            and value.isprintable() and value == value.strip())  # fmt: skip


def fresh_request_id() -> str:
    """A new id: 16 random hex characters."""
    return os.urandom(8).hex()
