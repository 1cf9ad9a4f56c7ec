"""The client's CPU a message: charlm's load generator, ``AsyncClient.generate`` alone and a bare grpc.aio stub
reading the same ``charlm-serve``'s streams, rounds alternated.

- ``loadgen``: ``client.loadgen.run_load``, what ``charlm bench`` and ``bench.serve`` run: charlm's client library
  and the load generator's bookkeeping;
- ``generate``: ``async for text in AsyncClient.generate(...)``, nothing kept;
- ``bare``: ``async for msg in stub.Generate(request)`` on a bare grpc.aio channel: gRPC's and protobuf's own;
- ``sync``: the same on gRPC's blocking API, a thread a stream (what a client without asyncio would write).

Each reads ``--streams`` streams of ``--chars`` characters at once, seeded alike; the CPU is this process's (all
its threads, gRPC's poller among them) while the streams run, not while connecting or summing up. What
``loadgen`` spends beyond ``bare`` is charlm's client: on 2 cores shared with the server, a core the lanes do not
get (docs/performance-history.md, "The client's Python a message").

    python -m bench.client_cost --streams 64 --chars 2000 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from charlm.v1 import charlm_pb2 as pb
from charlm.v1 import charlm_pb2_grpc

from bench.server_proc import ServerError, ServerProcess
from client.aio import AsyncClient
from client.loadgen import run_load


@dataclass(frozen=True)
class Reading:
    """One client's streams of one round."""

    kind: str
    messages: int
    chars: int
    cpu_s: float  # this process's CPU while the streams ran
    wall_s: float

    @property
    def us_per_message(self) -> float:
        """CPU µs a message received."""
        return self.cpu_s / self.messages * 1e6 if self.messages else float("nan")


async def _loadgen(target: str, streams: int, chars: int, prompt: str) -> Reading:
    r = await run_load(target, streams, chars, prompt)
    if r.errors:
        raise ServerError(f"streams failed: {r.error_messages}")
    return Reading("loadgen", r.total_chunks, r.total_chars, r.cpu_s, r.wall_s)


async def _timed(kind: str, streams: int, one: Callable[[int], Awaitable[tuple[int, int]]]) -> Reading:
    """``streams`` calls of ``one`` (-> messages, characters) at once, with this process's CPU around them."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return Reading(kind, sum(m for m, _ in counts), sum(c for _, c in counts), cpu_s, wall_s)


async def _generate(target: str, streams: int, chars: int, prompt: str) -> Reading:
    async with AsyncClient(target) as client:
        await client.wait_ready()

        async def one(i: int) -> tuple[int, int]:
            messages = n = 0
            async for text in client.generate(prompt, max_chars=chars, seed=i):
                messages, n = messages + 1, n + len(text)
            return messages, n

        return await _timed("generate", streams, one)


async def _bare(target: str, streams: int, chars: int, prompt: str) -> Reading:
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        stub = charlm_pb2_grpc.TextGenerationStub(channel)

        async def one(i: int) -> tuple[int, int]:
            messages = n = 0
            request = pb.GenerateRequest(prompt=prompt, max_chars=chars, sampling=pb.SamplingParams(seed=i))
            async for msg in stub.Generate(request):
                messages, n = messages + 1, n + len(msg.text)
            return messages, n

        return await _timed("bare", streams, one)


def _sync_streams(target: str, streams: int, chars: int, prompt: str) -> Reading:
    """``streams`` threads, each reading one stream through a blocking stub, let go together."""
    counts: list[tuple[int, int]] = [(0, 0)] * streams
    failures: list[grpc.RpcError] = []
    gate = threading.Barrier(streams + 1)
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = charlm_pb2_grpc.TextGenerationStub(channel)

        def one(i: int) -> None:
            request = pb.GenerateRequest(prompt=prompt, max_chars=chars, sampling=pb.SamplingParams(seed=i))
            gate.wait()
            messages = n = 0
            try:
                for msg in stub.Generate(request):
                    messages, n = messages + 1, n + len(msg.text)
            except grpc.RpcError as e:
                failures.append(e)
            counts[i] = messages, n

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
        for thread in threads:
            thread.start()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        gate.wait()
        for thread in threads:
            thread.join()
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    if failures:
        raise ServerError(f"{len(failures)} streams failed: {failures[0]}")
    return Reading("sync", sum(m for m, _ in counts), sum(c for _, c in counts), cpu_s, wall_s)


async def _sync(target: str, streams: int, chars: int, prompt: str) -> Reading:
    return await asyncio.to_thread(_sync_streams, target, streams, chars, prompt)


READERS = {"loadgen": _loadgen, "generate": _generate, "bare": _bare, "sync": _sync}
KINDS = tuple(READERS)  # in this order in every round's readings and the table


async def measure(target: str, streams: int, chars: int, prompt: str, rounds: int) -> list[list[Reading]]:
    """``rounds`` rounds of every client in turn, the order rotated each round, after a warm-up of each."""
    for kind in KINDS:
        await READERS[kind](target, min(streams, 4), min(chars, 50), prompt)
    out: list[list[Reading]] = []
    for r in range(rounds):
        order = KINDS[r % len(KINDS):] + KINDS[: r % len(KINDS)]
        got = {k: await READERS[k](target, streams, chars, prompt) for k in order}
        out.append([got[k] for k in KINDS])
    return out


def table(results: list[list[Reading]], streams: int, chars: int) -> str:
    """Each client's median (and range) over the rounds."""
    lines = [f"{streams} streams x {chars} characters, {len(results)} rounds alternated; this process's CPU while the "
             "streams ran", "client     µs a message (range)   cores  chars/message  chars/s"]  # fmt: skip
    for i, kind in enumerate(KINDS):
        rows = [rnd[i] for rnd in results]
        us = [r.us_per_message for r in rows]
        cores = statistics.median(r.cpu_s / r.wall_s for r in rows)
        per_msg = statistics.median(r.chars / r.messages for r in rows)
        rate = statistics.median(r.chars / r.wall_s for r in rows)
        lines.append(f"{kind:9s} {statistics.median(us):7.1f} ({min(us):.0f}-{max(us):.0f}) {cores:12.3f} "
                     f"{per_msg:14.1f} {rate:8,.0f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"), help="artifact version folder")
    p.add_argument("--streams", type=int, default=64, help="streams read at once (default 64)")
    p.add_argument("--chars", type=int, default=2000, help="characters a stream (default 2000)")
    p.add_argument("--prompt", default="\n", help="every stream's prompt (default a newline)")
    p.add_argument("--rounds", type=int, default=6, help="rounds, each of every client in turn (default 6)")
    p.add_argument("--json", action="store_true", help="print every round as JSON instead of the table")
    a = p.parse_args(argv)
    if a.streams < 1 or a.chars < 1 or a.rounds < 1:
        p.error("--streams, --chars and --rounds must be at least 1")
    try:
        with ServerProcess(a.model.parent.parent, ["--default-model", a.model.parent.name]) as server:
            results = asyncio.run(measure(server.target, a.streams, a.chars, a.prompt, a.rounds))
    except ServerError as e:
        print(f"bench.client_cost: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps([[{**asdict(r), "us_per_message": r.us_per_message} for r in rnd] for rnd in results],
                         indent=2))  # fmt: skip
    else:
        print(table(results, a.streams, a.chars))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
