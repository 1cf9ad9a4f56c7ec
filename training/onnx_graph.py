"""The exported ONNX graph: written by torch.onnx, its tensors checked, and verified against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.models import CharRNN, ModelConfig

INPUT_NAME, LOGITS_NAME = "input_ids", "logits"
OPSET = 17
ROLLOUT_CHARS = 256  # verification rollout length
TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and torch (logits and states)


class ExportError(ValueError):
    """The model cannot be exported, or the exported graph disagrees with PyTorch (charlm-train exits 2)."""


def state_io_names(config: ModelConfig) -> list[tuple[str, str, str]]:
    """(logical name, graph input, graph output) per state tensor: h_in/h_out, plus c_in/c_out for the LSTM."""
    return [(s, f"{s}_in", f"{s}_out") for s in config.state_names()]


def write_onnx(model: CharRNN, path: Path) -> None:
    """TorchScript-based export (dynamo=False): it keeps the batch and sequence axes dynamic for nn.LSTM."""
    names = state_io_names(model.config)
    ids = torch.zeros(2, 3, dtype=torch.long)  # (B, T): any size, the axes are declared dynamic
    state = model.init_state(2)
    dynamic = {INPUT_NAME: {0: "batch", 1: "seq"}, LOGITS_NAME: {0: "batch", 1: "seq"}}
    dynamic |= {name: {1: "batch"} for _, i, o in names for name in (i, o)}
    with warnings.catch_warnings():
        # Known and handled: the RNN batch warning asks for the states as graph inputs (they are); nn.RNN's
        # shape asserts become trace-time constants (check_graph checks the dims); the legacy exporter is
        # chosen on purpose (the dynamo one fixed the sequence length in a trial, see docs/artifact.md).
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx|training\.onnx_graph")
        torch.onnx.export(
            model, (ids, state), str(path), dynamo=False, opset_version=OPSET,  # state: a tuple, flattened
            input_names=[INPUT_NAME, *(i for _, i, _ in names)],
            output_names=[LOGITS_NAME, *(o for _, _, o in names)],
            dynamic_axes=dynamic,
        )  # fmt: skip


def check_graph(path: Path, config: ModelConfig) -> None:
    """ONNX checker, then the names, dtypes and dims the exporter meant to write (None = dynamic)."""
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    state = (config.layers, None, config.hidden_size)
    want = {INPUT_NAME: (i64, (None, None)), LOGITS_NAME: (f32, (None, None, config.vocab_size))}
    want |= {name: (f32, state) for _, i, o in state_io_names(config) for name in (i, o)}
    found = {v.name: v for v in [*graph.input, *graph.output]}
    if set(found) != set(want):
        raise ExportError(f"graph tensors are {sorted(found)}, expected {sorted(want)}")
    for name, (dtype, dims) in want.items():
        t = found[name].type.tensor_type
        got = tuple(None if d.dim_param else d.dim_value for d in t.shape.dim)  # an unknown dim reads as 0
        if t.elem_type != dtype or got != dims:
            kind = onnx.TensorProto.DataType.Name
            raise ExportError(f"graph tensor {name} is {kind(t.elem_type)} {got}, expected {kind(dtype)} {dims}")


def _difference(name: str, got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference; for the LSTM cell state, relative to max(1, |c|).

    c is unbounded: counter-like units of the shipped model reach |c| ≈ 200, where one float32 ulp is 1.5e-5
    and torch itself is 2e-4 away from a float64 reference after 256 steps. Logits and h are compared absolutely.
    """
    scale = np.maximum(1.0, np.abs(want)) if name == "c" else 1.0
    return float((np.abs(got - want) / scale).max())


def verify(model: CharRNN, path: Path, tolerance: float) -> float:
    """onnxruntime (CPU) vs torch on a 256-char rollout, stepwise with the state carried and as one call."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the check is small; don't compete for cores
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [INPUT_NAME, *(i for _, i, _ in state_io_names(model.config))]
    names = [LOGITS_NAME, *model.config.state_names()]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (3, ROLLOUT_CHARS), generator=gen)  # (B=3, T)
    # a non-zero start state, so a graph that ignored its state inputs would fail
    state0 = [0.5 * torch.randn(s.shape, generator=gen) for s in model.init_state(3)]  # each (L, B, H)

    def ort_run(x: torch.Tensor, state: list[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(zip(inputs, [x.numpy(), *state], strict=True))))

    def torch_run(x: torch.Tensor, state: list[np.ndarray]) -> list[np.ndarray]:
        logits, new_state = model(x, tuple(torch.from_numpy(s) for s in state))
        return [logits.numpy(), *(s.numpy() for s in new_state)]

    def rollout(run: Callable[[torch.Tensor, list[np.ndarray]], list[np.ndarray]], step: int) -> list[np.ndarray]:
        state, logits = [s.numpy() for s in state0], []
        for t in range(0, ROLLOUT_CHARS, step):
            out = run(ids[:, t : t + step], state)
            logits.append(out[0])
            state = out[1:]
        return [np.concatenate(logits, axis=1), *state]  # (B, T, V), then the final state

    # oneDNN's LSTM JIT-compiles kernels on first use (~2 s); the plain ATen kernels are the reference anyway
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp: assigning sets the flag
    worst = dict.fromkeys(names, 0.0)
    try:
        with torch.no_grad():
            for n in (1, ROLLOUT_CHARS):
                for name, got, want in zip(names, rollout(ort_run, n), rollout(torch_run, n), strict=True):
                    worst[name] = float(np.maximum(worst[name], _difference(name, got, want)))  # keeps NaN
    finally:
        torch.backends.mkldnn.enabled = onednn
    for name, diff in worst.items():
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(f"onnxruntime disagrees with PyTorch on {name}: difference {diff:.3g} > {tolerance:g}")
    return max(worst.values())
