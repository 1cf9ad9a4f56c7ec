"""Round trip per architecture: train a few steps, export, load with the service's loader, compare with torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from charlm.v1 import charlm_pb2
from fixtures.artifacts import train_tiny
from google.protobuf import json_format

from service.artifact import load_artifact, scan_repository
from training.export import export_model


def run_artifact(session: ort.InferenceSession, info: charlm_pb2.ModelInfo, ids: np.ndarray,
                 state: list[np.ndarray]) -> list[np.ndarray]:  # fmt: skip
    """One onnxruntime call using only the names the artifact declares."""
    feeds = {info.input_name: ids, **{s.input: x for s, x in zip(info.states, state, strict=True)}}
    return list(session.run([info.logits_name, *(s.output for s in info.states)], feeds))


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_roundtrip_matches_torch(arch: str, tiny_text: str, tmp_path: Path) -> None:
    model, vocab, prov = train_tiny(arch, tiny_text, steps=10, layers=2)  # type: ignore[arg-type]
    path = export_model(model, vocab, tmp_path, f"rt-{arch}", provenance=prov)
    assert path == tmp_path / f"rt-{arch}" / "1"

    artifact = load_artifact(path)
    info = artifact.info
    assert artifact.spec == f"rt-{arch}:1" and artifact.onnx_path == path / "model.onnx"
    assert (info.architecture, info.layers, info.hidden_size) == (arch, 2, 32)
    assert info.vocabulary == vocab and info.vocab_size == len(vocab)
    assert [s.name for s in info.states] == (["h", "c"] if arch == "lstm" else ["h"])
    assert info.parameters == model.num_parameters()
    assert info.corpus.sha256 == hashlib.sha256(tiny_text.encode()).hexdigest()
    assert info.training.val_loss_nats == pytest.approx(prov.val_loss)
    assert info.training.steps == 10 and json.loads(info.training.config_json)["steps"] == 10

    # the service's view: encode text with the artifact's vocabulary, carry the state across two calls
    text = tiny_text[:120]
    ids = np.array([[info.vocabulary.index(c) for c in text]], dtype=np.int64)  # (1, T)
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    zeros = [np.zeros((s.layers, 1, s.hidden), np.float32) for s in info.states]
    first = run_artifact(session, info, ids[:, :50], zeros)
    second = run_artifact(session, info, ids[:, 50:], first[1:])
    with torch.no_grad():
        logits, state = model(torch.from_numpy(ids))
    got = np.concatenate([first[0], second[0]], axis=1)
    assert got.shape == (1, len(text), len(vocab))
    np.testing.assert_allclose(got, logits.numpy(), atol=1e-4)
    for mine, ref in zip(second[1:], state, strict=True):
        np.testing.assert_allclose(mine, ref.numpy(), atol=1e-4)


def test_meta_is_modelinfo_json_and_card_is_written(model_repo: Path) -> None:
    path = model_repo / "tiny-lstm" / "1"
    assert sorted(p.name for p in path.iterdir()) == ["MODEL_CARD.md", "meta.json", "model.onnx"]
    info = json_format.Parse((path / "meta.json").read_text(), charlm_pb2.ModelInfo())
    assert info == load_artifact(path).info
    assert (info.input_name, info.logits_name) == ("input_ids", "logits")
    assert [(s.input, s.output) for s in info.states] == [("h_in", "h_out"), ("c_in", "c_out")]
    card = (path / "MODEL_CARD.md").read_text()
    assert info.onnx_sha256 in card and info.corpus.sha256 in card and f"{info.parameters:,}" in card


def test_model_repo_fixture_holds_three_loadable_models(model_repo: Path, tiny_text: str) -> None:
    artifacts, errors = scan_repository(model_repo)
    assert errors == []
    assert [a.spec for a in artifacts] == ["tiny-gru:1", "tiny-lstm:1", "tiny-rnn:1"]
    for a in artifacts:
        assert set(tiny_text) == set(a.info.vocabulary)
        assert a.info.training.val_bits_per_char > 0


def test_dynamic_axes_serve_one_step_and_long_batches(model_repo: Path) -> None:
    artifact = load_artifact(model_repo / "tiny-gru" / "1")
    info = artifact.info
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 1), (5, 300)):
        ids = np.zeros((batch, seq), np.int64)
        state = [np.zeros((s.layers, batch, s.hidden), np.float32) for s in info.states]
        logits, h = run_artifact(session, info, ids, state)
        assert logits.shape == (batch, seq, info.vocab_size) and logits.dtype == np.float32
        assert h.shape == (info.layers, batch, info.hidden_size)
