"""The cost of one streamed message on loopback: a bare grpc.aio server-streaming call, with no model behind it.

A child process serves ``/bench.Transport/Stream``, which answers a request of N (ASCII digits) with N
one-byte messages (raw bytes, no protobuf), and a request of "N:U" the same after U µs of busy work; the
client counts them on one stream. The mean time per message is the "one message" of the 1-stream latency
target: what the transport alone adds per character when every character is its own message. One
message after some work gives the round trip of a bare call whose handler works that long
(``first_message_s``): the floor of bench/serve.py's time-to-first-character probe.

``--paced`` measures what a message costs when messages are paced as a server's message budget paces them
(charlm's ``--messages-per-s``): many streams, each sent a message every so often, either each at a phase of
its own (spread over time) or all on one clock (sent together). It prints the CPU of the server's process and
of the client's per message, the two alternated. ``--option KEY=VALUE`` (gRPC channel arguments, repeatable)
adds a third kind, sent together with those arguments on both ends (its own server process), alternated with
the other two: what a channel argument changes a message.

    python -m bench.transport --messages 20000
    python -m bench.transport --paced --streams 64 --interval-ms 64 [--option grpc.http2.bdp_probe=0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.server_proc import proc_cpu_seconds

Option = tuple[str, int | str]  # a gRPC channel argument

METHOD = "/bench.Transport/Stream"
PAYLOAD = b"x" * 96  # a paced message: about the characters a message of charlm's carries at 64 streams


async def _paced(n: int, interval_s: float, together: bool) -> AsyncIterator[bytes]:
    """``n`` messages, one every ``interval_s``: on the clock's multiples of it (every stream at once), or
    from a random phase of this stream's own."""
    loop = asyncio.get_running_loop()
    due = loop.time() + (0.0 if together else random.random() * interval_s)
    for _ in range(n):
        if together:
            due = (loop.time() // interval_s + 1) * interval_s
        await asyncio.sleep(due - loop.time())
        due += interval_s
        yield PAYLOAD


def option(text: str) -> Option:
    """``KEY=VALUE`` as a gRPC channel argument (the value an int where it reads as one)."""
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, int(value) if value.lstrip("-").isdigit() else value


async def _serve(options: Sequence[Option] = ()) -> None:
    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        if b"@" in request:  # "N@INTERVAL_US[+]": paced messages, "+" all streams on one clock
            count, _, rest = request.partition(b"@")
            async for m in _paced(int(count), int(rest.rstrip(b"+")) / 1e6, rest.endswith(b"+")):
                yield m
            return
        n, _, busy_us = request.partition(b":")
        if busy_us:  # compute (a busy loop) for that long first, as a server's handler would
            until = time.perf_counter() + int(busy_us) / 1e6
            while time.perf_counter() < until:
                pass
        for _ in range(int(n)):
            yield b"x"

    server = grpc.aio.server(options=list(options))
    handler = grpc.unary_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Transport", {"Stream": handler}),))
    await serve_in_child(server)


async def serve_in_child(server: grpc.aio.Server) -> None:
    """(in the child of ``child_server``) Serves on a free loopback port, printed first, until stdin closes."""
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
def child_server(module: str = "bench.transport", options: Sequence[Option] = ()) -> Iterator[tuple[str, int]]:
    """``python -m MODULE --serve`` (the bare server, by default) in a child process for as long as the block
    runs: its target (host:port) and pid. The child serves through ``serve_in_child``; ``options``: the bare
    server's channel arguments."""
    args = [f"--option={k}={v}" for k, v in options]
    proc = subprocess.Popen([sys.executable, "-m", module, "--serve", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield f"127.0.0.1:{int(proc.stdout.readline())}", proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """The bare server, in a child process for as long as the block runs; yields its target (host:port)."""
    with child_server() as (target, _):
        yield target


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


async def _paced_round(channel: grpc.aio.Channel, server_pid: int, streams: int, messages: int,
                       interval_us: int, together: bool) -> tuple[float, float, float]:  # fmt: skip
    """One paced run: messages/s, and the client's and the server's CPU µs per message."""
    call = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
    request = f"{messages}@{interval_us}{'+' if together else ''}".encode()

    async def one() -> int:
        return sum([1 async for _ in call(request)])

    stat = Path(f"/proc/{server_pid}/stat")
    server0, client0, start = proc_cpu_seconds(stat), time.process_time(), time.perf_counter()
    received = sum(await asyncio.gather(*(one() for _ in range(streams))))
    wall, client = time.perf_counter() - start, time.process_time() - client0
    return received / wall, client / received * 1e6, (proc_cpu_seconds(stat) - server0) / received * 1e6


def paced(streams: int, messages: int, interval_ms: float, rounds: int,
          options: Sequence[Option] = ()) -> dict[str, list[tuple[float, ...]]]:  # fmt: skip
    """``rounds`` alternated paced runs spread, together, and (with ``options``) together with those channel
    arguments on both ends: (messages/s, client µs, server µs) of each."""
    kinds = ["spread", "together"] + (["options"] if options else [])
    out: dict[str, list[tuple[float, ...]]] = {kind: [] for kind in kinds}

    async def run(ends: dict[str, tuple[str, int]]) -> None:
        channels = {k: grpc.aio.insecure_channel(target, options=list(options) if k == "options" else None)
                    for k, (target, _) in ends.items()}  # fmt: skip
        try:
            for k, channel in channels.items():  # warm-up: connected, code paths run
                await _paced_round(channel, ends[k][1], streams, 2, 1000, True)
            for _ in range(rounds):
                for kind in kinds:
                    end = "options" if kind == "options" else "plain"
                    out[kind].append(await _paced_round(channels[end], ends[end][1], streams, messages,
                                                        round(interval_ms * 1e3), kind != "spread"))  # fmt: skip
        finally:
            for channel in channels.values():
                await channel.close(None)

    with contextlib.ExitStack() as stack:
        ends = {"plain": stack.enter_context(child_server())}
        if options:
            ends["options"] = stack.enter_context(child_server(options=options))
        asyncio.run(run(ends))
    return out


def _print_paced(a: argparse.Namespace) -> None:
    runs = paced(a.streams, a.messages_per_stream, a.interval_ms, a.rounds, a.option)
    print(f"{a.streams} streams, a {len(PAYLOAD)}-byte message every {a.interval_ms:g} ms each "
          f"({a.messages_per_stream} per stream), {a.rounds} rounds alternated; CPU per message received:")
    if a.option:
        print("options: sent together, with " + ", ".join(f"{k}={v}" for k, v in a.option) + " on both ends")
    print("sent       messages/s   client µs   server µs   (each round)")
    for kind, rows in runs.items():
        rate, client, server = (statistics.median(r[i] for r in rows) for i in range(3))
        each = ", ".join(f"{c:.0f}/{s:.0f}" for _, c, s in rows)
        print(f"{kind:9s} {rate:11,.0f} {client:11.0f} {server:11.0f}   ({each})")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000, help="messages in the measured stream")
    p.add_argument("--paced", action="store_true", help="paced messages, spread over time against sent together")
    p.add_argument("--streams", type=int, default=64, help="--paced: concurrent streams (default 64)")
    p.add_argument("--interval-ms", type=float, default=64.0,
                   help="--paced: milliseconds between a stream's messages (default 64: charlm's 1,000 messages/s "
                        "over 64 streams)")  # fmt: skip
    p.add_argument("--messages-per-stream", type=int, default=40, help="--paced: messages of each stream a round")
    p.add_argument("--rounds", type=int, default=3, help="--paced: rounds of each, alternated (default 3)")
    p.add_argument("--option", type=option, action="append", default=[], metavar="KEY=VALUE",
                   help="--paced: a gRPC channel argument for a third kind, sent together with it on both ends "
                        "(repeatable), e.g. grpc.http2.bdp_probe=0")  # fmt: skip
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    a = p.parse_args(argv)
    if a.serve:
        asyncio.run(_serve(a.option))
        return 0
    if a.paced:
        _print_paced(a)
        return 0
    us = message_us(a.messages)
    print(f"one streamed message on loopback: {us:.1f} µs ({1e6 / us:,.0f} messages/s on one stream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
