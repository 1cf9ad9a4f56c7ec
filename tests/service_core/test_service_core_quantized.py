"""int8 decode steps (service/quantized.py): close to fp32, every row independent of its batch mates bit for bit,
the same text from an engine however its calls are made, and clear refusals of what it cannot quantize."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixtures.service_core import ARCHS
from onnx import helper

from service.artifact import Artifact
from service.engine import Engine, EngineConfig
from service.multistep import decode_head
from service.quantized import read_cells
from service.runtime import Runtime, RuntimeConfig
from service.sampling_head import INV_TEMPERATURE, UNIFORMS
from service.types import Chunk, GenerateParams, Sampling
from service.vocab import Vocab


def step_session(artifact: Artifact, precision: str) -> ort.InferenceSession:
    """The decode step's graph (without its sampling head) as the runtime derives it."""
    from service.multistep import head_graph

    graph = head_graph(artifact, precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def real_states(rt: Runtime, rows: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Each row's state after a prompt of its own (the bounded h a cell makes), and each row's next id."""
    rng = np.random.default_rng(7)
    prompts = rng.integers(0, rt.vocab_size, (rows, 12))
    _, states = rt.run(prompts, tuple(np.zeros((rt.layers, rows, rt.hidden), np.float32) for _ in rt.state_inputs))
    return rng.integers(0, rt.vocab_size, (rows, 1)), states


@pytest.mark.parametrize("arch", ARCHS)
def test_an_int8_step_is_close_to_fp32_and_no_row_moves_with_its_batch_mates(
    tiny_artifacts: dict[str, Artifact], tiny_runtimes: dict[str, Runtime], arch: str
) -> None:
    rt, rows = tiny_runtimes[arch], 6
    ids, states = real_states(rt, rows)
    names = [rt.logits_name, *rt.state_outputs]
    head = {UNIFORMS: np.full((rows, 1), 0.5, np.float32), INV_TEMPERATURE: np.ones((rows, 1), np.float32)}
    feed = {rt.input_name: ids, **dict(zip(rt.state_inputs, states, strict=True)), **head}
    fp32 = step_session(tiny_artifacts[arch], "fp32").run(names, feed)
    int8_session = step_session(tiny_artifacts[arch], "int8")
    int8 = int8_session.run(names, feed)
    for a, b in zip(int8, fp32, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert 0 < np.abs(a - b).max() < 0.05 * max(1.0, np.abs(b).max())  # int8's own, and close
    order = np.arange(rows)[::-1]
    for row in range(rows):  # alone, and in the batch reversed: the same bits
        alone = int8_session.run(names, {k: v[row : row + 1] if v.shape[0] == rows else v[:, row : row + 1]
                                         for k, v in feed.items()})  # fmt: skip
        assert np.array_equal(alone[0][0], int8[0][row])
        assert all(np.array_equal(s[:, 0], t[:, row]) for s, t in zip(alone[1:], int8[1:], strict=True))
    rev = int8_session.run(names, {k: v[order] if v.shape[0] == rows else v[:, order] for k, v in feed.items()})
    assert np.array_equal(rev[0], int8[0][order])


async def test_an_int8_engine_serves_one_text_alone_or_batched_in_one_or_several_steps_a_call(
    tiny_artifacts: dict[str, Artifact], fp32_runtimes: dict[str, Runtime]
) -> None:
    artifact, prompts = tiny_artifacts["lstm"], ["The keeper ", "the ", "o", "what say you, "]
    engines = [Engine(rt, Vocab(rt.vocabulary), EngineConfig(inline_prompt_chars=chars), rt.model)
               for rt, chars in ((Runtime(artifact, RuntimeConfig(intra_op_threads=1, decode_precision="int8")), 64),
                                 (Runtime(artifact, RuntimeConfig(intra_op_threads=1, decode_precision="int8",
                                                                  decode_steps=1)), 0))]  # fmt: skip
    fp32 = fp32_runtimes["lstm"]
    fp32_engine = Engine(fp32, Vocab(fp32.vocabulary), EngineConfig(), fp32.model)

    async def logprobs(engine: Engine, prompt: str, seed: int, asked: bool = True) -> tuple[str, list[float]]:
        text, lps = "", []
        params = GenerateParams(Sampling(seed=seed), 50, logprobs=asked)
        async for event in engine.generate(engine.new_state(), prompt, params):
            if isinstance(event, Chunk):
                text, lps = text + event.text, lps + list(event.logprobs or [])
        return text, lps

    try:
        for e in (*engines, fp32_engine):
            await e.start()
        alone = [await logprobs(engines[1], p, seed) for seed, p in enumerate(prompts)]
        for engine in engines:
            together = await asyncio.gather(*(logprobs(engine, p, seed) for seed, p in enumerate(prompts)))
            assert list(together) == alone and all(len(t) == 50 for t, _ in alone)
            # without log-probabilities the first engine's lanes run 8 steps a call (the graph's head draws)
            texts = await asyncio.gather(*(logprobs(engine, p, seed, False) for seed, p in enumerate(prompts)))
            assert [t for t, _ in texts] == [t for t, _ in alone]
        reference = [await logprobs(fp32_engine, p, seed) for seed, p in enumerate(prompts)]
        assert [lp[1:] for _, lp in alone] != [lp[1:] for _, lp in reference]  # the decode steps were int8's
    finally:
        for e in (*engines, fp32_engine):
            await e.close()


def edited(artifact: Artifact, op: str, **attrs: object) -> onnx.ModelProto:
    """The artifact's graph with ``attrs`` set on its ``op`` nodes (in place of the exporter's own)."""
    model = onnx.load(str(artifact.onnx_path))
    for n in model.graph.node:
        if n.op_type == op:
            kept = [a for a in n.attribute if a.name not in attrs]
            del n.attribute[:]
            n.attribute.extend([*kept, *(helper.make_attribute(k, v) for k, v in attrs.items())])
    return model


@pytest.mark.parametrize(("arch", "op", "attrs", "message"), [
    ("rnn", "RNN", {}, None),
    ("rnn", "RNN", {"activations": ["Relu"]}, "only tanh keeps h in [-1, 1]"),
    ("gru", "GRU", {"linear_before_reset": 0}, "linear_before_reset = 1"),
    ("lstm", "LSTM", {"direction": "bidirectional"}, "not a plain forward cell"),
    ("lstm", "LSTM", {"clip": 3.0}, "not a plain forward cell"),
])  # fmt: skip
def test_graphs_int8_cannot_quantize_are_refused_by_name(
    tiny_artifacts: dict[str, Artifact], arch: str, op: str, attrs: dict[str, object], message: str | None
) -> None:
    model = edited(tiny_artifacts[arch], op, **attrs)
    if message is None:
        assert len(read_cells(model)[1]) == 2
        return
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_cells(model)


def test_a_graph_that_is_not_the_exporters_is_refused(tiny_artifacts: dict[str, Artifact]) -> None:
    model = onnx.load(str(tiny_artifacts["lstm"].onnx_path))
    peepholes = onnx.ModelProto()
    peepholes.CopyFrom(model)
    for n in peepholes.graph.node:
        if n.op_type == "LSTM":
            n.input.extend([""] * (7 - len(n.input)) + ["peepholes"])
    with pytest.raises(ValueError, match="not a plain forward cell"):
        read_cells(peepholes)
    kept = [n for n in model.graph.node if n.op_type != "MatMul"]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    with pytest.raises(ValueError, match="not the exporter's"):
        read_cells(model)


def test_auto_decodes_in_int8_on_the_cpu_where_the_graph_allows_it(
    tiny_artifacts: dict[str, Artifact], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tiny_artifacts["gru"]
    assert decode_head(artifact, "auto", "cpu")[0] == "int8"
    assert decode_head(artifact, "auto", "cuda")[0] == "fp32"  # (int8 runs on the CPU provider only)
    assert [decode_head(artifact, p, "cpu")[0] for p in ("fp32", "int8")] == ["fp32", "int8"]
    other = dataclasses.replace(artifact, onnx_path=tmp_path / "model.onnx")  # a graph PyTorch's GRU does not make
    onnx.save(edited(artifact, "GRU", linear_before_reset=0), str(other.onnx_path))
    caplog.set_level(logging.INFO, "service.multistep")
    precision, graph = decode_head(other, "auto", "cpu")  # served as it is, not refused
    assert precision == "fp32" and any(n.op_type == "GRU" for n in graph.graph.node)
    assert "decode steps in fp32 (int8 decode: a GRU needs linear_before_reset = 1" in caplog.text
    with pytest.raises(ValueError, match="linear_before_reset = 1"):
        decode_head(other, "int8", "cpu")  # asked for by name: refused


@pytest.mark.parametrize(("config", "message"), [
    ({"decode_precision": "fp16"}, "decode_precision: 'fp16' is not one of auto, fp32, int8"),
    ({"decode_precision": "int8", "provider": "cuda"}, "decode_precision: int8 runs on the cpu provider only"),
])  # fmt: skip
def test_bad_precisions_are_named(config: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuntimeConfig(**config)  # type: ignore[arg-type]
