"""Several decode steps in one onnxruntime call: the step graph with its sampling head, unrolled.

A decode step's Python around the call (the rows' uniforms, handing each row its character, waking the
event loop) held the GIL for ~100 µs of every ~1 ms step of a 32-row lane, and on 2 busy cores that time
and the waits for the GIL came out of the onnxruntime calls (docs/performance.md). The sampling head draws
each row's next id inside the call, so the next step needs nothing from Python: ``unroll_steps`` chains K
copies of the step, copy j feeding copy j+1 its drawn ids and states, and one call runs K steps per row.
The Python then runs once per K steps.

Every copy computes exactly what one single-step call computes (the same operators on the same inputs), so
a stream's text is bitwise the same either way (tested). A row that ends inside a call (a stop sequence, its
length) needs its state after the step where it ended, so every step's states are outputs too. The copies
share the weights (initializers are referenced by name, not copied).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.quantized import int8_step_graph
from service.sampling_head import INV_TEMPERATURE, NEXT_IDS, UNIFORMS, add_sampling_head

if TYPE_CHECKING:
    from service.artifact import Artifact

log = logging.getLogger(__name__)

STEP_IDS = "charlm_step_ids"  # (B, K) int64: every step's drawn ids; the last column is also NEXT_IDS
_P = "charlm_step"  # prefix of the copies' names: charlm_step{j}/<name in the step graph>


def step_state_name(output: str, step: int) -> str:
    """The graph output holding state ``output`` after step ``step`` (1..K-1; after step K: ``output`` itself)."""
    return f"{_P}{step}/{output}"


def unroll_steps(head: onnx.ModelProto, steps: int, ids_input: str,
                 states: Sequence[tuple[str, str]]) -> onnx.ModelProto:  # fmt: skip
    """``steps`` chained copies of ``head`` (a step graph with the sampling head, logits (B, 1, V)).

    Inputs: the step graph's ids (B, 1) and states, UNIFORMS now (B, steps) (column j is step j's draw), and
    INV_TEMPERATURE. Outputs: the states after the last step (named as in ``head``), NEXT_IDS (B, 1), STEP_IDS
    (B, steps), and each earlier step's states (``step_state_name``). ``states``: (input, output) name pairs.
    """
    if steps < 2:
        raise ValueError(f"steps: at least 2 to unroll, got {steps}")
    src = head.graph
    m = onnx.ModelProto()
    m.CopyFrom(head)
    g = m.graph
    del g.node[:], g.output[:], g.value_info[:]
    shared = {i.name for i in src.initializer} | {INV_TEMPERATURE, ""}
    info = {o.name: o for o in src.output}  # the step graph's outputs
    for i in g.input:
        if i.name == UNIFORMS:
            i.type.tensor_type.shape.dim[1].dim_value = steps
    cut = [numpy_helper.from_array(np.array([j], np.int64), f"{_P}_at{j}") for j in range(steps + 1)]
    g.initializer.extend([*cut, numpy_helper.from_array(np.array([1], np.int64), f"{_P}_axis")])
    feed = {ids_input: ids_input, **{i: i for i, _ in states}}  # what copy j reads for the step graph's inputs
    drawn: list[str] = []
    for j in range(steps):
        last = j == steps - 1

        def name(x: str, j: int = j, last: bool = last) -> str:
            """Copy j's name for the step graph's tensor ``x`` (the last copy's outputs keep theirs)."""
            return x if x in shared or (last and x in info) else f"{_P}{j + 1}/{x}"

        u = f"{_P}{j + 1}/{UNIFORMS}"
        g.node.append(helper.make_node("Slice", [UNIFORMS, f"{_P}_at{j}", f"{_P}_at{j + 1}", f"{_P}_axis"], [u],
                                       name=u))  # fmt: skip
        for n in src.node:
            inputs = [feed.get(x, u if x == UNIFORMS else name(x)) for x in n.input]
            outputs = [name(x) for x in n.output]
            copy = helper.make_node(n.op_type, inputs, outputs, name=f"{_P}{j + 1}/{n.name}", domain=n.domain)
            copy.attribute.extend(n.attribute)
            g.node.append(copy)
        feed = {ids_input: name(NEXT_IDS), **{i: name(o) for i, o in states}}
        drawn.append(name(NEXT_IDS))
        for _, o in states:
            out = onnx.ValueInfoProto()
            out.CopyFrom(info[o])
            out.name = name(o)
            g.output.append(out)
    g.node.append(helper.make_node("Concat", drawn, [STEP_IDS], name=STEP_IDS, axis=1))
    g.output.extend([helper.make_tensor_value_info(NEXT_IDS, TensorProto.INT64, ["batch", 1]),
                     helper.make_tensor_value_info(STEP_IDS, TensorProto.INT64, ["batch", steps])])  # fmt: skip
    return m


def _state_names(artifact: Artifact) -> list[tuple[str, str]]:
    """The graph's (input, output) name of each state tensor, h first."""
    return [(s.input, s.output) for s in artifact.info.states]


def step_graph(artifact: Artifact, precision: str = "fp32") -> onnx.ModelProto:
    """The artifact's graph as exported, or (``precision`` "int8") its one-step form with the matrix products in
    int8 (service/quantized.py): the same inputs and outputs either way."""
    info, model = artifact.info, onnx.load(str(artifact.onnx_path))
    if precision != "int8":
        return model
    return int8_step_graph(model, info.input_name, _state_names(artifact), info.logits_name)


def head_graph(artifact: Artifact, precision: str = "fp32") -> onnx.ModelProto:
    """``step_graph`` with the sampling head: what a decode call of one step runs."""
    info = artifact.info
    return add_sampling_head(step_graph(artifact, precision), info.logits_name, int(info.vocab_size))


def decode_head(artifact: Artifact, precision: str, provider: str) -> tuple[str, onnx.ModelProto]:
    """The precision decode steps run in and ``head_graph`` of it: "auto" is int8 on the CPU where the graph
    allows it (every exporter's graph does), else fp32, with the reason logged."""
    if precision != "auto":
        return precision, head_graph(artifact, precision)
    if provider == "cpu":
        try:
            return "int8", head_graph(artifact, "int8")
        except ValueError as e:  # a graph not the exporter's: serve it as it is rather than refuse it
            log.info("%s: decode steps in fp32 (%s)", artifact.spec, e)
    return "fp32", head_graph(artifact, "fp32")


def steps_graph(artifact: Artifact, head: onnx.ModelProto, steps: int) -> onnx.ModelProto:
    """``head`` (from ``head_graph``) unrolled to ``steps`` decode steps per call."""
    return unroll_steps(head, steps, artifact.info.input_name, _state_names(artifact))
