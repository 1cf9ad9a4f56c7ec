"""int8 weights for a served model, measured beside its fp32 graph (not adopted: docs/performance.md).

onnxruntime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations
quantized at run time) of an artifact's graph, and the graph as exported, side by side in one process:

- chars/s of a call of one row and one character, of a 16-character prompt, and of one step of 64 rows;
  with one onnxruntime thread and with `--threads` (default one per core);
- bits per character on a text (the last ``--chars`` of it, from a zero state, as one sequence call);
- batch invariance: the largest change of one row's logits when other rows share its call. fp32 gives 0 (a
  stream's text does not depend on its batch mates, which the engine's tests rely on); int8 quantizes the
  activations with one scale over the whole call, so a row's logits move with the others' values.

    python -m bench.quantize --model models/shakespeare/1 ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.engine import parser
from service.artifact import Artifact, ArtifactError, load_artifact
from service.engine import available_cores
from service.sampling import log_softmax
from service.tuning import per_call

SHAPES = {"1 row, 1 char": (1, 1), "1 row, 16-char prompt": (1, 16), "64 rows, 1 char": (64, 1)}


def quantize(src: Path, dst: Path) -> None:
    """Write ``src``'s graph with int8 weights to ``dst`` (onnxruntime's dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it warns, on the root logger, of a pre-processing step that changes nothing here
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


class Graph:
    """One onnxruntime session over an artifact's graph (or its quantized copy) with feeds of any shape."""

    def __init__(self, artifact: Artifact, path: Path, threads: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.info = artifact.info

    def logits(self, ids: np.ndarray, states: list[np.ndarray] | None = None) -> np.ndarray:
        """Logits (B, T, V) of ids (B, T) from ``states`` (each (layers, B, hidden); zeros when None)."""
        b, info = ids.shape[0], self.info
        states = states or [np.zeros((s.layers, b, s.hidden), np.float32) for s in info.states]
        feed = {info.input_name: ids, **{s.input: a for s, a in zip(info.states, states, strict=True)}}
        return np.asarray(self.session.run([info.logits_name], feed)[0])

    def call(self, rows: int, chars: int) -> Callable[[], object]:
        """A call of ``rows`` rows and ``chars`` characters each, from zero states."""
        ids = np.zeros((rows, chars), np.int64)
        return lambda: self.logits(ids)


def bits_per_char(graph: Graph, ids: np.ndarray) -> float:
    """Mean bits of each id after the first given the ones before it, from a zero state."""
    lp = log_softmax(graph.logits(ids[None, :-1])[0])  # (T - 1, V), float64
    return float(-lp[np.arange(ids.size - 1), ids[1:]].mean() / np.log(2))


def batch_drift(graph: Graph, rows: int = 8, chars: int = 8, seed: int = 0) -> float:
    """The largest |change| of row 0's logits between a call of row 0 alone and one with ``rows - 1`` others."""
    rng = np.random.default_rng(seed)
    info = graph.info
    ids = rng.integers(0, info.vocab_size, (rows, chars))
    states = [rng.normal(0.0, 1.0, (s.layers, rows, s.hidden)).astype(np.float32) for s in info.states]
    alone = graph.logits(ids[:1], [s[:, :1] for s in states])[0]
    together = graph.logits(ids, states)[0]
    return float(np.abs(alone - together).max())


def measure(artifact: Artifact, text: str, seconds: float, threads: int) -> dict[str, dict[str, float]]:
    """Every figure for the fp32 graph and its int8 copy, by graph name; rates on 1 and on ``threads`` threads."""
    vocab = {c: i for i, c in enumerate(artifact.info.vocabulary)}
    ids = np.array([vocab[c] for c in text if c in vocab], np.int64)
    if ids.size < 2:
        raise ValueError("the text has fewer than 2 characters of the model's vocabulary")
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        quantize(artifact.onnx_path, int8)
        for name, path in (("fp32", artifact.onnx_path), ("int8", int8)):
            fig: dict[str, float] = {}
            for n in sorted({1, threads}):
                g = Graph(artifact, path, n)
                for label, (rows, chars) in SHAPES.items():
                    fig[f"{label}, {n} thread(s)"] = rows * chars / per_call(g.call(rows, chars), seconds, min_calls=3)
            fig["bits per char"] = bits_per_char(g, ids)
            fig["batch drift"] = batch_drift(g)
            out[name] = fig
    return out


def report(res: dict[str, dict[str, float]], artifact: Artifact, chars: int) -> str:
    """The table: each figure for fp32 and int8, and int8 / fp32."""
    title = (f"{artifact.spec} fp32 vs int8 weights (onnxruntime dynamic quantization); bits per char over the "
             f"last {chars:,} characters of the text")  # fmt: skip
    lines = [title, f"{'':44} {'fp32':>12} {'int8':>12} {'int8/fp32':>10}"]
    for key, a in res["fp32"].items():
        b = res["int8"][key]
        if key == "batch drift":
            lines.append(f"{'max |change of a row logit| in a batch':44} {a:12.2e} {b:12.2e} {'':>10}")
        elif key == "bits per char":
            lines.append(f"{key:44} {a:12.4f} {b:12.4f} {b / a:10.4f}")
        else:
            lines.append(f"{key + ', chars/s':44} {a:12,.0f} {b:12,.0f} {b / a:9.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table (or JSON); 2 on an unusable artifact or text."""
    p = parser(__doc__)  # --model, --threads (rates are measured on one thread and on these)
    p.add_argument("text", nargs="?", default="../shared/data/tinyshakespeare.txt", help="text for bits per char")
    p.add_argument("--chars", type=int, default=20000, help="characters of the text's end to score")
    p.add_argument("--seconds", type=float, default=1.0, help="per rate measured")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = p.parse_args(argv)
    try:
        artifact = load_artifact(Path(a.model))
        text = Path(a.text).read_text(encoding="utf-8")[-a.chars :]
        res = measure(artifact, text, a.seconds, a.threads or available_cores())
    except (ArtifactError, OSError, ValueError) as e:
        print(f"bench.quantize: {e}")
        return 2
    print(json.dumps(res) if a.json else report(res, artifact, len(text)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
