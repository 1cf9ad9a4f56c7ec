"""Where a decode call's time goes, by operator: the recurrent cells against everything around them.

The server's decode calls run the artifact's graph with a sampling head appended, unrolled to K steps per
call (service/sampling_head.py, service/multistep.py), on one thread per lane. For each batch size this
measures, on ``--threads`` threads:

- a K-step call through the prepared binding the server uses, per step, unprofiled (``bench.engine``'s
  ``measure_step_rate``);
- the same graph under onnxruntime's profiler: each operator type's kernel time per step and its nodes;

the two alternated ``--rounds`` times, each keeping its fastest round (the machine's speed moves between them).

The profiler adds a few µs to every operator, so the cells' (LSTM/GRU/RNN) kernel time is read from it (a
kernel of hundreds of µs barely moves) and the rest is the unprofiled step minus that: the most a graph with
fewer operators around the cells could save.

    python -m bench.ops --model models/shakespeare/1 --batches 1,32
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.engine import measure_step_rate, parser
from service.artifact import Artifact, ArtifactError, load_artifact
from service.multistep import head_graph, steps_graph
from service.providers import session_options
from service.runtime import Runtime, RuntimeConfig
from service.sampling_head import INV_TEMPERATURE, UNIFORMS


@dataclass(frozen=True)
class OpsRow:
    """One batch size: µs a step, unprofiled and by operator type under the profiler."""

    rows: int
    step_us: float  # unprofiled, through the server's binding
    cell_us: float  # the recurrent cells' kernels (LSTM, GRU or RNN operators), profiled
    cell_nodes: float  # cell operators a step (one per layer)
    other_nodes: float  # operators a step besides the cells
    profile_us: dict[str, float]  # kernel µs a step by operator type, largest first

    @property
    def other_us(self) -> float:
        """Everything but the cells: the most a graph with fewer operators around them could save."""
        return self.step_us - self.cell_us


def profile(artifact: Artifact, graph: onnx.ModelProto, rows: int, steps: int, threads: int,
            calls: int) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Kernel µs and nodes per step by operator type, over ``calls`` profiled calls of ``graph``."""
    info = artifact.info
    rng = np.random.default_rng(0)
    feed = {info.input_name: rng.integers(0, int(info.vocab_size), (rows, 1)),
            UNIFORMS: rng.random((rows, steps), np.float32), INV_TEMPERATURE: np.ones((rows, 1), np.float32),
            **{s.input: np.zeros((s.layers, rows, s.hidden), np.float32) for s in info.states}}  # fmt: skip
    warmup = 5
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(RuntimeConfig(intra_op_threads=threads), False)  # as the server's decode sessions
        opts.log_severity_level = 3
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ops")
        session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_call = len(kernels) // (warmup + calls)
    us: defaultdict[str, float] = defaultdict(float)
    nodes: defaultdict[str, float] = defaultdict(float)
    for e in kernels[warmup * per_call :]:  # the warm-up calls are profiled too
        us[e["args"]["op_name"]] += e["dur"] / (calls * steps)
        nodes[e["args"]["op_name"]] += 1 / (calls * steps)
    return dict(us), dict(nodes)


def measure(model: Path, batches: list[int], steps: int, threads: int, seconds: float, calls: int,
            rounds: int = 3) -> list[OpsRow]:  # fmt: skip
    """One row per batch size: the unprofiled step beside the profiled operators."""
    artifact = load_artifact(model)
    cell = str(artifact.info.architecture).upper()  # the cells' ONNX operator: LSTM, GRU, RNN
    rt = Runtime(artifact, RuntimeConfig(intra_op_threads=threads, decode_steps=steps))
    graph = steps_graph(artifact, head_graph(artifact), steps)  # as the runtime builds it
    out = []
    for rows in batches:
        # The machine's speed moves between measurements: alternate the two kinds and keep each one's fastest.
        runs = []
        for _ in range(rounds):
            step_us = measure_step_rate(model, rows, seconds=seconds, runtime=rt, steps=steps).step_us
            runs.append((step_us, *profile(artifact, graph, max(rows, rt.min_batch), steps, threads, calls)))
        us, nodes = min(runs, key=lambda r: r[1].get(cell, 0.0))[1:]
        largest = dict(sorted(us.items(), key=lambda kv: -kv[1]))
        cells = nodes.get(cell, 0.0)
        out.append(
            OpsRow(rows, min(r[0] for r in runs), us.get(cell, 0.0), cells, sum(nodes.values()) - cells, largest)
        )
    return out


def report(res: list[OpsRow], spec: str, steps: int, threads: int) -> str:
    """The table, and each batch size's operators by their share of the profiled kernel time."""
    lines = [
        f"{spec}: decode calls of {steps} steps with the sampling head, {threads} thread(s); µs a step",
        f"{'rows':>5} {'step':>8} {'cells':>8} {'other':>8} {'other %':>8} {'other ops':>9}",
    ]
    for r in res:
        lines.append(f"{r.rows:>5} {r.step_us:8.1f} {r.cell_us:8.1f} {r.other_us:8.1f} "
                     f"{100 * r.other_us / r.step_us:7.0f}% {r.other_nodes:9.0f}")  # fmt: skip
    lines.append("(step: unprofiled, through the server's binding; cells: their kernels under onnxruntime's profiler; "
                 "other = step - cells)")  # fmt: skip
    for r in res:
        total = sum(r.profile_us.values())
        lines.append(f"{r.rows} rows, share of the profiled kernel time: "
                     + ", ".join(f"{op} {100 * t / total:.1f}%" for op, t in r.profile_us.items()))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table (or JSON); 2 on an unusable artifact."""
    p = parser(__doc__)
    p.add_argument("--batches", default="1,32", help="comma-separated rows per call (32 = a lane's share of 64)")
    p.add_argument("--steps", type=int, default=8, help="steps per call, as the server's --decode-steps")
    p.add_argument("--seconds", type=float, default=1.0, help="time per unprofiled measurement")
    p.add_argument("--calls", type=int, default=100, help="profiled calls per batch size")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternations of the two measurements (each keeps its fastest)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = p.parse_args(argv)
    threads = a.threads or 1  # a lane beside others: one thread (service/lane.py)
    if a.steps < 2:
        p.error("--steps: at least 2 (the server's calls of several steps)")
    try:
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        p.error(f"--batches: {a.batches!r} is not a comma-separated list of integers")
    try:
        res = measure(a.model, batches, a.steps, threads, a.seconds, a.calls, max(1, a.rounds))
    except (ArtifactError, OSError) as e:
        print(f"bench.ops: {e}")
        return 2
    if a.json:
        print(json.dumps([asdict(r) | {"other_us": r.other_us} for r in res]))
    else:
        print(report(res, load_artifact(a.model).spec, a.steps, threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
