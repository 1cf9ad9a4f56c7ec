"""Serving benchmark: the real server (a child process) and real clients on 127.0.0.1, beside the raw engine.

For each concurrency level (default 1, 8, 64, 256 streams of 2,000 characters): aggregate chars/s, time to
first chunk and inter-character latency (p50/p99), characters per message, errors, and the raw engine at
the same batch size measured right after it, so that served ÷ engine is a side-by-side ratio, and from the
server's /metrics how much of the load its lanes spent in decode calls and how fast those were. Then the
no-batching baselines (onnxruntime and PyTorch eager, one stream per call) at 64 streams, the 1-stream
time to first character for a 16-character prompt (beside its floor: the raw prefill call, and a bare
grpc.aio call whose handler works as long; and what a null system call costs then), the cost of one
streamed message, a 2,000-character prompt's first character against the raw prefill, many short requests
(64 streams each making 20 one-character requests in turn: requests/s and the server's CPU per request),
and the 256-stream soak (errors, server RSS after warm-up). Ends with every target of the performance
issue, met or not.

Example:
    python -m bench.serve                      # everything (about 2 minutes on 2 cores)
    python -m bench.serve --quick              # a smoke run of every part (about 20 s)
    python -m bench.serve --streams 64 --no-soak --no-baseline --json > serve.json
    python -m bench.serve --server-arg=--messages-per-s=1000   # an A/B of one server flag
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import serve_runs as runs
from bench.baseline import BaselineRate, unbatched_ort, unbatched_torch
from bench.engine import measure_prefill, measure_step_rate
from bench.serve_report import report_table, targets
from bench.serve_runs import PROMPT16, Level, fit_prompt, long_prompt, run_level, ttfc_probe
from bench.server_proc import ServerError, ServerProcess
from bench.soak import Soak, soak
from bench.transport import echo_server, message_us
from bench.wakeup import syscall_ns
from client.loadgen import run_load
from client.sync import Client
from service.artifact import ArtifactError, load_artifact
from service.cli import build_config
from service.engine import available_cores
from service.runtime import Runtime, RuntimeConfig

UNBATCHED = ("--max-batch", "1", "--decode-steps", "1")  # the server's no-batching baseline


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"),
                   help="artifact version folder REPO/NAME/VERSION (the server serves REPO, this model by default)")
    p.add_argument("--streams", default="1,8,64,256", help="comma-separated concurrency levels")
    p.add_argument("--chars", type=int, default=2000, help="characters per stream")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels the load generator spreads streams over")
    p.add_argument("--engine-seconds", type=float, default=1.0, help="time per raw engine measurement")
    p.add_argument("--baseline-streams", type=int, default=64, help="streams of the no-batching baselines")
    p.add_argument("--baseline-seconds", type=float, default=3.0, help="time per no-batching baseline")
    p.add_argument("--baseline-chars", type=int, default=500, help="characters per stream of the served baseline")
    p.add_argument("--repeats", type=int, default=3, help="(served, engine) pairs per level; the median is shown")
    p.add_argument("--ttfc-repeats", type=int, default=50, help="sequential requests of the 1-stream TTFC probe")
    p.add_argument("--prompt-chars", type=int, default=2000, help="length of the long-prompt probe")
    p.add_argument("--prompt-repeats", type=int, default=5, help="requests of the long-prompt probe")
    p.add_argument("--short-streams", type=int, default=64, help="streams of the short-requests probe")
    p.add_argument("--short-requests", type=int, default=20,
                   help="one-character requests each stream of the short-requests probe makes in turn (0 = skip it)")
    p.add_argument("--soak-streams", type=int, default=256)
    p.add_argument("--soak-seconds", type=float, default=60.0)
    p.add_argument("--soak-warmup-rounds", type=int, default=3, help="soak rounds before the measured seconds")
    p.add_argument("--no-soak", action="store_true", help="skip the soak")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-batching baselines")
    p.add_argument("--no-probes", action="store_true", help="skip the TTFC, message and long-prompt probes")
    p.add_argument("--quick", action="store_true", help="a smoke run of every part: 1,8,64 streams of 300 chars, "
                                                        "short measurements, a 5 s soak of 64 streams")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads, server and raw engine "
                                                         "(0 = one per core, the server's default)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m service` (repeatable), e.g. --server-arg=--max-batch=128")
    p.add_argument("--server-cwd", type=Path, help="run `python -m service` in this folder (another checkout's "
                                                   "service/, for a before/after comparison)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--json-out", type=Path, help="also write the JSON object to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.streams, a.chars, a.engine_seconds, a.baseline_seconds, a.baseline_chars = "1,8,64", 300, 0.3, 0.5, 50
        a.repeats = 1
        a.ttfc_repeats, a.prompt_repeats, a.soak_streams, a.soak_seconds, a.soak_warmup_rounds = 10, 2, 64, 5.0, 1
        a.short_requests = 5
    try:
        a.levels = [int(s) for s in a.streams.split(",")]
    except ValueError:
        p.error(f"--streams: {a.streams!r} is not a comma-separated list of integers")
    return a


def _jsonable(obj: Any) -> Any:
    """JSON has no NaN: it becomes null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


async def _served(a: argparse.Namespace, server: ServerProcess, engines: dict[str, runs.RawEngine], vocabulary: str,
                  model: str, prefill_runtime: Runtime | None,
                  loop: Callable[[int], float] | None) -> dict[str, Any]:  # fmt: skip
    """Everything that needs the server, in order: warm-up, levels, probes (``prefill_runtime``: configured as
    the server's, for the first-character probe's floor), soak. ``loop``: the no-batching loop, measured beside
    every pair of the level of ``--baseline-streams`` streams."""
    out: dict[str, Any] = {}
    prompt = fit_prompt(PROMPT16, vocabulary, len(PROMPT16))  # PROMPT16 itself for the shipped model
    await run_load(server.target, 8, 200, prompt, model=model, seed=0)  # warm-up: first calls, allocations
    levels: list[Level] = []
    for n in a.levels:
        paired = loop if n == a.baseline_streams else None
        levels.append(await run_level(server, engines, model, n, a.chars, prompt, a.channels, a.repeats, paired))
    out["levels"] = levels
    if prefill_runtime is not None:
        # what a null system call costs now: it marks the hour's kernel, with which the floor moved from hour to
        # hour; within an hour the floor follows the probe's own prefill call (docs/performance.md, table 1)
        out["syscall_ns"] = syscall_ns()
        with echo_server() as echo:
            floor = runs.Floor(echo, runs.prefill_call(prefill_runtime, prompt))
            t = await ttfc_probe(server.target, model, prompt, a.ttfc_repeats, floor=floor)
        out["ttfc16"], out["ttfc16_engine"] = t.served, t.engine
        out["ttfc16_floor"], out["ttfc16_prefill"] = t.floor, t.prefill
        t = await ttfc_probe(server.target, model, long_prompt(vocabulary, a.prompt_chars), a.prompt_repeats)
        out["long_ttfc"], out["long_ttfc_engine"] = t.served, t.engine
        if a.short_streams > 0 and a.short_requests > 0:
            cpu0 = server.cpu_seconds()
            out["short"] = await run_load(server.target, a.short_streams, 1, prompt, model=model,
                                          requests=a.short_requests)
            out["short_server_cpu_s"] = server.cpu_seconds() - cpu0
    if not a.no_soak:
        out["soak"] = await soak(server, model, a.soak_streams, a.chars, a.soak_seconds, prompt, a.soak_warmup_rounds)
    return out


async def _served_unbatched(server: ServerProcess, model: str, streams: int, chars: int, prompt: str) -> BaselineRate:
    """The same server with one batch row of one step per call (started with ``UNBATCHED``): every call is one
    step of one stream's own, the streams taking turns, as a server without batching would make them."""
    await run_load(server.target, 1, 50, prompt, model=model, seed=0)  # warm-up
    r = await run_load(server.target, streams, chars, prompt, model=model, temperature=1.0, seed=0)
    return BaselineRate(f"charlm {' '.join(UNBATCHED)} over gRPC", streams, r.total_chars, r.wall_s, r.chars_per_s,
                        "the same server and clients, one row and one step per call")  # fmt: skip


def server_runtime(server_args: list[str]) -> RuntimeConfig:
    """The runtime config the server is asked for: its own from these args and this environment (the child
    inherits it), as charlm-serve builds it ("auto" precisions resolve as the server's, in Runtime)."""
    return build_config(server_args, os.environ).runtime


def server_precision(server_args: list[str]) -> str:
    """The decode precision the server is asked for (``server_runtime``'s)."""
    return server_runtime(server_args).decode_precision


def served_precision(target: str, model: str) -> str:
    """The precisions the running server reports for ``model``: "decode steps D, prompts P" ("?" unsaid)."""
    with Client(target) as client:
        m = client.model(model, timeout=10)
    return f"decode steps {m.decode_precision or '?'}, prompts {m.prompt_precision or '?'}"


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Every measurement asked for, as a dict of results (dataclasses inside)."""
    artifact = load_artifact(a.model)
    # The raw engine: one call per step with onnxruntime's threads spinning (its default) and not (the server's
    # default), and the batch split over one single-threaded lane per core side by side (the server's lanes);
    # each level is judged against the fastest. Its decode steps are the server's (int8 where it runs int8).
    served = server_runtime(a.server_arg)
    precision, prompts = served.decode_precision, served.prompt_precision
    steps = RuntimeConfig(decode_steps=served.decode_steps, few_rows_steps=served.few_rows_steps,
                          few_rows=served.few_rows, decode_precision=precision)  # the server's decode calls
    runtimes = {name: Runtime(artifact, replace(steps, intra_op_threads=a.threads, spinning=spin,
                                                prefill_spinning=spin, spin_between_calls=spin,
                                                prompt_precision=prompts))
                for name, spin in (("spinning", True), ("no spinning", False))}  # fmt: skip
    runtime = runtimes["spinning"]
    lane_runtime = Runtime(artifact, replace(steps, intra_op_threads=1))
    engines = runs.raw_engines(runtimes, available_cores(), lane_runtime, a.engine_seconds)
    info = artifact.info
    model = f"{info.name}:{info.version}"
    res: dict[str, Any] = {"model": model, "shape": f"{info.architecture} {info.layers}x{info.hidden_size}",
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "nproc": os.cpu_count(), "load_avg": os.getloadavg(), "chars": a.chars,
                           "server_args": a.server_arg, "threads": a.threads,
                           "precision": runtime.decode_precision,
                           "prompt_precision": runtime.prompt_precision}  # fmt: skip
    args = ["--default-model", model, "--intra-op-threads", str(a.threads), *a.server_arg]
    # the server's prompt-call settings, for the raw prefill calls measured between the first-character probe's
    # requests (decode_steps=1: no graphs of several steps are built, which only decode calls use)
    prefill_config = replace(served, intra_op_threads=a.threads, decode_steps=1)
    prefill_runtime = None if a.no_probes else Runtime(artifact, prefill_config)
    with ServerProcess(a.model.parent.parent, args, cwd=a.server_cwd) as server:
        res["server_precision"] = served_precision(server.target, model)
        loop = None if a.no_baseline else (lambda n: unbatched_ort(runtime, n, a.engine_seconds).chars_per_s)
        res.update(asyncio.run(_served(a, server, engines, runtime.vocabulary, model, prefill_runtime, loop)))
        res["lanes"] = server.lane_plan()
    if not a.no_probes:
        res["step1"] = measure_step_rate("", 1, seconds=a.engine_seconds, runtime=runtime)
        res["message_us"] = message_us(20000 if not a.quick else 3000)
        res["prefill"] = measure_prefill("", a.prompt_chars, seconds=a.engine_seconds, runtime=runtime)
    if not a.no_baseline:
        base: list[BaselineRate] = [unbatched_ort(runtime, a.baseline_streams, a.baseline_seconds),
                                    unbatched_torch(artifact, a.baseline_streams, a.baseline_seconds)]  # fmt: skip
        with ServerProcess(a.model.parent.parent, [*args, *UNBATCHED], cwd=a.server_cwd) as server:
            prompt = fit_prompt(PROMPT16, runtime.vocabulary, len(PROMPT16))
            base.append(asyncio.run(_served_unbatched(server, model, a.baseline_streams, a.baseline_chars, prompt)))
        res["baselines"] = base
    res["load_avg_end"] = os.getloadavg()
    return res


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    """The results as plain JSON data, targets included."""
    out: dict[str, Any] = {}
    for k, v in res.items():
        if k == "levels":
            out[k] = [{"streams": lv.streams, "served": lv.served.to_dict(), "engine": asdict(lv.engine),
                       "engines": {n: asdict(r) for n, r in lv.engines.items()}, "ratio": lv.ratio, "ratios": lv.ratios,
                       "server_cpu_s": lv.server_cpu_s, "client_cpu_s": lv.client_cpu_s, "loop_cpu_s": lv.loop_cpu_s,
                       "loop_wait_s": lv.waits_s[0], "other_wait_s": lv.waits_s[1], "host_idle_s": lv.host_s[0],
                       "host_stolen_s": lv.host_s[1], "raw_stolen_s": lv.raw_stolen_s, "raw_s": lv.raw_s,
                       "loop_chars_per_s": lv.loop_chars_per_s, "batched": lv.batched,
                       "decode": asdict(lv.decode) if lv.decode else None, "lanes_busy": lv.busy,
                       "call_us_per_char": lv.call_us, "raw_lane_us_per_char": lv.lane_us, "kept": lv.kept}
                      for lv in v]  # fmt: skip
        elif k == "soak" and isinstance(v, Soak):
            out[k] = {**asdict(v), "rss_warm_kib": v.rss_warm_kib, "rss_end_kib": v.rss_end_kib, "growth": v.growth,
                      "rss_warm_high_kib": v.rss_warm_high_kib, "rss_settled_kib": v.rss_settled_kib,
                      "settled_growth": v.settled_growth, "chars_per_s": v.chars_per_s}
        elif k == "baselines":
            out[k] = [asdict(b) for b in v]
        elif k == "short":
            out[k] = v.to_dict()
        elif hasattr(v, "__dataclass_fields__"):
            out[k] = asdict(v)
        else:
            out[k] = v
    out["targets"] = [{"target": t, "met": m, "figure": f} for t, m, f in targets(res)]
    return _jsonable(out)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when a stream failed."""
    a = parse_args(argv)
    try:
        res = run(a)
    except (ArtifactError, ServerError) as e:
        print(f"bench.serve: error: {e}")
        return 2
    data = json.dumps(to_json(res), indent=2)
    if a.json_out is not None:
        a.json_out.write_text(data + "\n")
    print(data if a.json else report_table(res))
    failed = any(lv.served.errors for lv in res["levels"]) or any(
        res[k].errors for k in ("soak", "short") if res.get(k) is not None)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
