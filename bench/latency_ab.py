"""One stream's latency, A/B: servers started with different flags side by side, measured in alternation.

One server per ``--config`` (its flags as one string; "" = the defaults), all started at once. Each round, every
configuration in turn serves (1) ``--ttfc-requests`` sequential one-character requests with the 16-character
prompt (time to first chunk, as bench/serve.py's probe) and (2) one stream of ``--chars`` characters (chars/s,
inter-character and inter-chunk latency, as a 1-stream level). The rounds alternate the configurations, so
the machine's drift (this VM's speed moves by 1.5-2x within minutes) hits each alike; the table shows each
configuration's median over the rounds and its ratio to the first configuration's. A configuration that starts
with ``@DIR`` runs DIR's ``service/`` (another checkout: a before/after at one stream).

Examples:
    python -m bench.latency_ab --config "" --config "--inline-prompt-chars 0" --config "--steps-wait-ms 0"
    git worktree add /tmp/before HEAD~3 && python -m bench.latency_ab --config "" --config "@/tmp/before"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
from contextlib import ExitStack
from pathlib import Path

from bench.serve_runs import PROMPT16, fit_prompt, ttfc_probe
from bench.server_proc import ServerError, ServerProcess
from client.loadgen import run_load
from service.artifact import ArtifactError, load_artifact

METRICS = ("ttfc_ms", "engine_ttfc_ms", "chars_per_s", "inter_char_us", "inter_chunk_us", "chars_per_msg")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"), help="artifact version folder")
    p.add_argument("--config", action="append", default=[], metavar="FLAGS",
                   help='server flags of one configuration, as one string (repeatable; "" = the defaults)')
    p.add_argument("--rounds", type=int, default=6, help="rounds; each measures every configuration once")
    p.add_argument("--ttfc-requests", type=int, default=30, help="one-character requests per configuration and round")
    p.add_argument("--chars", type=int, default=2000, help="characters of the round's one stream")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    a.config = a.config or ["", "--inline-prompt-chars 0"]
    return a


async def measure(servers: list[ServerProcess], model: str, prompt: str,
                  a: argparse.Namespace) -> list[dict[str, list[float]]]:  # fmt: skip
    """Every metric of every configuration, one value per round."""
    out: list[dict[str, list[float]]] = [{m: [] for m in METRICS} for _ in servers]
    for server in servers:  # warm-up: first calls, allocations
        await run_load(server.target, 8, 200, prompt, model=model, seed=0)
    for r in range(a.rounds):
        for server, values in zip(servers, out, strict=True):
            first = await ttfc_probe(server.target, model, prompt, a.ttfc_requests)
            load = await run_load(server.target, 1, a.chars, prompt, model=model, temperature=1.0, seed=r)
            if load.errors:
                raise ServerError(f"a stream failed: {load.errors}")
            got = (first.served.p50, first.engine.p50, load.chars_per_s, load.inter_char_ms.p50 * 1e3,
                   load.inter_chunk_ms.p50 * 1e3, load.chars_per_chunk)  # fmt: skip
            for m, v in zip(METRICS, got, strict=True):
                values[m].append(v)
    return out


def table(configs: list[str], results: list[dict[str, list[float]]], rounds: int) -> str:
    """Medians over the rounds, and each one's ratio to the first configuration's."""
    med = [{m: statistics.median(v[m]) for m in METRICS} for v in results]
    lines = [f"one stream, {rounds} alternating rounds; median over the rounds (ratio to the first configuration)",
             f"{'configuration':32} {'TTFC p50 ms':>16} {'in engine ms':>16} {'chars/s':>16} "
             f"{'inter-char µs':>16} {'inter-chunk µs':>16} {'c/msg':>6}"]  # fmt: skip
    for config, m in zip(configs, med, strict=True):
        cells = [f"{m[k]:.2f} ({m[k] / med[0][k]:.2f}x)" if k.endswith("ms") else
                 f"{m[k]:,.0f} ({m[k] / med[0][k]:.2f}x)" for k in METRICS[:-1]]  # fmt: skip
        lines.append(f"{config or '(defaults)':32} " + " ".join(f"{c:>16}" for c in cells)
                     + f" {m['chars_per_msg']:>6.1f}")  # fmt: skip
    return "\n".join(lines)


def server(repo: Path, model: str, config: str) -> ServerProcess:
    """A server of one configuration: its flags, after an optional ``@DIR`` (the checkout whose service/ runs)."""
    flags = shlex.split(config)
    cwd = Path(flags.pop(0)[1:]) if flags and flags[0].startswith("@") else None
    return ServerProcess(repo, ["--default-model", model, *flags], cwd=cwd)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    a = parse_args(argv)
    try:
        info = load_artifact(a.model).info
        model, prompt = f"{info.name}:{info.version}", fit_prompt(PROMPT16, info.vocabulary, len(PROMPT16))
        with ExitStack() as stack:
            servers = [stack.enter_context(server(a.model.parent.parent, model, c)) for c in a.config]
            results = asyncio.run(measure(servers, model, prompt, a))
    except (ArtifactError, ServerError) as e:
        print(f"bench.latency_ab: error: {e}")
        return 2
    if a.json:
        print(json.dumps([{"config": c, **r} for c, r in zip(a.config, results, strict=True)], indent=2))
    else:
        print(table(a.config, results, a.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
