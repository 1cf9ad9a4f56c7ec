"""int8 decode steps (``--decode-precision int8``): the artifact's step graph with its matrix products in int8.

A decode step is mostly its recurrent matrix products, and in fp32 they already run at the cores' FMA limit
(docs/performance.md). In int8 (onnxruntime's MatMulIntegerToFloat: u8 x s8 products summed in int32) the
shipped model's step runs ~1.6x faster at 32 rows on one thread, at the same loss on held-out text.

Batch invariance holds because the activations' scale is fixed ahead: every product's left operand is a
hidden state (the layer's own, or the one below), which each cell here keeps in [-1, 1] (tanh, and σ·tanh), so
it is quantized row by row with the scale 1/127 around 128. onnxruntime's dynamic quantization takes one scale
over the whole call instead, so a row's logits moved with its batch mates (bench/quantize.py). Weights are
quantized per output column, symmetric, to ±63: on AVX2 without VNNI u8 x s8 pairs are summed in int16, and
255 x 127 x 2 would saturate it.

The first layer's input product is a lookup: embedding @ W^T + the biases, a (vocab, gates) table computed once
in fp32. The derived graph keeps the artifact's inputs and outputs (names and shapes), so the sampling head and
the unrolling (service/multistep.py) apply to it as to the artifact's own. Prompts are consumed by sequence calls
of another graph (service/int8_prompts.py, in int8 for an LSTM, else the artifact's in fp32): a stream's text
differs from fp32 serving's, but not with its batch mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
H_SCALE = 1.0 / 127.0  # a hidden state's quantization step: [-1, 1] onto 1..255 around 128
W_MAX = 63  # weights' largest level (7 bits: see the module's docstring)
_P = "charlm_q_"  # prefix of the derived graph's own names


@dataclass(frozen=True)
class Cell:
    """One recurrent layer's weights in ONNX's layout: W (G*H, in), R (G*H, H), B (2*G*H: W's bias, R's)."""

    op: str
    w: np.ndarray
    r: np.ndarray
    b: np.ndarray

    @property
    def width(self) -> int:
        """G*H: the gates' pre-activations of one row."""
        return GATES[self.op] * self.r.shape[1]

    @property
    def input_bias(self) -> np.ndarray:
        """The biases added to the input's product: W's and R's, but a GRU's R bias stays inside r ⊙ (R h + b)."""
        w_bias, r_bias = self.b[: self.width], self.b[self.width :]
        return w_bias if self.op == "GRU" else w_bias + r_bias


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (in, out) as int8 levels in [-W_MAX, W_MAX] and a float32 scale per output column."""
    scale = np.abs(w).max(axis=0) / W_MAX
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -W_MAX, W_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def read_cells(model: onnx.ModelProto) -> tuple[np.ndarray, list[Cell], np.ndarray, np.ndarray]:
    """The exporter's graph as weights: embedding (V, E), the layers in order, decoder (H, V) and its bias."""
    g = model.graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    cells: list[Cell] = []
    for n in (n for n in g.node if n.op_type in GATES):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        acts = [a.decode() for a in attrs.get("activations", [])]
        extras = attrs.get("clip") or attrs.get("input_forget") or (len(n.input) > 7 and n.input[7])  # (peepholes)
        if attrs.get("direction", b"forward") != b"forward" or extras:
            raise ValueError(f"int8 decode: {n.op_type} {n.name!r} is not a plain forward cell")
        if n.op_type == "GRU" and attrs.get("linear_before_reset", 0) != 1:
            raise ValueError("int8 decode: a GRU needs linear_before_reset = 1 (PyTorch's GRU)")
        if acts not in ([], ["Tanh"] if n.op_type == "RNN" else []):
            raise ValueError(f"int8 decode: {n.op_type} activations {acts}: only tanh keeps h in [-1, 1]")
        w, r = init[n.input[1]][0], init[n.input[2]][0]
        b = init[n.input[3]][0] if len(n.input) > 3 and n.input[3] else np.zeros(2 * w.shape[0], np.float32)
        cells.append(Cell(n.op_type, w, r, b))
    gathers = [init[n.input[0]] for n in g.node if n.op_type == "Gather" and n.input[0] in init]
    mats = [init[n.input[1]] for n in g.node if n.op_type == "MatMul" and n.input[1] in init]
    adds = [init[i] for n in g.node if n.op_type == "Add" for i in n.input if i in init]
    if not cells or len(gathers) != 1 or len(mats) != 1 or len(adds) != 1:
        raise ValueError("int8 decode: the graph is not the exporter's (embedding, recurrent layers, decoder)")
    return gathers[0], cells, mats[0], adds[0]


class _Builder:
    """Nodes and initializers of the derived graph, each name prefixed."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, _P + name))
        return _P + name

    def op(self, op: str, inputs: list[str], out: str, exact: bool = False, **attrs: Any) -> str:
        """A node of one output, named ``out`` (prefixed unless it is already, or ``exact``)."""
        name = out if exact or out.startswith(_P) else _P + out
        domain = "com.microsoft" if op == "MatMulIntegerToFloat" else ""
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, domain=domain, **attrs))
        return name

    def split(self, x: str, sizes: str, outs: list[str]) -> list[str]:
        """``x`` split along axis 1 into ``outs`` (prefixed)."""
        names = [_P + o for o in outs]
        self.nodes.append(helper.make_node("Split", [x, sizes], names, name=names[0] + "_split", axis=1))
        return names

    def product(self, x: str, w: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x (B, in) in [-1, 1] @ w (in, out) (+ bias), with x and w in int8: (B, out) float32."""
        q, scale = quantize_columns(w)
        xq = self.op("QuantizeLinear", [x, _P + "h_scale", _P + "h_zero"], name + "_x")
        inputs = [xq, self.const(name + "_w", q), _P + "h_scale", self.const(name + "_s", scale), _P + "h_zero"]
        if bias is not None:
            inputs += ["", self.const(name + "_b", bias.astype(np.float32))]
        return self.op("MatMulIntegerToFloat", inputs, name)


def _products(b: _Builder, cell: Cell, layer: int, x: str, h: str) -> tuple[str, str | None]:
    """A layer's gate pre-activations (B, G*H), biases in: for an RNN or LSTM their sum, for a GRU its input's
    and its state's apart (its candidate gate takes r ⊙ (R h + b)). ``x``: layer 0's table rows (W x + biases
    in), else the layer below's new h, quantized with h into one product of [x h] and [W R]."""
    if cell.op == "GRU":
        x_part = b.product(x, cell.w.T, cell.input_bias, f"l{layer}_wx") if layer else x
        return x_part, b.product(h, cell.r.T, cell.b[cell.width :], f"l{layer}_rh")
    if not layer:
        return b.op("Add", [x, b.product(h, cell.r.T, None, "l0_rh")], "l0_pre"), None
    both = b.op("Concat", [x, h], f"l{layer}_xh", axis=1)
    return b.product(both, np.concatenate([cell.w.T, cell.r.T]), cell.input_bias, f"l{layer}_pre"), None


def _step(b: _Builder, cell: Cell, layer: int, pre: str, h_part: str | None, h: str,
          c: str | None) -> tuple[str, str | None]:  # fmt: skip
    """A layer's new h (and c for an LSTM) from its pre-activations (``_products``) and its state."""
    p = f"l{layer}_"
    if cell.op == "RNN":
        return b.op("Tanh", [pre], p + "h"), None
    split = b.const(p + "split", np.full(GATES[cell.op], cell.r.shape[1], np.int64))
    if cell.op == "LSTM":  # ONNX's gate order: i o f c
        i, o, f, g = b.split(pre, split, [p + k for k in "iofg"])
        si, so, sf = (b.op("Sigmoid", [k], k + "_s") for k in (i, o, f))
        assert c is not None
        ig = b.op("Mul", [si, b.op("Tanh", [g], g + "_t")], p + "ig")
        c_new = b.op("Add", [b.op("Mul", [sf, c], p + "fc"), ig], p + "c")
        return b.op("Mul", [so, b.op("Tanh", [c_new], p + "c_t")], p + "h"), c_new
    assert h_part is not None
    xz, xr, xn = b.split(pre, split, [p + "xz", p + "xr", p + "xn"])  # GRU: ONNX's gate order z r h
    hz, hr, hn = b.split(h_part, split, [p + "hz", p + "hr", p + "hn"])
    z = b.op("Sigmoid", [b.op("Add", [xz, hz], p + "z_pre")], p + "z")
    r = b.op("Sigmoid", [b.op("Add", [xr, hr], p + "r_pre")], p + "r")
    n = b.op("Tanh", [b.op("Add", [xn, b.op("Mul", [r, hn], p + "rn")], p + "n_pre")], p + "n")
    # h' = (1 - z) ⊙ n + z ⊙ h = n + z ⊙ (h - n)
    return b.op("Add", [n, b.op("Mul", [z, b.op("Sub", [h, n], p + "hn_d")], p + "zd")], p + "h"), None


def int8_step_graph(model: onnx.ModelProto, ids: str, states: list[tuple[str, str]], logits: str) -> onnx.ModelProto:
    """``model`` (the exporter's graph) as one decode step with int8 products: the same inputs and outputs,
    ids (B, 1) -> logits (B, 1, V); ``states``: its (input, output) state names, h first (c for an LSTM)."""
    embedding, cells, dec_w, dec_b = read_cells(model)
    layers, b = len(cells), _Builder()
    b.const("h_scale", np.array(H_SCALE, np.float32))
    b.const("h_zero", np.array(128, np.uint8))
    b.const("axis0", np.array([0], np.int64))
    b.const("flat", np.array([-1], np.int64))

    def per_layer(name: str) -> list[str]:  # (L, B, H) -> L x (B, H)
        parts = [_P + f"{name}_{i}" for i in range(layers)]
        if layers > 1:
            b.nodes.append(helper.make_node("Split", [name], parts, name=_P + name + "_split", axis=0))
        else:
            parts = [name]
        return [b.op("Squeeze", [p, _P + "axis0"], f"{name}_{i}_sq") for i, p in enumerate(parts)]

    hs = per_layer(states[0][0])
    cs = per_layer(states[1][0]) if len(states) > 1 else [None] * layers
    first = cells[0]
    x = b.op("Gather", [b.const("table", (embedding @ first.w.T + first.input_bias).astype(np.float32)),
                        b.op("Reshape", [ids, _P + "flat"], "ids")], "l0_x", axis=0)  # fmt: skip
    new_h: list[str] = []
    new_c: list[str] = []
    for i, cell in enumerate(cells):
        pre, h_part = _products(b, cell, i, new_h[-1] if i else x, hs[i])
        h, c = _step(b, cell, i, pre, h_part, hs[i], cs[i])
        new_h.append(h)
        if c is not None:
            new_c.append(c)
    out = [(states[0][1], new_h), *([(states[1][1], new_c)] if new_c else [])]
    for name, parts in out:
        b.op("Concat", [b.op("Unsqueeze", [p, _P + "axis0"], p + "_u") for p in parts], name, exact=True, axis=0)
    y = b.op("Add", [b.op("MatMul", [new_h[-1], b.const("dec_w", dec_w)], "dec"), b.const("dec_b", dec_b)], "y")
    b.op("Unsqueeze", [y, b.const("axis1", np.array([1], np.int64))], logits, exact=True)
    src = model.graph
    graph = helper.make_graph(b.nodes, src.name + "_int8", list(src.input), list(src.output), b.inits)
    opsets = [o for o in model.opset_import if o.domain != "com.microsoft"] + [helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
