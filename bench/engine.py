"""The raw engine limit of a model artifact: what onnxruntime alone does, before any server.

Measures single-step calls (ids (B, 1)) at several batch sizes (chars/s = B / step time), the same batch
split over one single-threaded lane per core stepping side by side (as the server's engine lanes), the prefill rate
(one long sequence call vs one call per character), and the machine's fp32 GEMM rate through numpy, from
which the compute-bound chars/s follows (FLOPs per character from the artifact's shape).

Example:
    python -m bench.engine --model models/shakespeare/1 --threads 2 --seconds 1
    python -m bench.engine --model models/shakespeare/1 --batches 1,64 --json > engine.json

``measure_step_rate`` is what bench/serve.py imports to measure the raw engine beside the server.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.artifact import ArtifactError, load_artifact
from service.engine import available_cores
from service.runtime import Runtime, RuntimeConfig
from service.tuning import call_times, per_call

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer (gates times hidden outputs)


@dataclass(frozen=True)
class StepRate:
    """Single-step calls at one batch size."""

    batch: int
    step_us: float  # mean wall time of one call
    chars_per_s: float  # batch / step time
    lanes: int = 1  # threads stepping shares of the batch side by side (measure_lanes_rate), each its own calls


def _runtime(artifact_path: Path | str, threads: int, provider: str = "cpu", precision: str = "fp32",
             prompts: str = "auto", steps: int = RuntimeConfig.decode_steps) -> Runtime:  # fmt: skip
    config = RuntimeConfig(provider, intra_op_threads=threads, spinning=False, prefill_spinning=False,
                           decode_precision=precision, prompt_precision=prompts, decode_steps=steps,
                           few_rows_steps=0)  # fmt: skip
    return Runtime(load_artifact(Path(artifact_path)), config)


def measure_step_rate(artifact_path: Path | str, batch: int, threads: int = 0, seconds: float = 1.0,
                      provider: str = "cpu", runtime: Runtime | None = None, steps: int = 1) -> StepRate:  # fmt: skip
    """Chars/s of single-step calls at ``batch`` rows, through the prepared binding the engine uses (``steps`` > 1:
    calls of that many steps through the sampling head, Runtime.bind_steps; step_us is then per step)."""
    rt = runtime or _runtime(artifact_path, threads, provider)
    dt = per_call(_bound_step(rt, batch, steps), seconds) / steps
    return StepRate(batch, dt * 1e6, batch / dt)


def measure_lanes_rate(batch: int, lanes: int, runtime: Runtime, seconds: float = 1.0, steps: int = 1) -> StepRate:
    """Chars/s of ``lanes`` threads, each stepping its own share of ``batch`` rows side by side, as the engine's
    lanes do (service/lane.py); ``runtime`` should make calls on the calling thread alone (intra_op_threads=1).
    step_us is the mean time of one lane's step; ``steps``: as in measure_step_rate. Counted as the engine
    counts its own (service.tuning.call_times): only calls made while every lane is calling."""
    shares = [batch // lanes + (i < batch % lanes) for i in range(lanes)]
    shares = [rows for rows in shares if rows]  # (fewer rows than lanes: the extra lanes have none)
    times = call_times([_bound_step(runtime, rows, steps) for rows in shares], seconds)
    chars_per_s = sum(rows * steps / t for rows, t in zip(shares, times, strict=True))
    return StepRate(batch, sum(times) / len(times) / steps * 1e6, chars_per_s, len(shares))


def _bound_step(rt: Runtime, batch: int, steps: int = 1) -> Callable[[], None]:
    """A prepared single-step call of ``batch`` rows (padded as the engine pads: Runtime.min_batch), or a call of
    ``steps`` steps through the sampling head (one of the runtime's ``step_counts``). A single step
    runs the artifact's graph as exported, or with int8 decoding the server's int8 step (with its head)."""
    rows = max(batch, rt.min_batch)
    ids = np.random.default_rng(0).integers(0, rt.vocab_size, (rows, 1), dtype=np.int64)
    states = tuple(np.zeros((rt.layers, rows, rt.hidden), np.float32) for _ in rt.state_inputs)
    out = tuple(np.zeros_like(s) for s in states)
    if steps > 1:
        if steps not in rt.step_counts:
            raise ValueError(f"{rt.model}: the runtime runs {rt.step_counts} steps per call, not {steps}")
        between = [tuple(np.zeros_like(s) for s in states) for _ in range(steps - 1)]
        u, inv_t = np.full((rows, steps), 0.5, np.float32), np.ones((rows, 1), np.float32)
        step_ids = np.zeros((rows, steps), np.int64)
        return rt.bind_steps(ids, states, out, between, u, inv_t, np.zeros((rows, 1), np.int64), step_ids)
    logits = np.zeros((rows, 1, rt.vocab_size), np.float32)
    if rt.decode_precision != "fp32":
        u, inv_t = np.full((rows, 1), 0.5, np.float32), np.ones((rows, 1), np.float32)
        return rt.bind_decoder(ids, states, logits, out, u, inv_t, np.zeros((rows, 1), np.int64))
    return rt.bind(ids, states, logits, out)


@dataclass(frozen=True)
class PrefillRate:
    """Consuming one prompt: as one sequence call, and as one call per character."""

    chars: int
    one_call_ms: float
    char_steps_ms: float

    @property
    def one_call_chars_per_s(self) -> float:
        return self.chars / self.one_call_ms * 1e3

    @property
    def char_steps_chars_per_s(self) -> float:
        return self.chars / self.char_steps_ms * 1e3


def measure_prefill(artifact_path: Path | str, chars: int = 2000, threads: int = 0, seconds: float = 1.0,
                    runtime: Runtime | None = None) -> PrefillRate:  # fmt: skip
    """Time to consume ``chars`` characters as one sequence call and as one call per character."""
    rt = runtime or _runtime(artifact_path, threads)
    ids = np.random.default_rng(1).integers(0, rt.vocab_size, (1, chars), dtype=np.int64)
    zero = tuple(s[:, None] for s in rt.zero_state())
    one_call = per_call(lambda: rt.run(ids, zero), seconds, min_calls=2)

    def per_char() -> None:
        states = zero
        for t in range(chars):
            _, states = rt.run(ids[:, t : t + 1], states)

    steps = per_call(per_char, seconds, min_calls=1)
    return PrefillRate(chars, one_call * 1e3, steps * 1e3)


def gemm_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """fp32 matrix-multiply rate of numpy's BLAS on n x n matrices, GFLOP/s."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / per_call(lambda: a @ b, seconds) / 1e9


def flops_per_char(architecture: str, layers: int, hidden: int, embedding: int, vocab: int) -> float:
    """Multiply-adds x 2 of one step of one stream: gate GEMMs of every layer plus the output projection."""
    g = GATES[architecture]
    first = 2 * g * hidden * (embedding + hidden)  # layer 0 reads the embedding and its own state
    rest = (layers - 1) * 2 * g * hidden * (2 * hidden)
    return first + rest + 2 * hidden * vocab


@dataclass(frozen=True)
class EngineReport:
    """Every measurement of one artifact."""

    model: str
    shape: str  # e.g. "lstm 2x256"
    threads: int
    padded_batch_1: bool  # batch-1 calls run as 2 rows (Runtime.min_batch)
    steps: list[StepRate]
    lanes: int  # threads stepping batches side by side, one intra-op thread each (the server's default lanes)
    lane_steps: list[StepRate]  # the same batch sizes split over the lanes (measure_lanes_rate); [] for 1 lane
    decode_steps: int  # steps per call of the server's several-steps calls (service/multistep.py); 1 = none
    multi_steps: list[StepRate]  # the batch sizes in calls of decode_steps steps each; [] when 1
    multi_lane_steps: list[StepRate]  # the same split over the lanes; [] for 1 lane
    prefill: PrefillRate
    gemm_gflops: float
    flops_per_char: float
    precision: str = "fp32"  # the decode steps' as resolved (--decode-precision): int8 runs the server's int8 graph
    prompt_precision: str = "fp32"  # the prefill calls' as resolved (--prompt-precision), as the server's prompts

    @property
    def compute_bound_chars_per_s(self) -> float:
        return self.gemm_gflops * 1e9 / self.flops_per_char

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict, derived rates included."""
        d = asdict(self)
        d["prefill"].update(one_call_chars_per_s=self.prefill.one_call_chars_per_s,
                            char_steps_chars_per_s=self.prefill.char_steps_chars_per_s)  # fmt: skip
        d["compute_bound_chars_per_s"] = self.compute_bound_chars_per_s
        return d

    def table(self) -> str:
        """The human-readable form."""
        p = self.prefill
        k = self.decode_steps
        lines = [f"{self.model} ({self.shape}), intra-op threads {self.threads or 'default'}, decode steps in "
                 f"{self.precision}; per step: µs, chars/s",
                 f"{'batch':>6} {'one step per call':>23}   {f'{self.lanes} lanes side by side':>23}   "
                 f"{f'{k} steps per call':>23}   {f'{k} steps, {self.lanes} lanes':>23}"]  # fmt: skip
        columns = [{r.batch: r for r in rates} for rates in (self.lane_steps, self.multi_steps, self.multi_lane_steps)]
        for s in self.steps:
            cells = [r.get(s.batch) for r in columns]
            beside = [f"{c.step_us:>10.1f} {c.chars_per_s:>12,.0f}" if c else f"{'-':>10} {'-':>12}" for c in cells]
            lines.append(f"{s.batch:>6} {s.step_us:>10.1f} {s.chars_per_s:>12,.0f}   " + "   ".join(beside))
        lines.append(f"prefill {p.chars} chars in {self.prompt_precision}: one call {p.one_call_ms:.2f} ms "
                     f"({p.one_call_chars_per_s:,.0f} chars/s), char steps {p.char_steps_ms:.2f} ms "
                     f"({p.char_steps_chars_per_s:,.0f} chars/s)")  # fmt: skip
        lines.append(f"fp32 GEMM {self.gemm_gflops:.1f} GFLOP/s / {self.flops_per_char:,.0f} FLOP per char"
                     f" = compute bound {self.compute_bound_chars_per_s:,.0f} chars/s")  # fmt: skip
        return "\n".join(lines)


def measure(model: Path, batches: list[int], threads: int = 0, seconds: float = 1.0,
            prefill_chars: int = 2000, precision: str = "auto", prompts: str = "auto",
            decode_steps: int = RuntimeConfig.decode_steps) -> EngineReport:  # fmt: skip
    """Every measurement of the artifact at ``model``: its decode steps in ``precision``, ``decode_steps`` a call
    in the calls of several steps, and its prefill calls in ``prompts`` ("auto" as the server resolves each)."""
    rt = _runtime(model, threads, precision=precision, prompts=prompts, steps=decode_steps)
    artifact = load_artifact(model)
    info = artifact.info
    lanes = available_cores()
    lane_config = RuntimeConfig(intra_op_threads=1, decode_precision=precision, decode_steps=decode_steps,
                                few_rows_steps=0)  # fmt: skip
    lane_rt = Runtime(artifact, lane_config)
    k = rt.decode_steps
    return EngineReport(
        model=rt.model,
        shape=f"{info.architecture} {info.layers}x{info.hidden_size}",
        threads=threads,
        padded_batch_1=rt.min_batch > 1,
        steps=[measure_step_rate(model, b, seconds=seconds, runtime=rt) for b in batches],
        lanes=lanes,
        lane_steps=[measure_lanes_rate(b, lanes, lane_rt, seconds) for b in batches if lanes > 1 and b >= lanes],
        decode_steps=k,
        multi_steps=[measure_step_rate(model, b, seconds=seconds, runtime=rt, steps=k) for b in batches if k > 1],
        multi_lane_steps=[
            measure_lanes_rate(b, lanes, lane_rt, seconds, k) for b in batches if k > 1 and lanes > 1 and b >= lanes
        ],
        prefill=measure_prefill(model, prefill_chars, seconds=seconds, runtime=rt),
        gemm_gflops=gemm_gflops(seconds=seconds),
        flops_per_char=flops_per_char(
            info.architecture, info.layers, info.hidden_size, info.embedding_size, info.vocab_size
        ),
        precision=rt.decode_precision,
        prompt_precision=rt.prompt_precision,
    )


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every engine benchmark takes: --model and --threads."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/shakespeare/1"), help="artifact version folder")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = one per core)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--batches", default="1,4,16,64,256", help="comma-separated batch sizes")
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    p.add_argument("--prefill-chars", type=int, default=2000, help="prompt length for the prefill rate")
    p.add_argument("--decode-precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="the decode steps' matrix products, as the server's flag")
    p.add_argument("--prompt-precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="the prefill calls' LSTM layers, as the server's flag")
    p.add_argument("--decode-steps", type=int, default=RuntimeConfig.decode_steps,
                   help="steps a call of the calls of several steps, as the server's flag (1 = none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    try:
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        p.error(f"--batches: {a.batches!r} is not a comma-separated list of integers")
    try:
        report = measure(a.model, batches, a.threads, a.seconds, a.prefill_chars, a.decode_precision,
                         a.prompt_precision, a.decode_steps)
    except (ArtifactError, ValueError) as e:
        p.error(str(e))
    print(json.dumps(report.to_json(), indent=2) if a.json else report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
