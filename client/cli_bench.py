"""``charlm bench``: N concurrent streams of M characters, a progress bar and a summary table."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from typing import Any

from tqdm import tqdm

from client.commands import at_least
from client.connection import ConnectOptions
from client.loadgen import LoadReport, Percentiles, run_load


def format_report(r: LoadReport) -> str:
    """The human-readable summary table."""

    def row(name: str, p: Percentiles) -> str:
        return f"  {name:<22} {p.p50:>9.2f} {p.p90:>9.2f} {p.p99:>9.2f} {p.mean:>9.2f}"

    errors = "; ".join(f"{k}: {v} (first: {r.error_messages.get(k, '?')})" for k, v in sorted(r.errors.items()))
    lines = [
        f"target {r.target}: {r.streams} streams x {r.requests_per_stream} request(s) x {r.chars_per_stream} chars "
        f"over {r.channels} channel(s)",
        f"  aggregate              {r.chars_per_s:,.0f} chars/s ({r.total_chars} chars in {r.wall_s:.2f} s)",
        f"  all streaming          {r.all_streaming_chars_per_s:,.0f} chars/s for {r.all_streaming_s:.2f} s (from "
        f"the last stream's first chunk to the first one's last)",
        f"  requests               {r.requests_per_s:,.1f} requests/s ({r.completed} completed)",
        f"  messages               {r.total_chunks} ({r.chars_per_chunk:.2f} chars per message)",
        f"  {'latency (ms)':<22} {'p50':>9} {'p90':>9} {'p99':>9} {'mean':>9}",
        row("time to first chunk", r.ttfc_ms),
        row("inter-chunk", r.inter_chunk_ms),
        row("inter-character", r.inter_char_ms),
        f"  completed              {r.completed}/{r.requests}; errors: {errors or 'none'}",
    ]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    # JSON has no NaN: empty percentile groups become null.
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj


def cmd_bench(args: argparse.Namespace, opts: ConnectOptions) -> int:
    """Runs the load and prints the table (or JSON); exit status 1 if any request failed."""
    total = args.streams * args.requests * args.chars
    with tqdm(total=total, unit="char", unit_scale=True, disable=args.json or args.no_progress,
              desc="bench", leave=False) as bar:
        report = asyncio.run(run_load(
            opts.target, args.streams, args.chars, args.prompt, model=args.model, channels=args.channels,
            temperature=args.temperature, seed=args.seed, options=opts, progress=bar.update, requests=args.requests,
        ))
    print(json.dumps(_jsonable(report.to_dict())) if args.json else format_report(report))
    return 0 if not report.errors else 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Adds the bench subcommand."""
    p = sub.add_parser("bench", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="load generator: concurrent streams, throughput and latency",
                       description="Open N concurrent Generate streams of M characters each (or R requests "
                                   "each, one after another) and report the aggregate chars/s, requests/s, time "
                                   "to first chunk, inter-chunk and inter-character latency percentiles, and "
                                   "errors by status.",
                       epilog="example:\n  charlm bench -c 64 -n 2000 --prompt 'ROMEO:'\n"
                              "  charlm bench -c 64 -n 1 -r 20 --prompt 'The quick brown '   # many short requests\n"
                              "  charlm bench -c 8 -n 500 --json > bench.json")
    p.add_argument("-c", "--streams", type=at_least(1), default=8, help="concurrent streams (default %(default)s)")
    p.add_argument("-n", "--chars", type=at_least(1), default=500, help="characters per request (default %(default)s)")
    p.add_argument("-r", "--requests", type=at_least(1), default=1,
                   help="requests per stream, one after another (default %(default)s)")
    p.add_argument("--prompt", default="\n", help="prompt of every stream (default a newline)")
    p.add_argument("-m", "--model", default="", help="model name or name:version (default: the server's)")
    p.add_argument("--channels", type=at_least(1), default=1, help="gRPC channels to spread streams over")
    p.add_argument("-t", "--temperature", type=float, help="sampling temperature (default 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="request j of stream i uses seed SEED+i+j*STREAMS (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
