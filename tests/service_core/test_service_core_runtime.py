"""Runtime (onnxruntime over real tiny artifacts) and Vocab."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from fixtures.service_core import ARCHS

from service import cores
from service.artifact import Artifact
from service.errors import InvalidArgument
from service.runtime import DEVICE_ROWS, Runtime, RuntimeConfig, probe_min_batch
from service.vocab import Vocab


def random_states(rt: Runtime, batch: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal((rt.layers, batch, rt.hidden)) * 0.5).astype(np.float32) for _ in rt.state_inputs)


@pytest.mark.parametrize("arch", ARCHS)
def test_run_shapes_and_state_carry(tiny_runtimes: dict[str, Runtime], arch: str) -> None:
    rt = tiny_runtimes[arch]
    ids = np.random.default_rng(0).integers(0, rt.vocab_size, (3, 5))
    logits, states = rt.run(ids, random_states(rt, 3))
    assert logits.shape == (3, 5, rt.vocab_size) and logits.dtype == np.float32
    assert [s.shape for s in states] == [(rt.layers, 3, rt.hidden)] * len(rt.state_inputs)
    # five single-character calls carrying the state give the same logits as one call of five
    st = random_states(rt, 3)
    steps = []
    for t in range(5):
        out, st = rt.run(ids[:, t : t + 1], st)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_alone_equal_rows_batched_bitwise(tiny_runtimes: dict[str, Runtime], arch: str) -> None:
    rt = tiny_runtimes[arch]
    ids = np.random.default_rng(1).integers(0, rt.vocab_size, (64, 1))
    states = random_states(rt, 64, seed=1)
    batched, new = rt.run(ids, states)
    for i in (0, 17, 63):
        alone, new_alone = rt.run(ids[i : i + 1], tuple(s[:, i : i + 1] for s in states))
        assert np.array_equal(alone[0], batched[i])
        assert all(np.array_equal(a[:, 0], b[:, i]) for a, b in zip(new_alone, new, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_bound_call_equals_run(tiny_runtimes: dict[str, Runtime], arch: str) -> None:
    rt = tiny_runtimes[arch]
    b = max(4, rt.min_batch)
    ids = np.random.default_rng(2).integers(0, rt.vocab_size, (b, 1))
    states = random_states(rt, b, seed=2)
    logits = np.zeros((b, 1, rt.vocab_size), np.float32)
    out = tuple(np.zeros_like(s) for s in states)
    rt.bind(ids, states, logits, out)()
    ref_logits, ref_states = rt.run(ids, states)
    assert np.array_equal(logits, ref_logits)
    assert all(np.array_equal(a, r) for a, r in zip(out, ref_states, strict=True))


def test_the_arena_setting_reaches_every_session_and_changes_no_output(tiny_artifacts: dict[str, Artifact]) -> None:
    rts = {arena: Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=1, cpu_mem_arena=arena))
           for arena in (True, False)}  # fmt: skip
    for arena, rt in rts.items():
        own = rt.lane_prompts()
        assert own is not None
        decoders = [rt.decoder_session(k, lane) for k in rt.step_counts for lane in (False, True)]
        assert rt.step_counts == (1, 8, 16) and len(set(decoders)) == 6
        sessions = [rt.session, *decoders, own]
        assert [s.get_session_options().enable_cpu_mem_arena for s in sessions] == [arena] * len(sessions)
    ids = np.random.default_rng(4).integers(0, rts[True].vocab_size, (5, 9))
    states = random_states(rts[True], 5, seed=4)
    (on, on_states), (off, off_states) = (rt.run(ids, states) for rt in rts.values())
    assert np.array_equal(on, off)  # where a call's scratch memory comes from changes no bit of its results
    assert all(np.array_equal(a, b) for a, b in zip(on_states, off_states, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_lanes_own_prompt_session_equals_all_threads_bitwise(tiny_artifacts: dict[str, Artifact], arch: str) -> None:
    rt = Runtime(tiny_artifacts[arch], RuntimeConfig(intra_op_threads=2))
    own = rt.lane_prompts()
    assert own is not None and own.get_session_options().intra_op_num_threads == 1
    ids = np.random.default_rng(3).integers(0, rt.vocab_size, (6, 12))
    states = random_states(rt, 6, seed=3)
    shared, shared_states = rt.run(ids, states)
    alone, alone_states = rt.run(ids, states, own)
    assert np.array_equal(alone, shared)  # a prompt's first character does not depend on where it was consumed
    assert all(np.array_equal(a, b) for a, b in zip(alone_states, shared_states, strict=True))


def test_cuda_falls_back_to_cpu_with_a_warning(tiny_artifacts: dict[str, Artifact],
                                               caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing to fall back from")
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        rt = Runtime(tiny_artifacts["gru"], RuntimeConfig(provider="cuda", intra_op_threads=1))
    assert rt.provider == "cpu" and rt.decode_precision == "int8"  # a CPU server then, decoding as one (auto)
    assert any("CUDA" in r.getMessage() for r in caplog.records)
    logits, _ = rt.run(np.zeros((1, 2), np.int64), tuple(s[:, None] for s in rt.zero_state()))
    assert logits.shape == (1, 2, rt.vocab_size)


@pytest.mark.parametrize("kwargs", [{"provider": "tpu"}, {"intra_op_threads": -1}, {"inter_op_threads": -2},
                                    {"device_batch": "gpu"}, {"decode_steps": 0}, {"few_rows_steps": 65},
                                    {"few_rows": -1}, {"device_steps": 65}])  # fmt: skip
def test_runtime_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RuntimeConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "counts", "steps"), [
    ({}, (1, 8, 16), [16, 16, 8]),  # 16 steps a call of up to 64 rows, 8 above
    ({"few_rows": 8}, (1, 8, 16), [16, 8, 8]),
    ({"few_rows_steps": 0}, (1, 8), [8, 8, 8]),  # off
    ({"few_rows_steps": 4}, (1, 8), [8, 8, 8]),  # no more than decode_steps: off
    ({"decode_steps": 1}, (1,), [1, 1, 1]),  # one step a call: none of several, at any size
    ({"device_batch": "on"}, (1, 8, 16), [16, 16, 16]),  # a device batch's calls: device_steps, at any rows
    ({"device_batch": "on", "device_steps": 0}, (1, 8), [8, 8, 8]),
])  # fmt: skip
def test_the_steps_of_a_call_follow_its_rows(tiny_artifacts: dict[str, Artifact], kwargs: dict[str, object],
                                             counts: tuple[int, ...], steps: list[int]) -> None:  # fmt: skip
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=1, **kwargs))  # type: ignore[arg-type]
    assert rt.step_counts == counts
    assert [rt.steps_for(rows) for rows in (1, 64, 65)] == steps


def test_vocab_round_trip_and_errors() -> None:
    vocab = Vocab("abc \n")
    assert vocab.decode(vocab.encode("a cab\n")) == "a cab\n"
    assert vocab.encode_array("cab").tolist() == [2, 0, 1]
    with pytest.raises(InvalidArgument) as e:
        vocab.encode("abé", field="text")
    assert e.value.field == "text"
    assert "'é' (U+00E9)" in str(e.value) and "vocabulary" in str(e.value)
    with pytest.raises(ValueError):
        Vocab("aa")


@pytest.mark.parametrize("quota", [1, 3])
def test_zero_intra_op_threads_follow_the_container_quota(tiny_artifacts: dict[str, Artifact], quota: int,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(f"{quota * 100000} 100000\n")  # what docker's --cpus=N writes
    monkeypatch.setattr(cores, "CPU_MAX", cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # a host with more cores than that
    assert cores.available_cores() == quota
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=0, decode_steps=2))
    sessions = (rt.session, *(rt.decoder_session(k, False) for k in rt.step_counts))
    assert rt.step_counts == (1, 2, 16) and len(set(sessions)) == 4
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [quota] * 4
    for k in rt.step_counts:  # lanes side by side: a thread each
        assert rt.decoder_session(k, True).get_session_options().intra_op_num_threads == 1
    explicit = Runtime(tiny_artifacts["lstm"], RuntimeConfig(intra_op_threads=2, decode_steps=1))
    assert explicit.decoder_session(1, False).get_session_options().intra_op_num_threads == 2  # kept as set


class _RecordingBinding:
    """Stands in for onnxruntime's IOBinding: records which inputs were bound, and when."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def bind_cpu_input(self, name: str, _array: np.ndarray) -> None:
        self.log.append(f"bind {name}")

    def bind_output(self, name: str, *_args: object) -> None:
        self.log.append(f"out {name}")


class _RecordingSession:
    def __init__(self) -> None:
        self.log: list[str] = []

    def io_binding(self) -> _RecordingBinding:
        return _RecordingBinding(self.log)

    def run_with_iobinding(self, _binding: _RecordingBinding) -> None:
        self.log.append("run")


@pytest.mark.parametrize(("provider", "expected"), [
    ("cpu", ["bind ids", "out y", "run", "run"]),  # onnxruntime reads a bound CPU array at every run
    ("cuda", ["bind ids", "out y", "bind ids", "run", "bind ids", "run"]),  # ...but copies it to a device once
])
def test_a_prepared_call_on_a_device_binds_its_inputs_again_at_every_call(
        tiny_artifacts: dict[str, Artifact], provider: str, expected: list[str]) -> None:  # fmt: skip
    # Bound once, a CUDA decode call read the first step's ids and states at every step (seen on an H200: the
    # greedy text was " C\nC\nC..."); bound again at each call, its text equals the CPU's (bench/cuda_check.py).
    rt = Runtime(tiny_artifacts["gru"], RuntimeConfig())
    rt.provider = provider
    session = _RecordingSession()
    call = rt._bind(session, {"ids": np.zeros((2, 1), np.int64)}, {"y": np.zeros(2, np.float32)})  # type: ignore[arg-type]
    call()
    call()
    assert session.log == expected


def test_a_device_whose_results_depend_on_the_batch_size_pads_every_call(tiny_artifacts: dict[str, Artifact],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(tiny_artifacts["gru"], RuntimeConfig())
    run = rt.run

    def shape_dependent(ids: np.ndarray, states: tuple[np.ndarray, ...], session: object = None) -> object:
        logits, new = run(ids, states)
        return logits + np.float32(ids.shape[0] * 1e-6), new  # as kernels chosen by shape round differently

    monkeypatch.setattr(rt, "run", shape_dependent)
    assert probe_min_batch(rt) == 2  # on the CPU: only batch 1 is padded (and a warning)
    rt.provider = "cuda"
    assert probe_min_batch(rt) == DEVICE_ROWS


def test_a_padded_call_gives_every_row_its_own_results(tiny_artifacts: dict[str, Artifact]) -> None:
    rt = Runtime(tiny_artifacts["lstm"], RuntimeConfig())
    rng = np.random.default_rng(5)
    ids = rng.integers(0, rt.vocab_size, (3, 6), dtype=np.int64)
    states = tuple(rng.standard_normal((rt.layers, 3, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
    alone = [rt.run(ids[i : i + 1], tuple(s[:, i : i + 1] for s in states)) for i in range(3)]
    rt.min_batch = 8  # as a GPU's DEVICE_ROWS: 3 rows padded to 8
    logits, new = rt.run(ids, states)
    assert logits.shape[0] == 3 and all(s.shape[1] == 3 for s in new)
    for i, (row_logits, row_states) in enumerate(alone):  # (batch sizes agree on the CPU, see probe_min_batch)
        np.testing.assert_allclose(logits[i], row_logits[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(new, row_states, strict=True):
            np.testing.assert_allclose(a[:, i], b[:, 0], rtol=1e-5, atol=1e-5)
