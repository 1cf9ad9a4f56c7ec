"""A sampling head on the model's graph: the decode call returns each row's next id along with its logits.

The common request (temperature > 0, no top-k, top-p or repetition penalty) needs only softmax(x / T) and an
inverse-CDF draw with the row's uniform. In numpy that is ~8 small array calls per step, 30-140 µs held
under the GIL between two onnxruntime calls (docs/performance.md); as operators appended to the graph it runs
inside the same onnxruntime call, in C++, for a few microseconds. Every operator is row-wise, so a row's
draw depends only on its own logits and uniform (batch-invariant). Rows that need more (greedy, truncation,
penalty) are sampled from the logits by service/sampling.py as before.

The artifact itself is untouched: the service adds the head to its in-memory copy when it loads a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

UNIFORMS = "charlm_uniforms"  # (B, 1) float32 in [0, 1): each row's draw
INV_TEMPERATURE = "charlm_inv_temperature"  # (B, 1) float32: 1 / temperature (1 for rows sampled elsewhere)
NEXT_IDS = "charlm_next_ids"  # (B, 1) int64: the drawn ids, shaped as the next step's input ids
_P = "charlm_head_"  # prefix of the head's intermediate names


def add_sampling_head(model: onnx.ModelProto, logits: str, vocab_size: int) -> onnx.ModelProto:
    """A copy of ``model`` (logits (B, 1, V)) with the inputs UNIFORMS, INV_TEMPERATURE and the output NEXT_IDS.

    NEXT_IDS = min(#{j : cumsum(exp(x - max x))_j < u * sum}, V - 1), x = logits * inv_temperature: the same
    inverse-CDF draw in id order as service.sampling (there in float64, here in float32).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g, v = m.graph, vocab_size
    consts = {
        "shape": np.array([-1, v], np.int64),
        "axis": np.array(1, np.int64),
        "axes": np.array([1], np.int64),
        "last": np.array([v - 1], np.int64),
        "end": np.array([v], np.int64),
        "top": np.array([[v - 1]], np.int64),
    }
    g.initializer.extend(numpy_helper.from_array(a, _P + k) for k, a in consts.items())

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        g.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise ValueError(f"the sampling head needs ONNX opset 13 or later, the model has {opset}")
    x = node("Reshape", [logits, _P + "shape"], _P + "x")  # (B, V)
    x = node("Mul", [x, INV_TEMPERATURE], _P + "scaled")
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on, as an attribute before
        top = node("ReduceMax", [x, _P + "axes"], _P + "max", keepdims=1)
    else:
        top = node("ReduceMax", [x], _P + "max", axes=[1], keepdims=1)
    e = node("Exp", [node("Sub", [x, top], _P + "shifted")], _P + "exp")
    cum = node("CumSum", [e, _P + "axis"], _P + "cum")  # (B, V) unnormalised CDF
    total = node("Slice", [cum, _P + "last", _P + "end", _P + "axes"], _P + "total")  # (B, 1)
    below = node("Less", [cum, node("Mul", [total, UNIFORMS], _P + "threshold")], _P + "below")
    count = node("ReduceSum", [node("Cast", [below], _P + "ones", to=TensorProto.INT64), _P + "axes"],
                 _P + "count", keepdims=1)  # fmt: skip
    node("Min", [count, _P + "top"], NEXT_IDS)  # (B, 1)
    batch = helper.make_tensor_value_info
    g.input.extend([batch(UNIFORMS, TensorProto.FLOAT, ["batch", 1]),
                    batch(INV_TEMPERATURE, TensorProto.FLOAT, ["batch", 1])])  # fmt: skip
    g.output.append(batch(NEXT_IDS, TensorProto.INT64, ["batch", 1]))
    return m
