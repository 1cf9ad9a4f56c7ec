"""int8 prompt calls: an LSTM artifact's sequence graph on onnxruntime's fused int8 LSTM, batch-invariant.

A 16-character prompt's call is most of a lone request's time to first character, and onnxruntime's
``com.microsoft.DynamicQuantizeLSTM`` (int8 weights, activations quantized per call) runs it in about half the
fp32 LSTM's time (docs/performance-history.md, the twenty-first pass). As it comes, it would break the engine's
promise that a seeded stream's text does not depend on its batch mates or on how its text is split into calls:
it quantizes each product's left operand with one scale taken from the min and max of all its values
(``rnn_helpers.cc`` ComputeGemm), so a row moves with the others' values.

Here every row carries its own extremes, so that range is the same in every call:
- the first layer's input is the id as a one-hot row (its range is always [0, 1]), and its weights are the
  embedding's table ``embedding @ W^T`` (one quantization, not two);
- each layer gets two more hidden units, held at h's largest and smallest values: their gates' weights are
  zero and their biases far past the clip bounds of onnxruntime's activations, their c is set to +-100 at the
  start of each call (so tanh(c) is saturated from the first step) and their h to the value it then holds,
  measured once (``_extremes``); their columns in every product's weights are zero, so they change nothing else.
With a fixed scale and weights of at most 63 levels (service/quantized.py: AVX2's int16 pair sums), the int32
sums are exact, and a row's results depend on its own values only. The derived graph keeps the artifact's
inputs and outputs (names and shapes); the extra units are cut from the states it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from service.quantized import Cell, quantize_columns, read_cells

if TYPE_CHECKING:
    from service.artifact import Artifact
    from service.runtime_config import RuntimeConfig

_P = "charlm_p8_"  # prefix of the derived graph's own names
_BIG = 100.0  # past onnxruntime's clip bounds of sigmoid and tanh (20, 10): the extra units saturate
_EXTRA = 2  # hidden units added to each layer: one held at h's largest value, one at its smallest


def _pad_gates(a: np.ndarray, h: int, fill: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``a`` (4*h, ...) in ONNX's gate blocks (i o f c) as (4*(h + 2), ...), each block's two new rows ``fill``
    (a bias's value per unit; weights' rows are zero)."""
    blocks = a.reshape(4, h, *a.shape[1:])
    new = np.zeros((4, _EXTRA, *a.shape[1:]), a.dtype)
    new[:, 0], new[:, 1] = fill
    return np.concatenate([blocks, new], axis=1).reshape(4 * (h + _EXTRA), *a.shape[1:])


def _padded_cell(cell: Cell, w: np.ndarray, first: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (4H', in'), R (4H', H'), B (8H') of ``cell`` with its two extra units (H' = H + 2); ``w``: its input
    weights (4H, in), with two more zero input columns unless ``first`` (the one-hot ids have none)."""
    h = cell.r.shape[1]
    if not first:
        w = np.concatenate([w, np.zeros((w.shape[0], _EXTRA), w.dtype)], axis=1)
    r = np.concatenate([cell.r, np.zeros((cell.r.shape[0], _EXTRA), cell.r.dtype)], axis=1)
    # i, o, f saturate at 1 for both; c's candidate g at +1 for the first unit and -1 for the second
    w_bias = _pad_gates(cell.b[: 4 * h], h).reshape(4, h + _EXTRA)
    w_bias[:, h:] = _BIG
    w_bias[3, h + 1] = -_BIG
    b = np.concatenate([w_bias.reshape(-1), _pad_gates(cell.b[4 * h :], h)])
    return _pad_gates(w, h), _pad_gates(r, h), b.astype(np.float32)


def _quantized(w: np.ndarray, r: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """DynamicQuantizeLSTM's weight inputs, by suffix: W and R as (1, in, 4H) levels with a scale (1, 4H) per
    gate column and zero points, and B (1, 8H)."""
    wq, ws = quantize_columns(w.T)
    rq, rs = quantize_columns(r.T)
    zero = np.zeros((1, ws.size), np.int8)
    return {"w": wq[None], "r": rq[None], "b": b[None], "ws": ws[None], "wz": zero, "rs": rs[None], "rz": zero}


_WEIGHTS = ("w", "r", "b")  # DynamicQuantizeLSTM's inputs: X W R B lens h0 c0 P W_scale W_zp R_scale R_zp
_SCALES = ("ws", "wz", "rs", "rz")


def _lstm(x: str, weights: dict[str, str], h0: str, c0: str, outs: list[str], hidden: int) -> onnx.NodeProto:
    """A DynamicQuantizeLSTM node over ``weights`` (names by ``_quantized``'s suffixes)."""
    inputs = [x, *(weights[k] for k in _WEIGHTS), "", h0, c0, "", *(weights[k] for k in _SCALES)]
    return helper.make_node("DynamicQuantizeLSTM", inputs, outs, name=_P + outs[0], domain="com.microsoft",
                            hidden_size=hidden)  # fmt: skip


def _extremes(q: dict[str, np.ndarray]) -> tuple[float, float]:
    """The h that onnxruntime's int8 LSTM gives the two extra units from c = +-_BIG: h's largest and smallest."""
    h = q["r"].shape[1]
    node = _lstm("x", {k: k for k in q}, "h0", "c0", ["", "y_h"], h)
    graph = helper.make_graph(
        [node], "probe", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("x", "h0", "c0")],
        [helper.make_tensor_value_info("y_h", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, k) for k, a in q.items()])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    # the oldest IR these opsets allow: onnx writes its newest by default, which an older onnxruntime refuses
    # (onnx 1.23's IR 14 and onnxruntime-gpu 1.31's "max supported IR version: 13" failed every LSTM's load)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets, True))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    c0 = np.zeros((1, 1, h), np.float32)
    c0[..., h - _EXTRA :] = (_BIG, -_BIG)
    x = np.full((1, 1, q["w"].shape[1]), 0.5, np.float32)
    y_h = session.run(None, {"x": x, "h0": np.zeros((1, 1, h), np.float32), "c0": c0})[0][0, 0]
    return float(y_h[h - 2]), float(y_h[h - 1])


def int8_prompt_graph(model: onnx.ModelProto, ids: str, states: list[tuple[str, str]],
                      logits: str) -> onnx.ModelProto:  # fmt: skip
    """``model`` (the exporter's LSTM graph) with its layers on ``DynamicQuantizeLSTM``: ids (B, T) and states
    (layers, B, H) -> logits (B, T, V) and states, as the artifact's own; ``states``: (input, output) names, h
    then c. Raises ValueError for any other graph (a GRU or RNN, which onnxruntime has no fused int8 op for)."""
    embedding, cells, dec_w, dec_b = read_cells(model)
    if any(c.op != "LSTM" for c in cells) or len(states) != 2:
        raise ValueError("int8 prompts: onnxruntime's fused int8 recurrent op is an LSTM's only")
    vocab, h, layers = embedding.shape[0], cells[0].r.shape[1], len(cells)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, _P + name))
        return _P + name

    def op(kind: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        nodes.append(helper.make_node(kind, inputs, outputs, name=_P + outputs[0].strip("/"), domain=domain,
                                      **attrs))  # fmt: skip
        return outputs

    quantized = [_quantized(*_padded_cell(c, (embedding @ c.w.T).T if i == 0 else c.w, i == 0))
                 for i, c in enumerate(cells)]  # fmt: skip
    top, bottom = zip(*(_extremes(q) for q in quantized), strict=True)
    # each layer's state: the artifact's (layers, B, H), and the extra units' h and c (the same in every call)
    fill = {0: np.stack([np.r_[np.zeros(h), t, b] for t, b in zip(top, bottom, strict=True)])[:, None],
            1: np.tile(np.r_[np.zeros(h), _BIG, -_BIG], (layers, 1))[:, None]}  # fmt: skip
    pads = const("pads", np.array([0, 0, 0, 0, 0, _EXTRA], np.int64))
    state_in: list[list[str]] = []
    # h's values must stay within the extremes, or a row would widen the range of every row in its call: any h
    # from a model is, but one from the int8 decode step (service/quantized.py) may round to 1.0 where these do not
    low, high = const("h_low", np.array(max(bottom), np.float32)), const("h_high", np.array(min(top), np.float32))
    clipped = [op("Clip", [states[0][0], low, high], [_P + "h_in"])[0], states[1][0]]
    for k, name in enumerate(clipped):
        full = op("Add", [op("Pad", [name, pads], [_P + f"s{k}_pad"])[0], const(f"s{k}_fill",
                  fill[k].astype(np.float32))], [_P + f"s{k}_full"])[0]  # fmt: skip
        parts = [_P + f"s{k}_l{i}" for i in range(layers)]
        state_in.append(op("Split", [full], parts, axis=0) if layers > 1 else [full])
    eye = const("one_hot", np.eye(vocab, dtype=np.float32))
    x = op("Gather", [eye, op("Transpose", [ids], [_P + "ids_t"], perm=[1, 0])[0]], [_P + "x0"], axis=0)[0]
    axis1 = const("axis1", np.array([1], np.int64))
    outs: list[list[str]] = [[], []]
    for i, q in enumerate(quantized):
        y, yh, yc = (_P + f"l{i}_{n}" for n in ("y", "yh", "yc"))
        names = {k: const(f"l{i}_{k}", a) for k, a in q.items()}
        nodes.append(_lstm(x, names, state_in[0][i], state_in[1][i], [y, yh, yc], h + _EXTRA))
        x = op("Squeeze", [y, axis1], [y + "_sq"])[0]  # (T, B, H')
        outs[0].append(yh)
        outs[1].append(yc)
    keep = [const(n, np.array(v, np.int64)) for n, v in (("starts", [0]), ("ends", [h]), ("axes", [2]))]
    for k, (_, name) in enumerate(states):
        both = op("Concat", outs[k], [_P + f"s{k}_out"], axis=0)[0] if layers > 1 else outs[k][0]
        op("Slice", [both, *keep], [name])
    dec = const("dec_w", np.concatenate([dec_w, np.zeros((_EXTRA, dec_w.shape[1]), dec_w.dtype)]))
    y_bt = op("Transpose", [x], [_P + "y_bt"], perm=[1, 0, 2])[0]
    op("Add", [op("MatMul", [y_bt, dec], [_P + "dec"])[0], const("dec_b", dec_b)], [logits])
    src = model.graph
    graph = helper.make_graph(nodes, src.name + "_int8_prompts", list(src.input), list(src.output), inits)
    opsets = [o for o in model.opset_import if o.domain != "com.microsoft"] + [helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)


def prompt_graph(artifact: Artifact, config: RuntimeConfig, decode_precision: str, provider: str) -> tuple[str, bytes]:
    """The precision prompt calls run in and their graph: int8 on the CPU only, "auto" where decode steps run in
    int8 and the graph is an LSTM's; else fp32, the artifact's graph as it is."""
    info, model, precision = artifact.info, onnx.load(str(artifact.onnx_path)), config.prompt_precision
    if provider == "cpu" and (precision == "int8" or (precision == "auto" and decode_precision == "int8")):
        try:
            states = [(s.input, s.output) for s in info.states]
            return "int8", int8_prompt_graph(model, info.input_name, states, info.logits_name).SerializeToString()
        except ValueError:
            if precision == "int8":
                raise
    return "fp32", model.SerializeToString()
