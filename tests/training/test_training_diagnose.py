"""The gradient-flow diagnostic shows the vanilla RNN's vanishing gradient and the LSTM's highway."""

from __future__ import annotations

from pathlib import Path

from training.corpus import Corpus
from training.diagnose import DiagnoseConfig, near_far_ratio, run

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def test_rnn_gradient_vanishes_much_faster_than_lstm(tmp_path: Path) -> None:
    corpus = Corpus("tiny", SHAKESPEARE.read_text(encoding="utf-8")[:30_000])
    cfg = DiagnoseConfig(out_dir=str(tmp_path), hidden_size=32, train_steps=60, distance=40, windows=16)
    norms = run(cfg, corpus)
    assert len(norms["rnn"]) == len(norms["lstm"]) == 40
    rnn, lstm = near_far_ratio(norms["rnn"]), near_far_ratio(norms["lstm"])
    assert rnn > 1e3 * lstm, f"near/far ratio rnn {rnn:.2e} vs lstm {lstm:.2e}"
    assert norms["lstm"][-1] > norms["rnn"][-1]  # far from the loss, the LSTM still gets a gradient
    assert (tmp_path / "gradient_flow.png").stat().st_size > 0 and (tmp_path / "gradient_norms.json").is_file()
