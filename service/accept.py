"""More than one pending request for a method's new calls in grpc.aio's server (``--accept-slots``).

grpc.aio's server asks gRPC's core for a method's next call only once the last one has been handed over: each new
call costs a turn of the event loop (an ``asyncio.wait`` over every method's pending request, then a task that asks
for the next), after a hop from gRPC's poller thread. A burst of new calls is taken one turn at a time. Slots keep
more requests pending for one method, so that the calls of a burst are handed over together: with 16, bursts of 64
one-character Generate calls cost the server 0.76-0.78x the CPU a call (its event loop 0.66-0.68x), 64 clients'
short requests in turn were answered 1.23x as fast, and a 64-stream level served a median 71.5% of the raw engine
against 65.5% (docs/performance.md, "What makes it fast").

A slot serves its calls with grpc.aio's own serving functions, the ones its own loop calls, which are private; so
slots run only on the grpcio versions they were tested with (``TESTED``). Elsewhere the server serves as grpc.aio
alone does, and its log says so. Slots bypass grpc.aio's ``maximum_concurrent_rpcs``, which charlm does not set.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Sequence
from typing import Any

import grpc

log = logging.getLogger(__name__)

TESTED = ("1.85.",)  # grpcio versions whose private serving functions the slots call so (tested: 1.85.1, 1.85.3)


def supported(version: str | None = None) -> bool:
    """True when ``version`` (by default the installed grpcio's) is one that slots were tested with."""
    return (grpc.__version__ if version is None else version).startswith(TESTED)


class AcceptSlots:
    """``slots`` more pending requests for ``method`` (``/package.Service/Method``, registered) of a started server.

    ``handler`` and ``interceptors`` must be the ones the server serves the method with: a call a slot takes
    is served with them, exactly as grpc.aio's own loop serves it.
    """

    def __init__(self, server: grpc.aio.Server, method: str, handler: grpc.RpcMethodHandler,
                 interceptors: Sequence[grpc.aio.ServerInterceptor], slots: int) -> None:
        cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")  # (private: see the module's docstring)
        self._cygrpc = cygrpc
        self._core: Any = server._server  # type: ignore[attr-defined]  # grpc.aio's AioServer
        self._method = method
        self._resolver = cygrpc._MethodResolver([], {method: handler})
        self._interceptors = tuple(interceptors)
        self.slots = slots
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[Any]] = set()  # the event loop keeps only weak references to tasks
        self.accepted = 0  # calls the slots have taken (the rest went through grpc.aio's own request)

    def start(self) -> None:
        """Starts the slots (on the running event loop, after the server has started)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._slot(loop), name=f"accept-slot-{i}") for i in range(self.slots)]

    async def close(self) -> None:
        """Ends the slots (after the server has stopped: the calls they took have ended with it)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _slot(self, loop: asyncio.AbstractEventLoop) -> None:
        method = self._method.encode()
        while self._core.is_running():
            try:
                state = await self._core._request_registered_call(method)
            except self._cygrpc._RequestCallError:  # gRPC failed the request: the server stops, or ask again
                continue
            except Exception:  # refused at once: asking again would be refused again
                log.exception("accept slot for %s ended", self._method)
                return
            self.accepted += 1
            rpc = self._cygrpc._handle_rpc(self._method, self._resolver, self._interceptors, state, loop, False)
            call = loop.create_task(self._cygrpc._schedule_rpc_coro(rpc, state, loop, self._method))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)


def accept_slots(server: grpc.aio.Server, method: str, handler: grpc.RpcMethodHandler,
                 interceptors: Sequence[grpc.aio.ServerInterceptor], slots: int) -> AcceptSlots | None:
    """Started slots for ``method`` of a started server, or None where there are none to start (0, or a grpcio
    version slots were not tested with: logged)."""
    if slots <= 0:
        return None
    if not supported():
        log.info("accept slots off: grpcio %s is not a version they were tested with (%s)", grpc.__version__,
                 ", ".join(v + "x" for v in TESTED))
        return None
    started = AcceptSlots(server, method, handler, interceptors, slots)
    started.start()
    return started
