"""Ctrl-C or SIGTERM stops a run between two steps: resuming it gives bit for bit the run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.cli import main
from training.metrics import read_metrics
from training.trainer import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
STOP_AT = 17  # the signal arrives during the 18th step, mid-window: neither a log nor a checkpoint step


def _args(corpus: Path, run: Path, *extra: str) -> list[str]:
    # dropout consumes the RNG in every training forward: a checkpoint taken mid-step would not resume exactly
    return ["train", "--corpus", str(corpus), "--out-dir", str(run), "--layers", "2", "--hidden-size", "16",
            "--embedding-size", "8", "--dropout", "0.2", "--batch-size", "4", "--seq-len", "16", "--max-steps", "40",
            "--max-seconds", "0", "--checkpoint-interval", "1000", "--eval-interval", "10", "--log-interval", "5",
            "--eval-batch-size", "4", "--threads", "1", "--no-progress", *extra]


def _signal_mid_step(monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    """Sends ``sig`` to this process from inside the model's forward pass of step STOP_AT + 1."""
    train_step: Callable[[Trainer], float] = Trainer.train_step

    def step(self: Trainer) -> float:
        if self.step != STOP_AT:
            return train_step(self)
        hook = self.model.register_forward_hook(lambda *_: os.kill(os.getpid(), sig))  # after dropout drew
        try:
            return train_step(self)
        finally:
            hook.remove()

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_matches_an_uninterrupted_run(
    sig: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    stopped, clean = tmp_path / "stopped", tmp_path / "clean"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    with monkeypatch.context() as m:
        _signal_mid_step(m, sig)
        assert main(_args(corpus, stopped)) == 128 + sig
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["interrupted"] is True and result["step"] == STOP_AT + 1  # the step under way was finished
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    assert load_checkpoint(stopped / "last.pt")["step"] == STOP_AT + 1
    logged = [r["step"] for r in read_metrics(stopped / "metrics.jsonl") if "train_loss" in r]
    assert logged == [5, 10, 15, STOP_AT + 1]  # the partial window is logged, not lost

    assert main(_args(corpus, stopped, "--resume")) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["interrupted"] is False
    assert main(_args(corpus, clean)) == 0
    ours, theirs = load_checkpoint(stopped / "last.pt"), load_checkpoint(clean / "last.pt")
    assert ours["step"] == theirs["step"] == 40
    for key, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][key], tensor), key
    assert ours["val_loss"] == theirs["val_loss"]
    assert torch.equal(ours["rng"]["torch"], theirs["rng"]["torch"])


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    args = _args(corpus, tmp_path / "run")
    args[args.index("--max-steps") + 1] = "10"
    assert main(args) == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8")
    assert main([*args, "--resume"]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8") == metrics  # no second validation
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 10
