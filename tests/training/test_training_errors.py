"""Bad input and failed runs end with one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import main

TEXT = "The quick brown fox jumps over the lazy dog.\nA stitch in time saves nine.\n" * 30
TINY = ["--layers", "1", "--hidden-size", "8", "--embedding-size", "4", "--batch-size", "4", "--seq-len", "8",
        "--max-seconds", "0", "--eval-batch-size", "4", "--threads", "1", "--no-progress"]


def _train(corpus: Path, run: Path, steps: int, *extra: str) -> int:
    return main(["train", "--corpus", str(corpus), "--out-dir", str(run), "--max-steps", str(steps), *TINY, *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path / "corpus.txt"


@pytest.mark.parametrize("flag, value, words", [
    ("--min-lr-ratio", "1.5", "min_lr_ratio must be in [0, 1]"), ("--min-lr-ratio", "-0.1", "min_lr_ratio"),
    ("--lr", "nan", "lr must be in (0, 1]"), ("--lr", "inf", "lr must"), ("--lr", "0", "lr must"),
    ("--lr", "1e38", "lr must be in (0, 1], got 1e+38"),
    ("--weight-decay", "-0.01", "weight_decay must be"), ("--grad-clip", "nan", "grad_clip must be"),
    ("--threads", "-1", "threads >= 0"), ("--max-seconds", "nan", "max_seconds must be finite"),
])  # fmt: skip
def test_bad_train_flags(flag: str, value: str, words: str, corpus: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert _train(corpus, tmp_path / "run", 5, flag, value) == 2
    assert words in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert _train(corpus, run, 4, "--eval-interval", "2") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert _train(corpus, run, 4) == 2
    assert "already holds a run" in (err := _error(capsys)) and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert _train(corpus, run, 3, "--overwrite") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 3
    assert torch.load(run / "best.pt", weights_only=True)["step"] == 3  # the old run's best.pt is gone
    with pytest.raises(SystemExit) as caught:  # argparse: the two flags exclude each other
        _train(corpus, run, 3, "--overwrite", "--resume")
    assert caught.value.code == 2


def test_a_diverging_run_stops_without_saving_nan(corpus: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # weights gone to NaN (as an absurd learning rate would make them) give a NaN loss at the next step
    run = tmp_path / "run"
    assert _train(corpus, run, 4, "--checkpoint-interval", "2") == 0
    ckpt = load_checkpoint(run / "last.pt")
    next(iter(ckpt["model"].values())).fill_(float("nan"))
    save_checkpoint(run / "last.pt", ckpt)
    best = (run / "best.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out-dir", str(run), "--max-steps", "8", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "the run diverged" in captured.err and "{" not in captured.out  # no result JSON, so no NaN in it
    assert (run / "best.pt").read_bytes() == best  # nothing written after the NaN
    assert not any(torch.isnan(t).any() for t in load_checkpoint(run / "best.pt")["model"].values())


def test_eval_errors_and_skip_unknown(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(corpus, tmp_path / "run", 4) == 0
    best = str(tmp_path / "run" / "best.pt")
    one = tmp_path / "one.txt"
    one.write_text("T", encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", best, str(one)]) == 2
    assert "at least 2" in _error(capsys)
    assert main(["eval", best, str(corpus), "--threads", "-1"]) == 2
    assert "--threads must be >= 0" in _error(capsys)
    other = tmp_path / "other.txt"
    other.write_text("The $ fox, the € dog.", encoding="utf-8")
    assert main(["eval", best, str(other)]) == 2
    assert "--skip-unknown" in _error(capsys)
    assert main(["eval", best, str(other), "--skip-unknown"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_chars"] == 3 and result["chars"] == len("The $ fox, the € dog.") - 3
    torch.save({"when": datetime.date(2024, 1, 1)}, tmp_path / "alien.pt")  # refused by weights_only loading
    assert main(["eval", str(tmp_path / "alien.pt"), str(corpus)]) == 2
    assert "alien.pt: not a charlm checkpoint" in _error(capsys)
    assert main(["sample", best, "--temperature", "nan"]) == 2
    assert "temperature must be a finite number" in _error(capsys)


@pytest.mark.parametrize("flags, words", [
    (["--distance", "0"], "distance must be >= 2"), (["--distance", "1"], "distance must be >= 2"),
    (["--windows", "0"], "windows must be >= 1"), (["--threads", "-2"], "threads must be >= 0"),
    (["--distance", "5000"], "needs a corpus of at least 5002 characters"),
])  # fmt: skip
def test_bad_diagnose_flags(flags: list[str], words: str, corpus: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["diagnose", "--corpus", str(corpus), "--out-dir", str(tmp_path / "d"), *flags]) == 2
    assert words in _error(capsys)
    assert not (tmp_path / "d").exists()  # refused before any training


def test_a_path_that_is_not_a_folder(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(corpus, corpus, 4) == 2  # --out-dir names a file
    assert "corpus.txt: --out-dir must be a folder" in _error(capsys)
