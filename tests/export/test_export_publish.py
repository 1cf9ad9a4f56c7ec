"""Publishing: verification gates the version folder, versions are numbered and never overwritten, and the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures.artifacts import train_tiny

from service.artifact import load_artifact, scan_repository
from training.checkpoint import save_checkpoint
from training.cli import main as train_cli
from training.export import ExportError, export_model
from training.models import CharRNN, ModelConfig, State

VOCAB = "abcdefghij"


class Drifting(CharRNN):
    """A model whose eager forward differs from what it exports: what a broken export looks like."""

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        logits, new_state = super().forward(ids, state)
        return (logits if torch.onnx.is_in_onnx_export() else logits + 1e-3), new_state


class WrongWidth(CharRNN):
    """A model whose logits are wider than its vocabulary: the exporter's dim check must catch it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.decoder = torch.nn.Linear(config.hidden_size, config.vocab_size + 1)


def tiny(arch: str = "gru") -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(arch=arch, vocab_size=len(VOCAB), embedding_size=8, hidden_size=16, layers=1))  # type: ignore[arg-type]


def test_mismatch_refuses_and_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    drifting = Drifting(ModelConfig(arch="lstm", vocab_size=len(VOCAB), embedding_size=8, hidden_size=16, layers=1))
    with pytest.raises(ExportError, match="onnxruntime disagrees with PyTorch"):
        export_model(drifting, VOCAB, repo, "drift")
    assert not repo.exists()  # not even the repository folder
    export_model(tiny(), VOCAB, repo, "good")
    with pytest.raises(ExportError):
        export_model(drifting, VOCAB, repo, "good")
    assert sorted(p.name for p in (repo / "good").iterdir()) == ["1"]  # no version 2, no work folder left


def test_graph_with_wrong_dims_is_refused(tmp_path: Path) -> None:
    wide = WrongWidth(ModelConfig(arch="rnn", vocab_size=len(VOCAB), embedding_size=8, hidden_size=16, layers=1))
    with pytest.raises(
        ExportError, match=r"tensor logits is FLOAT \(None, None, 11\), expected FLOAT \(None, None, 10\)"
    ):
        export_model(wide, VOCAB, tmp_path, "wide")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="vocabulary has 3 characters"):
        export_model(tiny(), "abc", tmp_path, "m")
    with pytest.raises(ExportError, match="model name"):
        export_model(tiny(), VOCAB, tmp_path, "../escape")
    with pytest.raises(ExportError, match="version 0"):
        export_model(tiny(), VOCAB, tmp_path, "m", version=0)
    assert list(tmp_path.iterdir()) == []


def test_versions_are_numbered_and_never_overwritten(tmp_path: Path) -> None:
    model = tiny("rnn")
    assert export_model(model, VOCAB, tmp_path, "m").name == "1"
    assert export_model(model, VOCAB, tmp_path, "m").name == "2"
    assert export_model(model, VOCAB, tmp_path, "m", version=7).name == "7"
    assert export_model(model, VOCAB, tmp_path, "m").name == "8"
    before = (tmp_path / "m" / "7" / "meta.json").read_text()
    with pytest.raises(ExportError, match="already exists"):
        export_model(model, VOCAB, tmp_path, "m", version=7)
    assert (tmp_path / "m" / "7" / "meta.json").read_text() == before
    artifacts, errors = scan_repository(tmp_path)
    assert errors == [] and [a.spec for a in artifacts] == ["m:1", "m:2", "m:7", "m:8"]


def test_concurrent_exporters_take_distinct_versions(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time, torch
        from pathlib import Path
        from training.export import export_model
        from training.models import CharRNN, ModelConfig
        torch.manual_seed(int(sys.argv[1]))
        model = CharRNN(ModelConfig(arch="gru", vocab_size=10, embedding_size=8, hidden_size=16, layers=1))
        # start together (imports take seconds), so the exports really race for the same version numbers
        Path({str(tmp_path)!r}, "ready-" + sys.argv[1]).touch()
        while len(list(Path({str(tmp_path)!r}).glob("ready-*"))) < 2:
            time.sleep(0.01)
        for _ in range(3):
            export_model(model, {VOCAB!r}, Path({str(tmp_path)!r}), "shared")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(seed)]) for seed in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    artifacts, errors = scan_repository(tmp_path)
    assert errors == [] and [a.info.version for a in artifacts] == [1, 2, 3, 4, 5, 6]
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.startswith(".")]


def make_checkpoint(path: Path, tiny_text: str) -> None:
    """A checkpoint with the documented keys (interfaces: training/checkpoint.py)."""
    model, vocab, prov = train_tiny("lstm", tiny_text, steps=5, layers=1)
    save_checkpoint(path, {
        "format": "charlm-checkpoint/1", "model_config": model.config.to_dict(), "model": model.state_dict(),
        "vocab": vocab, "train_config": {"arch": "lstm", "seed": 3}, "step": 5, "seconds": 1.5, "seed": 3,
        "corpus": {"name": "tiny", "sha256": prov.corpus_sha256, "chars": len(tiny_text)},
        "val_loss": prov.val_loss, "val_bits_per_char": prov.val_bits_per_char, "best_val_loss": prov.val_loss,
    })  # fmt: skip


def test_cli_exports_a_checkpoint(tmp_path: Path, tiny_text: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_checkpoint(tmp_path / "best.pt", tiny_text)
    repo = tmp_path / "models"
    args = ["export", str(tmp_path / "best.pt"), "--repo", str(repo), "--name", "tiny", "--train-command", "make it"]
    assert train_cli(args) == 0
    assert train_cli([*args, "--version", "4"]) == 0
    assert str(repo / "tiny" / "1") in capsys.readouterr().out
    info = load_artifact(repo / "tiny" / "4").info
    assert (info.training.steps, info.training.seed, info.corpus.name) == (5, 3, "tiny")
    card = (repo / "tiny" / "4" / "MODEL_CARD.md").read_text()
    assert "make it" in card and "--version 4" in card and "seed 3" in card


def test_cli_fails_cleanly(tmp_path: Path, tiny_text: str, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "models"
    assert train_cli(["export", str(tmp_path / "nope.pt"), "--repo", str(repo), "--name", "x"]) != 0
    assert "nope.pt" in capsys.readouterr().err and not repo.exists()
    make_checkpoint(tmp_path / "best.pt", tiny_text)
    args = ["export", str(tmp_path / "best.pt"), "--repo", str(repo), "--name", "x", "--version", "1"]
    assert train_cli(args) == 0
    assert train_cli(args) != 0
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    assert train_cli(["export", str(tmp_path / "best.pt"), "--repo", str(tmp_path / "a_file"), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "a_file/x: Not a directory" in err and "Traceback" not in err
