"""bench/quantize.py on the tiny LSTM: what the int8 graph changes and what it keeps (no timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.quantize import main


@pytest.mark.timeout(120)
def test_int8_keeps_the_loss_and_loses_batch_invariance(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_repo / "tiny-lstm" / "1"
    vocabulary = json.loads((model / "meta.json").read_text())["vocabulary"]
    text = tmp_path / "text.txt"
    text.write_text("".join(np.random.default_rng(0).choice(list(vocabulary), 3000)), encoding="utf-8")
    assert main([str(text), "--model", str(model), "--seconds", "0.01", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    fp32, int8 = res["fp32"], res["int8"]
    assert fp32["batch drift"] == 0.0  # a row's logits do not depend on its batch mates
    assert int8["batch drift"] > 0.0  # one activation scale over the whole call: they do
    assert int8["bits per char"] == pytest.approx(fp32["bits per char"], rel=0.02)
    assert fp32.keys() == int8.keys() and all(v > 0 for k, v in int8.items() if "thread" in k)


def test_a_text_outside_the_vocabulary_is_an_error(model_repo: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    text = tmp_path / "text.txt"
    text.write_text("\u00e9" * 100, encoding="utf-8")
    assert main([str(text), "--model", str(model_repo / "tiny-lstm" / "1"), "--seconds", "0.01"]) == 2
    assert "fewer than 2 characters of the model's vocabulary" in capsys.readouterr().out
