"""What a new call costs: bursts of calls started at once against three servers, measured side by side.

- ``bare``: bench/transport.py's grpc.aio server, one raw-bytes message a call (no protobuf, no model), through
  a bare grpc.aio channel;
- ``shaped``: a charlm.v1 TextGeneration server with no model behind it: Generate answers one text message
  and a Finish, with the request id in its trailers, as charlm's server does; through charlm's client;
- ``charlm``: the real server (``python -m service``) and charlm's client, one-character requests.

Each server runs in a process of its own. Each round takes every server in turn: ``--bursts`` bursts of
``--calls`` calls started at once, each call's first message timed from its burst's start (p50 and p99 over the
round), and the CPU a call of the server (all its threads; apart, its main thread, the event loop, and its system
time, the kernel's part) and of this client. What charlm's server spends beyond the shaped one is its own path to
a first character (the servicer, the engine's hand-off to its step threads, the prompt's call); what the shaped
server spends beyond the bare one is charlm.v1's messages. A burst's last first message comes about when the
busier event loop has handled every call of it: "last p50" is the median over the bursts of that moment, and "slow
bursts" counts those whose last first message came over twice as late. A p99 over all calls is set by the slowest
1%, which a single slow burst in a round can fill.

    python -m bench.calls --calls 64 --bursts 30 --rounds 3
    python -m bench.calls --server-cwd ../before   # and another checkout's server beside it, as "other"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc

from bench.server_proc import ServerError, ServerProcess, proc_cpu_seconds, proc_times
from bench.transport import METHOD, child_server, serve_in_child
from client.aio import AsyncClient
from client.loadgen import percentile
from service.requestid import attach, request_id

Call = Callable[[int], AsyncIterable[object]]  # starts call i of a burst; its messages


@dataclass(frozen=True)
class Round:
    """One server's bursts of one round."""

    kind: str
    first_p50_ms: float  # each call's first message, from its burst's start
    first_p99_ms: float
    last_p50_ms: float  # each burst's last first message, from its start: the median over the bursts
    slow_bursts: int  # bursts whose last first message came over twice that median after their start
    server_us: float  # the server's CPU a call, all its threads
    kernel_us: float  # of it, in the kernel (system time: gRPC's system calls, the loopback TCP stack)
    loop_us: float  # of it, the main thread's (the event loop: gRPC and the servicer)
    client_us: float  # this process's CPU a call
    answered: int  # calls that got a first message


class _Shaped(charlm_pb2_grpc.TextGenerationServicer):
    """charlm.v1's Generate as charlm answers a one-character request, with no model behind it."""

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        attach(context, request_id(context.invocation_metadata()))
        yield pb.GenerateResponse(text="a")
        yield pb.GenerateResponse(finish=pb.Finish(reason=pb.FINISH_REASON_LENGTH, prompt_chars=len(request.prompt),
                                                   generated_chars=1, model="shaped:1"))  # fmt: skip


async def _serve_shaped() -> None:
    server = grpc.aio.server()
    charlm_pb2_grpc.add_TextGenerationServicer_to_server(_Shaped(), server)
    await serve_in_child(server)


def _generate(client: AsyncClient) -> Call:
    """Call i: a one-character request (seed i) through charlm's client."""
    return lambda i: client.generate("\n", max_chars=1, seed=i)


async def _burst(call: Call, calls: int) -> list[float]:
    """Seconds from the burst's start to each call's first message (calls read to their end; none: left out)."""
    start = time.perf_counter()

    async def one(i: int) -> float | None:
        first = None
        async for _ in call(i):
            if first is None:
                first = time.perf_counter() - start
        return first

    return [f for f in await asyncio.gather(*(one(i) for i in range(calls))) if f is not None]


async def _round(kind: str, call: Call, pid: int, calls: int, bursts: int) -> Round:
    """``bursts`` bursts of ``calls`` calls against one server, with its CPU and ours around them."""
    proc, main = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/task/{pid}/stat")
    server0, loop0, client0 = proc_times(proc), proc_cpu_seconds(main), time.process_time()
    firsts: list[float] = []
    lasts: list[float] = []  # (a p99 over all calls is set by the few slowest bursts: these say how few)
    for _ in range(bursts):
        burst = await _burst(call, calls)
        firsts += burst
        lasts += [max(burst)] if burst else []
    n = calls * bursts / 1e6
    server1, loop = proc_times(proc), proc_cpu_seconds(main) - loop0
    user, kernel = server1[0] - server0[0], server1[1] - server0[1]
    firsts.sort()
    last = statistics.median(lasts) if lasts else math.nan
    return Round(kind, percentile(firsts, 50) * 1e3, percentile(firsts, 99) * 1e3, last * 1e3,
                 sum(x > 2 * last for x in lasts), (user + kernel) / n, kernel / n, loop / n,
                 (time.process_time() - client0) / n, len(firsts))  # fmt: skip


async def measure(targets: dict[str, tuple[str, int]], calls: int, bursts: int, rounds: int) -> list[list[Round]]:
    """``rounds`` rounds, each of every server in ``targets`` (kind -> (host:port, pid); "bare" first, every
    other one a charlm.v1 server) in turn, after a warm-up burst each; returns the rounds' results."""
    async with grpc.aio.insecure_channel(targets["bare"][0]) as channel:
        bare = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
        clients = {k: AsyncClient(target) for k, (target, _) in targets.items() if k != "bare"}
        try:
            starts: dict[str, Call] = {"bare": lambda i: bare(b"1"), **{k: _generate(c) for k, c in clients.items()}}
            for call in starts.values():
                await _burst(call, calls)  # connected, and every code path run once
            return [[await _round(k, starts[k], targets[k][1], calls, bursts) for k in targets] for _ in range(rounds)]
        finally:
            for c in clients.values():
                await c.close()


def table(results: list[list[Round]], calls: int, bursts: int) -> str:
    """Each server's medians over the rounds."""
    lines = [f"{calls} calls at once, {bursts} bursts a round, {len(results)} rounds alternated (medians of the "
             "rounds); first message from the burst's start; CPU a call",
             "server   first p50 ms  first p99 ms  last p50 ms  slow bursts  server µs (event loop)  kernel µs  "
             "client µs  answered"]  # fmt: skip
    for i, kind in enumerate(r.kind for r in results[0]):
        rows = [r[i] for r in results]

        def med(field: str, rows: list[Round] = rows) -> float:
            return statistics.median(getattr(r, field) for r in rows)

        lines.append(f"{kind:8s} {med('first_p50_ms'):12.2f} {med('first_p99_ms'):13.2f} "
                     f"{med('last_p50_ms'):12.2f} {sum(r.slow_bursts for r in rows):12d} "
                     f"{med('server_us'):10.0f} ({med('loop_us'):4.0f}) {med('kernel_us'):16.0f} "
                     f"{med('client_us'):10.0f} "
                     f"{sum(r.answered for r in rows):6d}/{calls * bursts * len(rows)}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"), help="artifact version folder")
    p.add_argument("--calls", type=int, default=64, help="calls started at once (default 64)")
    p.add_argument("--bursts", type=int, default=30, help="bursts of each server a round (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each of every server in turn (default 3)")
    p.add_argument("--server-cwd", type=Path, metavar="DIR",
                   help="also another checkout's server (its service/), as \"other\": a before/after")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print every round as JSON instead of the table")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the shaped server's child process
    a = p.parse_args(argv)
    if a.server_cwd is not None and not (a.server_cwd / "service").is_dir():
        p.error(f"--server-cwd: {a.server_cwd} has no service/ to run")
    if a.serve:
        asyncio.run(_serve_shaped())
        return 0
    try:
        with ExitStack() as stack:
            args = ["--default-model", a.model.parent.name]
            servers = {"charlm": ServerProcess(a.model.parent.parent, args)}
            if a.server_cwd is not None:
                servers["other"] = ServerProcess(a.model.parent.parent, args, cwd=a.server_cwd)
            targets = {"bare": stack.enter_context(child_server()),
                       "shaped": stack.enter_context(child_server("bench.calls"))}  # fmt: skip
            for kind, server in servers.items():
                stack.enter_context(server)
                targets[kind] = (server.target, server.pid)
            results = asyncio.run(measure(targets, a.calls, a.bursts, a.rounds))
    except ServerError as e:
        print(f"bench.calls: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps([[asdict(r) for r in rnd] for rnd in results], indent=2) if a.json
          else table(results, a.calls, a.bursts))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
