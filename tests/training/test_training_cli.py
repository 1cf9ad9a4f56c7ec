"""charlm-train end to end on a tiny corpus: train, checkpoint contents, eval, sample, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import FORMAT, CheckpointError, load_checkpoint, model_from_checkpoint
from training.cli import main, make_parser
from training.models import ModelConfig

TEXT = "The quick brown fox jumps over the lazy dog.\nA stitch in time saves nine.\n" * 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    (base / "corpus.txt").write_text(TEXT, encoding="utf-8")
    run = base / "run"
    code = main(["train", "--corpus", str(base / "corpus.txt"), "--out-dir", str(run), "--arch", "gru",
                 "--layers", "1", "--hidden-size", "32", "--embedding-size", "8", "--batch-size", "8",
                 "--seq-len", "32", "--lr", "1e-2", "--warmup-steps", "10", "--max-steps", "120",
                 "--eval-interval", "40", "--no-progress"])
    assert code == 0
    return run


def test_run_folder_and_checkpoint_format(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png"):
        assert (run_dir / name).is_file(), name
    ckpt = load_checkpoint(run_dir / "last.pt")  # weights_only=True: plain containers and tensors only
    assert ckpt["format"] == FORMAT and ckpt["step"] == 120 and ckpt["seconds"] > 0
    assert ModelConfig(**ckpt["model_config"]).arch == "gru"
    assert ckpt["vocab"] == "".join(sorted(set(TEXT)))
    json.dumps(ckpt["train_config"])  # JSON-serialisable
    assert ckpt["corpus"]["chars"] == len(TEXT) and len(ckpt["corpus"]["sha256"]) == 64
    assert ckpt["val_loss"] < 2.0 and abs(ckpt["val_bits_per_char"] - ckpt["val_loss"] / 0.6931472) < 1e-4
    best = load_checkpoint(run_dir / "best.pt")
    assert best["val_loss"] == best["best_val_loss"] == ckpt["best_val_loss"]
    model = model_from_checkpoint(ckpt)
    assert not model.training
    logits, _ = model(torch.zeros(1, 3, dtype=torch.int64))
    assert logits.shape == (1, 3, len(ckpt["vocab"]))


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a charlm checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_eval_and_sample(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT[:500], encoding="utf-8")
    assert main(["eval", str(run_dir / "best.pt"), str(text)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chars"] == 500 and 0 < result["loss_nats_per_char"] < 2.0
    assert main(["sample", str(run_dir / "best.pt"), "--prime", "The quick", "--length", "40", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The quick") and len(first) == len("The quick") + 40 + 1
    main(["sample", str(run_dir / "best.pt"), "--prime", "The quick", "--length", "40", "--seed", "3"])
    assert capsys.readouterr().out == first  # seeded sampling is reproducible
    main(["sample", str(run_dir / "best.pt"), "--prime", "The quick", "--length", "12", "--temperature", "0"])
    assert capsys.readouterr().out.startswith("The quick brown")  # greedy follows the one training sentence
    text.write_text("¿Qué?", encoding="utf-8")
    assert main(["eval", str(run_dir / "best.pt"), str(text)]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err


def test_bad_corpus_exits_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["train", "--corpus", str(tmp_path / "empty.txt"), "--out-dir", str(tmp_path / "r")]) == 2
    assert "empty.txt: file is empty" in capsys.readouterr().err


def test_every_subcommand_has_help_with_an_example() -> None:
    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert "example" in p.format_help(), name
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "diagnose" in out.stdout and "export" in out.stdout
