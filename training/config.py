"""Training configuration: one frozen dataclass built once at the entry point and passed down."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from training.models import Architecture, ModelConfig

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved (as a dict) in every checkpoint."""

    corpus: str = "shakespeare"  # built-in corpus name, or a UTF-8 text file / folder of them
    out_dir: str = "runs/shakespeare"  # run folder: last.pt, best.pt, metrics.jsonl, curves.png
    # model
    arch: Architecture = "lstm"
    layers: int = 2
    hidden_size: int = 256
    embedding_size: int = 64
    dropout: float = 0.0
    # data: B parallel streams, truncated BPTT windows of T characters
    batch_size: int = 32
    seq_len: int = 32
    val_fraction: float = 0.1  # the last 10% of the corpus is the validation split
    # optimisation: AdamW, linear warmup then cosine decay to lr * min_lr_ratio at the end of the budget
    lr: float = 1e-2
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # budget: whichever of max_steps / max_seconds (training time) is reached first; None = no limit
    max_steps: int | None = None
    max_seconds: float | None = 600.0
    # bookkeeping
    eval_interval: int = 1000  # steps between validations (and at the end)
    checkpoint_interval: int = 200  # steps between last.pt saves (and at the end)
    log_interval: int = 10  # steps between metrics lines
    eval_batch_size: int = 64  # parallel streams over the validation split
    seed: int = 1337
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: Device = "auto"
    resume: bool = False
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("a budget is required: set max_steps and/or max_seconds")
        for name in ("layers", "hidden_size", "embedding_size", "batch_size", "seq_len", "eval_interval",
                     "checkpoint_interval", "log_interval", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None for no step limit), got {self.max_steps}")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be finite and > 0 (or None for no time limit), got {self.max_seconds}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.lr <= 1:  # AdamW moves each weight by ~lr a step: above 1 a run only diverges (or overflows)
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.threads < 0:
            raise ValueError("warmup_steps must be >= 0 and threads >= 0 (0 = torch's default)")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model shape this run trains, for a vocabulary of ``vocab_size`` characters."""
        return ModelConfig(arch=self.arch, vocab_size=vocab_size, embedding_size=self.embedding_size,
                           hidden_size=self.hidden_size, layers=self.layers, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown keys (from other versions) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
