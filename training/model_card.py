"""What an artifact says of itself: meta.json's ModelInfo and the model card, from the model and its provenance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from charlm.v1 import charlm_pb2

from training.models import CharRNN
from training.onnx_graph import INPUT_NAME, LOGITS_NAME, ROLLOUT_CHARS, state_io_names

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """How the model was made: recorded in meta.json and the model card."""

    corpus_name: str = ""
    corpus_sha256: str = ""
    corpus_chars: int = 0
    steps: int = 0
    seconds: float = 0.0
    val_loss: float | None = None  # nats/char over the whole validation split
    val_bits_per_char: float | None = None
    seed: int = 0
    train_config: dict[str, object] = field(default_factory=dict)
    command: str = ""  # the training command line, for the model card

    @classmethod
    def from_checkpoint(cls, ckpt: dict, command: str = "") -> Provenance:
        """Reads the documented checkpoint keys (see training.checkpoint)."""
        corpus = ckpt["corpus"]
        return cls(
            corpus_name=corpus["name"], corpus_sha256=corpus["sha256"], corpus_chars=corpus["chars"],
            steps=ckpt["step"], seconds=ckpt["seconds"], val_loss=ckpt.get("val_loss"),
            val_bits_per_char=ckpt.get("val_bits_per_char"), seed=ckpt["seed"],
            train_config=dict(ckpt["train_config"]), command=command,
        )  # fmt: skip


def sha256(path: Path) -> str:
    """The hex sha256 of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def build_info(
    model: CharRNN, vocab: str, name: str, version: int, onnx_path: Path, prov: Provenance
) -> charlm_pb2.ModelInfo:
    """The artifact's self-description (meta.json), the same message GetModel returns."""
    cfg = model.config
    return charlm_pb2.ModelInfo(
        format_version=FORMAT_VERSION, name=name, version=version, architecture=cfg.arch,
        layers=cfg.layers, hidden_size=cfg.hidden_size, embedding_size=cfg.embedding_size,
        vocabulary=vocab, vocab_size=len(vocab), input_name=INPUT_NAME, logits_name=LOGITS_NAME,
        states=[charlm_pb2.StateTensor(name=s, input=i, output=o, layers=cfg.layers, hidden=cfg.hidden_size)
                for s, i, o in state_io_names(cfg)],
        parameters=model.num_parameters(),
        corpus=charlm_pb2.Corpus(name=prov.corpus_name, sha256=prov.corpus_sha256, chars=prov.corpus_chars),
        training=charlm_pb2.TrainingSummary(
            steps=prov.steps, seconds=prov.seconds, val_loss_nats=prov.val_loss or 0.0,
            val_bits_per_char=prov.val_bits_per_char or 0.0, seed=prov.seed,
            config_json=json.dumps(prov.train_config, sort_keys=True)),
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        onnx_file=onnx_path.name, onnx_sha256=sha256(onnx_path),
    )  # fmt: skip


def model_card(info: charlm_pb2.ModelInfo, prov: Provenance, onnx_bytes: int, diff: float, command: str) -> str:
    """MODEL_CARD.md: what the model is and exactly how it was made."""
    val = "not measured" if prov.val_loss is None else f"{prov.val_loss:.4f} nats/char"
    if prov.val_bits_per_char is not None:
        val += f" ({prov.val_bits_per_char:.4f} bits/char)"
    commands = [c for c in (prov.command, command) if c]
    lines = [
        f"# {info.name}:{info.version}", "",
        f"A character-level {info.architecture.upper()} language model ({info.layers} layer(s), hidden "
        f"{info.hidden_size}, embedding {info.embedding_size}) exported by `charlm-train export`.", "",
        "| | |", "|---|---|",
        f"| parameters | {info.parameters:,} |",
        f"| ONNX file | `{info.onnx_file}`, {onnx_bytes:,} bytes, sha256 `{info.onnx_sha256}` |",
        f"| vocabulary | {info.vocab_size} characters |",
        f"| corpus | {prov.corpus_name or 'unknown'}, {prov.corpus_chars:,} chars, sha256 `{prov.corpus_sha256}` |",
        f"| training | {prov.steps:,} steps, {prov.seconds:.0f} s, seed {prov.seed} |",
        f"| validation loss | {val} |",
        f"| verified | onnxruntime vs PyTorch, {ROLLOUT_CHARS}-char rollout: max difference {diff:.2g} "
        "(absolute; the LSTM cell state relative to max(1, abs(c))) |",
        f"| created | {info.created_at} |", "",
        *(["## How it was made", "", "```", *commands, "```", ""] if commands else []),
        "## Training configuration", "", "```json", json.dumps(prov.train_config, indent=2, sort_keys=True), "```", "",
    ]  # fmt: skip
    return "\n".join(lines)
