"""int8 prompt calls (service/int8_prompts.py): close to fp32, each row independent of its batch mates and of how
its text is split into calls, bit for bit; chosen where they apply, and refused by name where they do not."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixtures.service_core import ARCHS

from service.artifact import Artifact
from service.runtime import Runtime, RuntimeConfig, States


def lstm_runtimes(artifact: Artifact) -> tuple[Runtime, Runtime]:
    """The LSTM's runtime with int8 prompts (by default) and one with its prompts in fp32."""
    return (Runtime(artifact, RuntimeConfig(intra_op_threads=1)),
            Runtime(artifact, RuntimeConfig(intra_op_threads=1, prompt_precision="fp32")))  # fmt: skip


def real_states(rt: Runtime, rows: int, seed: int) -> States:
    """Each row's state after a text of its own: the range a cell's h keeps."""
    ids = np.random.default_rng(seed).integers(0, rt.vocab_size, (rows, 30))
    return rt.run(ids, tuple(np.zeros((rt.layers, rows, rt.hidden), np.float32) for _ in rt.state_inputs))[1]


def test_int8_prompts_are_close_to_fp32_and_no_row_moves_with_its_batch_mates_or_its_calls(
    tiny_artifacts: dict[str, Artifact],
) -> None:
    int8, fp32 = lstm_runtimes(tiny_artifacts["lstm"])
    assert (int8.prompt_precision, fp32.prompt_precision) == ("int8", "fp32")
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in onnx.load_from_string(int8.prompt_graph).graph.node)
    rows, rng = 5, np.random.default_rng(3)
    ids, states = rng.integers(0, int8.vocab_size, (rows, 17)), real_states(int8, rows, 4)
    logits, new = int8.run(ids, states)
    ref_logits, ref_new = fp32.run(ids, states)
    assert 0 < np.abs(logits - ref_logits).max() < 0.05 * np.abs(ref_logits).max()  # int8's own, and close
    assert all(0 < np.abs(a - b).max() < 0.05 * max(1.0, np.abs(b).max()) for a, b in zip(new, ref_new, strict=True))
    for row in range(rows):  # alone, and in two calls of 6 and 11 characters: the same bits
        one = tuple(s[:, row : row + 1] for s in states)
        alone, alone_new = int8.run(ids[row : row + 1], one)
        head, mid = int8.run(ids[row : row + 1, :6], one)
        tail, split_new = int8.run(ids[row : row + 1, 6:], mid)
        assert np.array_equal(alone[0], logits[row]) and np.array_equal(np.concatenate([head, tail], 1), alone)
        for a, b, c in zip(alone_new, split_new, new, strict=True):
            assert np.array_equal(a[:, 0], c[:, row]) and np.array_equal(b, a)
    # mates whose states reach h's bounds, or pass them (clipped in the graph), change nothing of row 0's
    wild = tuple(s.copy() for s in states)
    wild[0][:, 1:] = np.sign(wild[0][:, 1:]) * 1.5
    assert np.array_equal(int8.run(ids, wild)[0][0], logits[0])


def test_prompts_of_an_lstm_with_int8_decode_steps_are_int8_by_default_and_fp32_with_fp32_steps(
    tiny_artifacts: dict[str, Artifact], fp32_runtimes: dict[str, Runtime], tiny_runtimes: dict[str, Runtime]
) -> None:
    assert fp32_runtimes["lstm"].prompt_precision == "fp32"  # (--decode-precision fp32: the graph as exported)
    for arch in ARCHS:  # the fused int8 op is an LSTM's only: the others keep the artifact's graph
        rt = tiny_runtimes[arch]
        assert rt.decode_precision == "int8"
        assert rt.prompt_precision == ("int8" if arch == "lstm" else "fp32")
        if arch != "lstm":
            assert rt.prompt_graph == onnx.load(str(tiny_artifacts[arch].onnx_path)).SerializeToString()
    forced = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=1, decode_precision="fp32",
                                                           prompt_precision="int8"))  # fmt: skip
    assert (forced.decode_precision, forced.prompt_precision) == ("fp32", "int8")


@pytest.mark.parametrize("arch", ["rnn", "gru"])
def test_int8_prompts_asked_for_a_model_without_an_lstm_are_refused(arch: str,
                                                                    tiny_artifacts: dict[str, Artifact]) -> None:
    with pytest.raises(ValueError, match="an LSTM's only"):
        Runtime(tiny_artifacts[arch], RuntimeConfig(intra_op_threads=1, prompt_precision="int8"))


@pytest.mark.parametrize(("config", "message"), [
    ({"prompt_precision": "int4"}, "prompt_precision: 'int4' is not one of auto, fp32, int8"),
    ({"prompt_precision": "int8", "provider": "cuda"}, "prompt_precision: int8 runs on the cpu provider only"),
])  # fmt: skip
def test_bad_prompt_precisions_are_named(config: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuntimeConfig(**config)  # type: ignore[arg-type]


def test_one_row_int8_prompts_run_on_one_thread_with_the_same_bits_as_in_a_batch_on_all(
    tiny_artifacts: dict[str, Artifact],
) -> None:
    int8 = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2))
    fp32 = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2, prompt_precision="fp32"))
    assert int8.small_session.get_session_options().intra_op_num_threads == 1
    assert int8.session.get_session_options().intra_op_num_threads == 2 and fp32.small_session is fp32.session
    rng = np.random.default_rng(5)
    ids, states = rng.integers(0, int8.vocab_size, (4, 16)), real_states(int8, 4, 6)
    logits, new = int8.run(ids, states, int8.session)  # 4 rows on the shared session, on both threads
    out = np.zeros((1, 16, int8.vocab_size), np.float32)
    out_states = tuple(np.zeros((s.shape[0], 1, s.shape[2]), np.float32) for s in states)
    one = tuple(np.ascontiguousarray(s[:, 2:3]) for s in states)
    int8.bind(np.ascontiguousarray(ids[2:3]), one, out, out_states)()  # one row bound: on one thread
    assert np.array_equal(out[0], logits[2])
    assert all(np.array_equal(a[:, 0], b[:, 2]) for a, b in zip(out_states, new, strict=True))


def test_small_int8_prompt_calls_run_on_one_thread_with_the_same_bits_as_on_all(
    tiny_artifacts: dict[str, Artifact],
) -> None:
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2))
    rng, small = np.random.default_rng(6), RuntimeConfig().small_prompt_chars
    assert rt.small_prompt_chars == small == 64
    for rows, chars in ((4, small // 4), (2, 1), (small, 1)):
        ids, states = rng.integers(0, rt.vocab_size, (rows, chars)), real_states(rt, rows, 7)
        assert rt.session_for(ids) is rt.small_session  # a few characters in all: one thread
        logits, new = rt.run(ids, states)
        all_logits, all_new = rt.run(ids, states, rt.session)  # the same call on both threads
        assert np.array_equal(logits, all_logits)
        assert all(np.array_equal(a, b) for a, b in zip(new, all_new, strict=True))
    assert rt.session_for(np.zeros((4, small // 4 + 1), np.int64)) is rt.session  # more: both


def test_the_small_prompt_threshold_is_a_setting(tiny_artifacts: dict[str, Artifact]) -> None:
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2, small_prompt_chars=8))
    assert rt.session_for(np.zeros((2, 4), np.int64)) is rt.small_session
    assert rt.session_for(np.zeros((2, 5), np.int64)) is rt.session  # 10 characters: over the setting
    lone = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2, small_prompt_chars=0))
    assert lone.session_for(np.zeros((1, 300), np.int64)) is lone.small_session  # a lone row: one thread always
    assert lone.session_for(np.zeros((2, 1), np.int64)) is lone.session
    with pytest.raises(ValueError, match="small_prompt_chars"):
        RuntimeConfig(small_prompt_chars=-1)


def test_no_graph_a_runtime_builds_has_a_newer_ir_version_than_the_artifact(
    tiny_artifacts: dict[str, Artifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An onnxruntime that reads the artifact reads every graph derived from it (an older one refuses an IR newer
    than it knows, and onnx writes its newest by default)."""
    ir_versions, session = [], ort.InferenceSession

    def recording(model: str | bytes, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        ir_versions.append(onnx.load_model(model, load_external_data=False).ir_version if isinstance(model, str)
                           else onnx.load_from_string(model).ir_version)  # fmt: skip
        return session(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=1, decode_steps=8))
    assert (rt.prompt_precision, rt.decode_precision, rt.step_counts) == ("int8", "int8", (1, 8, 16))
    artifact_ir = onnx.load_model(str(tiny_artifacts["lstm"].onnx_path), load_external_data=False).ir_version
    assert len(ir_versions) >= 6 and max(ir_versions) <= artifact_ir  # the int8 probe, prompts, each call's steps
