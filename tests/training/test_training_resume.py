"""A run killed with SIGKILL mid-way resumes from last.pt: no finished work is lost, the curve continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training.checkpoint import CheckpointError, load_checkpoint
from training.cli import main
from training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
STEPS = 300


def _train_cmd(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "train", "--corpus", str(corpus), "--out-dir", str(run),
            "--layers", "2", "--hidden-size", "24", "--embedding-size", "8", "--dropout", "0.1",
            "--batch-size", "4", "--seq-len", "16", "--max-steps", str(STEPS), "--max-seconds", "0",
            "--checkpoint-interval", "20", "--eval-interval", "100", "--log-interval", "10",
            "--eval-batch-size", "8", "--threads", "1", "--no-progress", *extra]


def _last_step(run: Path) -> int:
    try:
        return int(load_checkpoint(run / "last.pt")["step"])
    except CheckpointError:
        return -1  # not written yet


def _train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen(_train_cmd(corpus, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _last_step(killed) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = _last_step(killed)  # the checkpoint survives the kill intact
    assert 60 <= saved < STEPS
    logged_before = max(_train_losses(killed))

    resumed = subprocess.run(_train_cmd(corpus, killed, "--resume"), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120, check=True)
    assert f"at step {saved}" in resumed.stdout  # resumed exactly where the last checkpoint was
    assert _last_step(killed) == STEPS
    main(_train_cmd(corpus, clean)[3:])  # the same run, never killed (in-process: one interpreter start less)

    losses, reference = _train_losses(killed), _train_losses(clean)
    # The curve continues: every logged step once, in order, none missing, none duplicated ...
    records = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "train_loss" in r]
    assert records == list(range(10, STEPS + 1, 10))
    assert logged_before >= saved
    # ... and it is the same curve as a run that was never killed (weights, optimizer, data position,
    # carried hidden state and dropout RNG all restored).
    for step, loss in reference.items():
        assert abs(losses[step] - loss) < 1e-4, (step, losses[step], loss)
    assert losses[STEPS] < losses[10] - 0.5  # and it learned
    final = load_checkpoint(killed / "last.pt")
    assert final["val_loss"] is not None and final["best_val_loss"] <= final["val_loss"]
    assert (killed / "best.pt").is_file() and (killed / "curves.png").stat().st_size > 0
