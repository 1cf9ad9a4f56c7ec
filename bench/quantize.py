"""int8 for a served model, measured beside its fp32 graph: the server's int8 graphs and onnxruntime's own.

Four graphs side by side in one process: the artifact's graph as exported (fp32); the decode step the server
runs with ``--decode-precision int8`` (``service.quantized``: hidden states quantized with a fixed scale, one
step a call, so its sequences are stepped a character a call and it has no prompt figure); the prompt graph it
runs with ``--prompt-precision int8`` (``service.int8_prompts``, an LSTM's only: onnxruntime's fused int8 LSTM
with each layer's quantization range pinned); and onnxruntime's dynamic quantization
(``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized at run time with one scale
over the whole call; not adopted: docs/performance.md):

- chars/s of a call of one row and one character, of a 16-character prompt, and of one step of 64 rows;
  with one onnxruntime thread and with `--threads` (default one per core);
- bits per character on a text (the last ``--chars`` of it, from a zero state, as one sequence call);
- the server's own decode calls (8 steps a call, a lane's one thread; 1 and 32 rows, and 64 over two lanes side
  by side) in fp32 and in int8, alternated three times, the fastest of each;
- batch invariance: the largest change of one row's logits when other rows share its call. fp32 gives 0 (a
  stream's text does not depend on its batch mates, which the engine's tests rely on), and so does the
  server's int8 step and prompt graph; onnxruntime's dynamic quantization does not, as its scale depends on
  the others' values.

    python -m bench.quantize --model models/shakespeare/1 ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.engine import measure_lanes_rate, parser
from service.artifact import Artifact, ArtifactError, load_artifact
from service.engine import available_cores
from service.int8_prompts import int8_prompt_graph
from service.multistep import step_graph
from service.runtime import Runtime, RuntimeConfig
from service.sampling import log_softmax
from service.tuning import per_call

SHAPES = {"1 row, 1 char": (1, 1), "1 row, 16-char prompt": (1, 16), "64 rows, 1 char": (64, 1)}
GRAPHS = ("fp32", "charlm int8", "charlm int8 prompts", "ort dynamic int8")


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

    def __init__(self, artifact: Artifact, path: Path, threads: int, one_step: bool = False) -> None:
        self.one_step = one_step  # a graph of one character a call: sequences are stepped
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.info = artifact.info

    def logits(self, ids: np.ndarray, states: list[np.ndarray] | None = None) -> np.ndarray:
        """Logits (B, T, V) of ids (B, T) from ``states`` (each (layers, B, hidden); zeros when None)."""
        b, info = ids.shape[0], self.info
        states = states or [np.zeros((s.layers, b, s.hidden), np.float32) for s in info.states]
        if not self.one_step:
            feed = {info.input_name: ids, **{s.input: a for s, a in zip(info.states, states, strict=True)}}
            return np.asarray(self.session.run([info.logits_name], feed)[0])
        names, out = [info.logits_name, *(s.output for s in info.states)], []
        for t in range(ids.shape[1]):
            feed = {info.input_name: ids[:, t : t + 1]} | {s.input: a for s, a in zip(info.states, states, strict=True)}
            logits, *states = self.session.run(names, feed)
            out.append(logits)
        return np.concatenate(out, axis=1)

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
        dynamic, steps, prompts = Path(tmp) / "int8.onnx", Path(tmp) / "steps.onnx", Path(tmp) / "prompts.onnx"
        quantize(artifact.onnx_path, dynamic)
        onnx.save(step_graph(artifact, "int8"), str(steps))  # the server's, without its sampling head
        graphs = dict(zip(GRAPHS, (artifact.onnx_path, steps, prompts, dynamic), strict=True))
        try:
            info = artifact.info
            onnx.save(int8_prompt_graph(onnx.load(str(artifact.onnx_path)), info.input_name,
                                        [(s.input, s.output) for s in info.states], info.logits_name), str(prompts))
        except ValueError:  # not an LSTM: no int8 prompt graph
            del graphs["charlm int8 prompts"]
        for name, path in graphs.items():
            fig: dict[str, float] = {}
            for n in sorted({1, threads}):
                g = Graph(artifact, path, n, one_step=path == steps)
                for label, (rows, chars) in SHAPES.items():
                    if chars == 1 or not g.one_step:
                        call = g.call(rows, chars)
                        fig[f"{label}, {n} thread(s)"] = rows * chars / per_call(call, seconds, min_calls=3)
            fig["bits per char"] = bits_per_char(g, ids)
            fig["batch drift"] = batch_drift(g)
            out[name] = fig
    for name, calls in decode_calls(artifact, seconds).items():
        out[name].update(calls)
    return out


def decode_calls(artifact: Artifact, seconds: float, rounds: int = 3) -> dict[str, dict[str, float]]:
    """The server's own decode calls (8 steps through the sampling head, one thread a lane) in fp32 and in int8,
    alternated ``rounds`` times: the fastest chars/s of each, by graph name."""
    runtimes = {name: Runtime(artifact, RuntimeConfig(intra_op_threads=1, decode_precision=precision))
                for name, precision in (("fp32", "fp32"), ("charlm int8", "int8"))}  # fmt: skip
    out: dict[str, dict[str, float]] = {name: {} for name in runtimes}
    for _ in range(rounds):
        for name, rt in runtimes.items():
            for rows, lanes in ((1, 1), (32, 1), (64, 2)):
                key = f"{rows} rows x {rt.decode_steps} steps, {lanes} lane(s)"
                rate = measure_lanes_rate(rows, lanes, rt, seconds, rt.decode_steps).chars_per_s
                out[name][key] = max(out[name].get(key, 0.0), rate)
    return out


def report(res: dict[str, dict[str, float]], artifact: Artifact, chars: int) -> str:
    """The table: each figure for each graph, and each int8 one / fp32."""
    title = (f"{artifact.spec} fp32 vs int8 (charlm's decode step; onnxruntime's dynamic quantization); bits per "
             f"char over the last {chars:,} characters of the text")  # fmt: skip
    others = GRAPHS[1:]
    lines = [title, f"{'':44}" + "".join(f" {g:>19}" for g in GRAPHS) + "".join(f" {g + '/fp32':>24}" for g in others)]
    for key, a in res["fp32"].items():
        vals = [res.get(g, {}).get(key, 0.0) for g in others]  # (0: not measured)
        if key == "batch drift":
            cells = [f"{v:19.2e}" if v or g in res else f"{'-':>19}" for g, v in zip(others, vals, strict=True)]
            lines.append(f"{'max |change of a row logit| in a batch':44} {a:19.2e} " + " ".join(cells))
        else:
            unit, fmt = ("", ".4f") if key == "bits per char" else (", chars/s", ",.0f")
            cells = [f"{v:19{fmt}}" if v else f"{'-':>19}" for v in vals]
            ratios = [f"{v / a:24.4f}" if v and not unit else f"{v / a:23.2f}x" if v else f"{'-':>24}" for v in vals]
            lines.append(f"{key + unit:44} {a:19{fmt}} " + " ".join(cells) + "".join(f" {r}" for r in ratios))
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
