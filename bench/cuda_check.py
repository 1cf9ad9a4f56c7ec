"""The served model on onnxruntime's CUDA provider beside its CPU provider, on a machine with a GPU.

1. the provider each runtime got (a CUDA runtime falls back to the CPU when onnxruntime cannot use the GPU);
2. agreement: a prompt's logits on CUDA against the CPU's (largest absolute difference), greedy text of an
   engine on each, and seeded sampled text of each (the CPU's decode steps in fp32, as CUDA's);
3. batch invariance on CUDA: seeded streams alone and among 63 others give the same text (what the service
   promises: a stream's text does not depend on its batch mates);
4. the raw engine: single-step calls at batch 1 to 1024 on each provider (chars/s); a lone 16-character prompt's
   call (what a request that comes alone runs first) through ``Runtime.run`` and through ``LonePrompts``;
5. the decode batch's own calls at 256 rows, single-step and of 8 and 16 steps, side by side in this process (rounds
   alternated): on the CPU; on CUDA with the states copied in and out at every call (``--device-batch off``);
   with them kept on the device (service/device.py); and with that and CUDA graphs;
6. served: a real server (`python -m service --provider ...`) per configuration of 5, started side by side and
   measured in turn with real clients: 1, 64 and 256 streams of 2,000 characters (chars/s, time to first chunk).

Needs onnxruntime-gpu (not part of the project's installs: see docs/deployment.md, "GPU"). Example:
    python -m bench.cuda_check --json-out cuda.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine import measure_step_rate
from bench.serve_runs import PROMPT16, fit_prompt, ttfc_probe
from bench.server_proc import ServerProcess
from client.loadgen import run_load
from service.artifact import load_artifact
from service.batch import Joiner
from service.device import new_batch
from service.engine import Engine
from service.prompts import LonePrompts, consume
from service.runtime import Runtime, RuntimeConfig
from service.stream import Stream
from service.types import Chunk, GenerateParams, Sampling, SeqState
from service.vocab import Vocab

PROVIDERS = ("cpu", "cuda")
FP32 = ["--decode-precision", "fp32"]  # the CPU's decode steps as CUDA's: its default (auto) runs them in int8
# the decode batch's configurations (name: runtime config, the same as server flags)
VARIANTS: dict[str, tuple[RuntimeConfig, list[str]]] = {
    "cpu": (RuntimeConfig(provider="cpu", decode_precision="fp32"), ["--provider", "cpu", *FP32]),
    "cpu_device": (RuntimeConfig(provider="cpu", device_batch="on", decode_precision="fp32"),
                   ["--provider", "cpu", "--device-batch", "on", *FP32]),
    "cuda_copied": (RuntimeConfig(provider="cuda", device_batch="off"),
                    ["--provider", "cuda", "--device-batch", "off"]),
    "cuda_device": (RuntimeConfig(provider="cuda", cuda_graphs=False),
                    ["--provider", "cuda", "--cuda-graphs", "false"]),
    "cuda_graphs": (RuntimeConfig(provider="cuda"), ["--provider", "cuda"]),
}  # fmt: skip
SERVED_ONLY = {  # served beside VARIANTS' servers: settings tried on CUDA, and the CPU's default (int8 steps)
    "cuda_graphs_8_steps": ["--provider", "cuda", "--device-steps", "0"],  # one K (8), as before device_steps
    "cpu_default": ["--provider", "cpu"],
}


async def text_of(engine: Engine, prompt: str, params: GenerateParams) -> str:
    """One generation on a fresh state, read to its end."""
    return "".join([e.text async for e in engine.generate(engine.new_state(), prompt, params) if isinstance(e, Chunk)])


def first_difference(a: str, b: str) -> int | None:
    """The first index where ``a`` and ``b`` differ (None: equal)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None if len(a) == len(b)
                else min(len(a), len(b)))  # fmt: skip


async def engine_checks(runtimes: dict[str, Runtime], prompt: str, chars: int) -> dict[str, Any]:
    """Greedy and seeded text on each provider, and seeded streams alone and batched on CUDA."""
    engines = {p: Engine(rt, Vocab(rt.vocabulary), model=rt.model) for p, rt in runtimes.items()}
    for e in engines.values():
        await e.start()
    try:
        greedy = GenerateParams(Sampling(temperature=0.0), chars)
        seeded = GenerateParams(Sampling(temperature=1.0, seed=1), chars)
        texts = {p: (await text_of(e, prompt, greedy), await text_of(e, prompt, seeded)) for p, e in engines.items()}
        cuda = engines["cuda"]
        # each stream its own prompt (a rotation of the prompt) and seed, so rows of one call differ
        prompts = [prompt[i % len(prompt):] + prompt[: i % len(prompt)] for i in range(64)]
        params = [GenerateParams(Sampling(temperature=1.0, seed=100 + i), chars) for i in range(64)]
        batched = await asyncio.gather(*(text_of(cuda, prompts[i], p) for i, p in enumerate(params)))
        alone = [await text_of(cuda, prompts[i], params[i]) for i in (0, 21, 63)]
    finally:
        for e in engines.values():
            await e.close()
    return {
        "greedy_first_difference": first_difference(texts["cpu"][0], texts["cuda"][0]),
        "seeded_first_difference": first_difference(texts["cpu"][1], texts["cuda"][1]),
        "batched_equals_alone": [batched[i] == a for i, a in zip((0, 21, 63), alone, strict=True)],
        "greedy_cuda_head": texts["cuda"][0][:80],
    }


def logits_difference(runtimes: dict[str, Runtime], prompt: str) -> float:
    """The largest absolute difference of a prompt's logits, CUDA against CPU."""
    ids = np.array([Vocab(runtimes["cpu"].vocabulary).encode_array(prompt, "prompt")])
    out = {}
    for p, rt in runtimes.items():
        zero = tuple(s[:, None] for s in rt.zero_state())
        out[p] = rt.run(ids, zero)[0]
    return float(np.abs(out["cpu"] - out["cuda"]).max())


def lone_prompt_calls(rt: Runtime, prompt: str, rounds: int, calls: int) -> dict[str, float]:
    """µs per lone prompt call from a fresh state (what a request that comes alone runs first): ``Runtime.run``
    (the padded rows copied in and out, as before the one-row graph) against ``LonePrompts`` (the one-row graph on
    a device), alternated for ``rounds`` rounds; the median round of each."""
    ids = Vocab(rt.vocabulary).encode_array(prompt, "prompt")
    lone = LonePrompts(rt, len(ids))
    ways = {"run_us": lambda s: consume(rt, [s], int(s.todo.size)), "lone_us": lone.consume}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for key, way in ways.items():
            streams = [Stream(SeqState(rt.zero_state(), seed=i), ids, None, None, None, rt.vocab_size)
                       for i in range(calls + 1)]  # fmt: skip
            way(streams[0])
            start = time.perf_counter()
            for st in streams[1:]:
                way(st)
            times[key].append((time.perf_counter() - start) / calls * 1e6)
    return {k: round(float(np.median(v)), 1) for k, v in times.items()}


def decode_calls(art_path: Path, rows: int, rounds: int, calls: int) -> dict[str, Any]:
    """µs per decode call of a full batch of ``rows``, each variant's batch stepped ``calls`` times a round, the
    variants alternated for ``rounds`` rounds; the median round of each (single-step and several-step calls)."""
    art = load_artifact(art_path)
    runtimes = {name: Runtime(art, config) for name, (config, _) in VARIANTS.items()}
    out: dict[str, Any] = {f"{n}_runtime": [rt.provider, rt.device_batch, rt.cuda_graphs] for n, rt in runtimes.items()}
    batches = {}
    for name, rt in runtimes.items():
        b = new_batch(rt, rows)
        b.prepare(True)
        b.warm()  # (captures a device batch's CUDA graphs, in this thread, which steps it)
        b.rebuild([], [Joiner(rt.zero_state(), 1, np.zeros(rt.vocab_size, bool)) for _ in range(rows)])
        batches[name] = b
        out[f"{name}_graphs_after_prepare"] = rt.cuda_graphs
    kinds = {"step_us": 1, "steps_call_us": 8, "steps16_call_us": 16}  # single steps, and calls of 8 and 16
    times: dict[str, list[float]] = {f"{n}_{k}": [] for n, b in batches.items()
                                     for k, s in kinds.items() if s in (1, *b.step_choices)}  # fmt: skip
    for _ in range(rounds):
        for name, b in batches.items():
            for key, steps in kinds.items():
                if f"{name}_{key}" not in times:
                    continue
                if steps > 1:
                    b.use_steps(steps)
                fn = b.step if steps == 1 else b.steps_call
                fn()
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[f"{name}_{key}"].append((time.perf_counter() - start) / calls * 1e6)
    out.update({k: round(float(np.median(v)), 1) for k, v in times.items()})
    return out


async def served(repo: Path, model: str, prompt: str, levels: list[int], chars: int) -> dict[str, Any]:
    """Each level on a server per variant (VARIANTS), all started side by side, measured in turn."""
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        flags = {**{n: f for n, (_, f) in VARIANTS.items() if n != "cpu_device"}, **SERVED_ONLY}
        servers = {n: stack.enter_context(ServerProcess(repo, [*f, "--default-model", model]))
                   for n, f in flags.items()}  # fmt: skip
        for n, srv in servers.items():
            out[f"{n}_server_log_tail"] = srv.log_text()[-1200:]
            ttfc = await ttfc_probe(srv.target, model, prompt, 30)  # one-character requests, one after another
            out[f"{n}_ttfc_probe_ms"] = {"p50": ttfc.served.p50, "engine_p50": ttfc.engine.p50}
            print(n, out[f"{n}_ttfc_probe_ms"], flush=True)
        for streams in levels:
            for n, srv in servers.items():
                r = await run_load(srv.target, streams, chars, prompt, model=model)
                out[f"{n}_{streams}"] = {"chars_per_s": round(r.chars_per_s), "ttfc_p50_ms": r.ttfc_ms.p50,
                                         "errors": r.errors}
                print(n, streams, out[f"{n}_{streams}"], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"), help="artifact version folder")
    p.add_argument("--chars", type=int, default=300, help="characters of each engine check's text")
    p.add_argument("--batches", default="1,16,64,256,1024", help="raw engine batch sizes")
    p.add_argument("--levels", default="1,64,256", help="served levels (concurrent streams)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the decode-call comparison")
    p.add_argument("--json-out", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    art = load_artifact(a.model)
    runtimes = {pr: Runtime(art, RuntimeConfig(provider=pr, decode_precision="fp32")) for pr in PROVIDERS}
    result: dict[str, Any] = {"providers": {pr: rt.provider for pr, rt in runtimes.items()}}
    print(f"providers: {result['providers']}", flush=True)
    prompt = fit_prompt(PROMPT16, art.info.vocabulary, len(PROMPT16))
    result["logits_max_abs_difference"] = logits_difference(runtimes, prompt * 4)
    result.update(asyncio.run(engine_checks(runtimes, prompt, a.chars)))
    print(json.dumps(result, indent=1), flush=True)
    raw: dict[str, float] = {}
    for batch in (int(b) for b in a.batches.split(",")):
        for pr, rt in runtimes.items():
            raw[f"{pr}_{batch}"] = round(measure_step_rate(a.model, batch, runtime=rt, seconds=0.5).chars_per_s)
    result["raw_chars_per_s"] = raw
    print(json.dumps(raw), flush=True)
    result["lone_prompt_calls"] = {p: lone_prompt_calls(rt, prompt, a.rounds, 100) for p, rt in runtimes.items()}
    print(json.dumps(result["lone_prompt_calls"]), flush=True)
    result["decode_calls"] = decode_calls(a.model, 256, a.rounds, 50)
    print(json.dumps(result["decode_calls"], indent=1), flush=True)
    if a.json_out is not None:  # (what is measured so far, should the served part fail)
        a.json_out.write_text(json.dumps(result, indent=1))
    model = f"{art.info.name}:{art.info.version}"
    levels = [int(n) for n in a.levels.split(",")]
    result["served"] = asyncio.run(served(a.model.parent.parent, model, prompt, levels, 2000))
    print(json.dumps(result["served"], indent=1), flush=True)
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(result, indent=1))
    return 0 if result["providers"]["cuda"] == "cuda" else 1


if __name__ == "__main__":
    sys.exit(main())
