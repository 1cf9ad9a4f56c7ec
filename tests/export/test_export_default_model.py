"""The default model shipped in models/ loads, its metadata agrees with its graph, and it has learned English."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.artifact import load_artifact, scan_repository

REPO = Path(__file__).resolve().parents[2] / "models"
DEFAULT = REPO / "shakespeare" / "1"
# Held-out style text (not a file of the corpus): a well-trained char model scores it far below uniform.
PASSAGE = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"


def test_shipped_repository_loads_without_errors() -> None:
    artifacts, errors = scan_repository(REPO)
    assert errors == []
    assert "shakespeare:1" in [a.spec for a in artifacts]


def test_default_model_metadata_agrees_with_graph() -> None:
    artifact = load_artifact(DEFAULT)  # checks names, dtypes, shapes, vocab size and sha256 against the graph
    info = artifact.info
    assert (info.architecture, info.layers, info.hidden_size) == ("lstm", 2, 256)
    assert info.corpus.name == "shakespeare" and re.fullmatch(r"[0-9a-f]{64}", info.corpus.sha256)
    assert info.training.steps > 0 and info.training.seconds > 0
    assert 0 < info.training.val_bits_per_char < math.log2(info.vocab_size)
    assert info.training.val_loss_nats == pytest.approx(info.training.val_bits_per_char * math.log(2), rel=1e-6)
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    graph_inputs = {i.name: i.shape for i in session.get_inputs()}
    assert graph_inputs[info.input_name] == ["batch", "seq"]
    for s in info.states:
        assert graph_inputs[s.input] == [info.layers, "batch", info.hidden_size]
    assert [o.name for o in session.get_outputs()] == [info.logits_name, *(s.output for s in info.states)]


def test_default_model_card_records_how_it_was_made() -> None:
    info = load_artifact(DEFAULT).info
    card = (DEFAULT / "MODEL_CARD.md").read_text()
    for needed in ("charlm-train train", "charlm-train export", f"seed {info.training.seed}", info.corpus.sha256,
                   f"{info.training.val_bits_per_char:.4f} bits/char", info.onnx_sha256):  # fmt: skip
        assert needed in card


def test_default_model_predicts_english_far_better_than_chance() -> None:
    artifact = load_artifact(DEFAULT)
    info = artifact.info
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    ids = np.array([[info.vocabulary.index(c) for c in PASSAGE]], dtype=np.int64)  # (1, T)
    state = {s.input: np.zeros((s.layers, 1, s.hidden), np.float32) for s in info.states}
    logits = session.run([info.logits_name], {info.input_name: ids, **state})[0][0]  # (T, V)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # log-softmax
    bits = -logp[np.arange(len(PASSAGE) - 1), ids[0, 1:]].mean() / math.log(2)
    assert bits < 0.6 * math.log2(info.vocab_size)  # uniform guessing is log2(V) ≈ 6 bits/char
