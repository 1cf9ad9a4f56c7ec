"""A lone prompt's prepared call (service/prompts.py) computes what Runtime.run computes, bit for bit; so does
its one-row graph (a device's way: the row repeated inside the call, the first row's outputs only), here on the
CPU and, where onnxruntime has CUDA, on the GPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixtures.service_core import ARCHS

from service.artifact import Artifact
from service.prompts import LONE_MAX_CHARS, LonePrompts, one_row_graph
from service.runtime import Runtime, RuntimeConfig
from service.stream import Stream
from service.types import SeqState


def stream(rt: Runtime, ids: np.ndarray, arrays: tuple[np.ndarray, ...]) -> Stream:
    return Stream(SeqState(arrays, seed=1), ids, None, None, None, rt.vocab_size)


PROVIDERS = ["cpu", *(["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])]


@pytest.mark.parametrize(("provider", "one_row"), [("cpu", False), *((p, True) for p in PROVIDERS)])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_lone_prompt_gives_what_a_plain_call_gives(arch: str, tiny_artifacts: dict[str, Artifact],
                                                     provider: str, one_row: bool) -> None:  # fmt: skip
    rt = Runtime(tiny_artifacts[arch], RuntimeConfig(provider, intra_op_threads=1))
    lone, rng = LonePrompts(rt, 16, one_row), np.random.default_rng(0)
    earlier: list[tuple[np.ndarray, tuple[np.ndarray, ...]]] = []
    for n in (1, 5, 16, 5):  # (5 twice: the second call reuses the binding)
        ids = rng.integers(0, rt.vocab_size, n)
        arrays = tuple(rng.standard_normal((rt.layers, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
        s = stream(rt, ids, arrays)
        logits = lone.consume(s)
        expected, new = rt.run(ids[None], tuple(a[:, None] for a in arrays))
        assert logits is not None and np.array_equal(logits, expected[:, -1:] if one_row else expected)
        assert all(np.array_equal(a, b[:, 0]) for a, b in zip(s.state.arrays, new, strict=True))
        earlier.append((logits, s.state.arrays))
    assert not np.array_equal(earlier[1][0], earlier[3][0])  # each call's results are its own, not the buffers
    assert lone.consume(stream(rt, np.zeros(17, np.int64), rt.zero_state())) is None  # over max_chars: not here


def test_lone_prompts_hold_bindings_for_short_prompts_only(tiny_runtimes: dict[str, Runtime]) -> None:
    rt = tiny_runtimes["lstm"]
    lone = LonePrompts(rt, 10_000)  # (--inline-prompt-chars may be set that high)
    assert lone.consume(stream(rt, np.zeros(LONE_MAX_CHARS + 1, np.int64), rt.zero_state())) is None
    assert lone.consume(stream(rt, np.zeros(LONE_MAX_CHARS, np.int64), rt.zero_state())) is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_the_one_row_graph_runs_the_padded_rows(arch: str, tiny_artifacts: dict[str, Artifact],
                                                tiny_runtimes: dict[str, Runtime]) -> None:  # fmt: skip
    """With 8 rows: what a call of the row and 7 copies of it gives for its first row."""
    rt = tiny_runtimes[arch]
    graph = one_row_graph(onnx.load_from_string(rt.prompt_graph), 8, rt.input_name, rt.logits_name,
                          rt.state_inputs)  # fmt: skip
    session = rt.prompt_session(graph.SerializeToString())
    rng = np.random.default_rng(1)
    ids = rng.integers(0, rt.vocab_size, (1, 9))
    states = tuple(rng.standard_normal((rt.layers, 1, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
    logits, *new = session.run(None, {"charlm_one/" + rt.input_name: ids,
                                      **{"charlm_one/" + k: a for k, a in zip(rt.state_inputs, states, strict=True)}})
    padded, padded_new = rt.run(np.repeat(ids, 8, axis=0), tuple(np.repeat(a, 8, axis=1) for a in states))
    assert logits.shape == (1, 1, rt.vocab_size) and np.array_equal(logits, padded[:1, -1:])
    assert all(np.array_equal(a, b[:, :1]) for a, b in zip(new, padded_new, strict=True))


def test_the_one_row_graph_keeps_its_outputs_apart_by_name(tiny_artifacts: dict[str, Artifact],
                                                           tmp_path: Path) -> None:  # fmt: skip
    """An artifact's graph may list its outputs in any order (the artifact's checks compare names only): the lone
    prompt's logits and states are still its own."""
    model = onnx.load(tiny_artifacts["lstm"].onnx_path)
    outputs = list(model.graph.output)[::-1]  # the states' outputs first, in the other order, the logits last
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    onnx.save(model, tmp_path / "reordered.onnx")
    artifact = replace(tiny_artifacts["lstm"], onnx_path=tmp_path / "reordered.onnx")
    rt = Runtime(artifact, RuntimeConfig(intra_op_threads=1))
    rng = np.random.default_rng(2)
    ids = rng.integers(0, rt.vocab_size, 7)
    arrays = tuple(rng.standard_normal((rt.layers, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
    s = stream(rt, ids, arrays)
    logits = LonePrompts(rt, 16, one_row=True).consume(s)
    expected, new = rt.run(ids[None], tuple(a[:, None] for a in arrays))
    assert logits is not None and np.array_equal(logits, expected[:, -1:])
    assert all(np.array_equal(a, b[:, 0]) for a, b in zip(s.state.arrays, new, strict=True))
