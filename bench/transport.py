"""The cost of one streamed message on loopback: a bare grpc.aio server-streaming call, with no model behind it.

A child process serves ``/bench.Transport/Stream``, which answers a request of N (ASCII digits) with N
one-byte messages (raw bytes, no protobuf), and a request of "N:U" the same after U µs of busy work; the
client counts them on one stream. The mean time per message is the "one message" of the 1-stream latency
target: what the transport alone adds per character when every character is its own message. One
message after some work gives the round trip of a bare call whose handler works that long
(``first_message_s``): the floor of bench/serve.py's time-to-first-character probe.

    python -m bench.transport --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

METHOD = "/bench.Transport/Stream"


async def _serve() -> None:
    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        n, _, busy_us = request.partition(b":")
        if busy_us:  # compute (a busy loop) for that long first, as a server's handler would
            until = time.perf_counter() + int(busy_us) / 1e6
            while time.perf_counter() < until:
                pass
        for _ in range(int(n)):
            yield b"x"

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Transport", {"Stream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(None)


async def _count(target: str, messages: int) -> float:
    """Seconds per message over one stream of ``messages`` (after a warm-up call)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
        async for _ in call(b"100"):
            pass
        start, n = time.perf_counter(), 0
        async for _ in call(str(messages).encode()):
            n += 1
        return (time.perf_counter() - start) / n


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """The bare server, in a child process for as long as the block runs; yields its target (host:port)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.transport", "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield f"127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)


def message_us(messages: int = 20000) -> float:
    """Mean microseconds per streamed message on loopback, with the server in its own process."""
    with echo_server() as target:
        return asyncio.run(_count(target, messages)) * 1e6


async def first_message_s(channel: grpc.aio.Channel, busy_us: int = 0) -> float:
    """Seconds from the start of a bare call to its one message, its handler busy for ``busy_us`` first."""
    start, first = time.perf_counter(), 0.0
    call = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
    async for _ in call(f"1:{busy_us}".encode()):
        first = time.perf_counter()
    return first - start


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000, help="messages in the measured stream")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    a = p.parse_args(argv)
    if a.serve:
        asyncio.run(_serve())
        return 0
    us = message_us(a.messages)
    print(f"one streamed message on loopback: {us:.1f} µs ({1e6 / us:,.0f} messages/s on one stream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
