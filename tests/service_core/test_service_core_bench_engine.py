"""bench/engine.py: the FLOP count and a smoke run of the measurements on a tiny model (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.engine import flops_per_char, measure, measure_step_rate


def test_flops_per_char_matches_the_issue_formula_when_embedding_equals_hidden() -> None:
    layers, hidden, vocab = 2, 256, 65
    issue = 2 * layers * 4 * hidden * 2 * hidden + 2 * hidden * vocab  # 2·layers·4·hidden·2·hidden + 2·hidden·vocab
    assert flops_per_char("lstm", layers, hidden, hidden, vocab) == issue
    assert flops_per_char("gru", 1, 8, 4, 10) == 2 * 3 * 8 * (4 + 8) + 2 * 8 * 10
    assert flops_per_char("rnn", 3, 8, 8, 10) == 3 * 2 * 1 * 8 * 16 + 2 * 8 * 10


def test_measurements_run_on_a_tiny_model(model_repo: Path) -> None:
    path = model_repo / "tiny-gru" / "1"
    rate = measure_step_rate(path, batch=4, threads=1, seconds=0.01)
    assert rate.batch == 4 and rate.step_us > 0 and rate.chars_per_s > 0
    report = measure(path, [1, 4], threads=1, seconds=0.01, prefill_chars=20)
    assert [s.batch for s in report.steps] == [1, 4]
    assert report.prefill.chars == 20 and report.compute_bound_chars_per_s > 0
    assert "tiny-gru:1" in report.table() and "compute_bound_chars_per_s" in report.to_json()
