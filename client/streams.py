"""Feed calls whose request iterable is the caller's: an exception it raises comes back to the caller as it is.

gRPC reads a client-streaming call's requests in its own thread (sync) or task (asyncio). An exception there
would surface as ServerError("Exception iterating requests!", UNKNOWN) with a logged traceback (sync), or as
an asyncio.CancelledError (asyncio); RequestStream keeps it, cancels the call, and the caller gets it back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from client.errors import from_rpc_error

T = TypeVar("T")


class RequestStream(Generic[T]):
    """Iterates ``requests``; an exception they raise is kept in ``error``, cancels the call and ends the stream."""

    def __init__(self, requests: Iterable[T]) -> None:
        self._requests: Iterator[T] = iter(requests)
        self._lock = threading.Lock()  # the call may fail in gRPC's thread before bind() runs in the caller's
        self._cancel: Callable[[], object] | None = None
        self.error: Exception | None = None

    def __iter__(self) -> RequestStream[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._requests)
        except StopIteration:
            raise
        except Exception as e:
            with self._lock:
                self.error, cancel = e, self._cancel
            if cancel is not None:
                cancel()
            raise StopIteration from None

    def bind(self, cancel: Callable[[], object]) -> None:
        """Gives the stream the call's cancel (cancelling at once if the iterable has already failed)."""
        with self._lock:
            self._cancel, failed = cancel, self.error is not None
        if failed:
            cancel()

    def reraise(self) -> None:
        """Raises the iterable's exception, if it raised one."""
        if self.error is not None:
            raise self.error


def feed_blocking(method: Any, requests: Iterable[Any], timeout: float | None, metadata: Any,
                  request_id: str | None = None) -> Any:
    """Runs a sync stream-unary call (Feed); CharlmError on failure (``request_id``: the id sent, see
    from_rpc_error), or the request iterable's own exception."""
    stream = RequestStream(requests)
    future = method.future(stream, timeout=timeout, metadata=metadata)
    stream.bind(future.cancel)
    try:
        response = future.result()
    except grpc.RpcError as e:
        stream.reraise()
        raise from_rpc_error(e, "Feed", request_id) from None
    except grpc.FutureCancelledError:
        stream.reraise()  # only the stream cancels this future
        raise
    except BaseException:
        future.cancel()  # Ctrl-C while waiting: the call must not go on without us
        raise
    stream.reraise()  # it failed before bind(): the stream ended early and the call may have succeeded
    return response


async def feed_async(method: Any, requests: Iterable[Any], timeout: float | None, metadata: Any,
                     request_id: str | None = None) -> Any:
    """The asyncio twin of ``feed_blocking``."""
    stream = RequestStream(requests)
    call = method(stream, timeout=timeout, metadata=metadata)
    stream.bind(call.cancel)
    try:
        response = await call
    except grpc.RpcError as e:
        stream.reraise()
        raise from_rpc_error(e, "Feed", request_id) from None
    except asyncio.CancelledError:
        stream.reraise()  # the stream cancelled the call; a cancel of the caller's own task propagates
        raise
    stream.reraise()
    return response
