"""Checkpoints: plain dicts of tensors and Python scalars, written atomically, loaded with weights_only=True.

Format "charlm-checkpoint/1" (the exporter reads it): format, model_config, model, vocab, train_config,
corpus {name, sha256, chars}, step, seconds, seed, val_loss, val_bits_per_char, best_val_loss, plus what
--resume needs: optimizer, scheduler, rng, data (window index and the carried hidden state).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.models import CharRNN, ModelConfig

FORMAT = "charlm-checkpoint/1"
REQUIRED = ("format", "model_config", "model", "vocab", "train_config", "corpus", "step", "seconds", "seed")


class CheckpointError(ValueError):
    """A checkpoint that is missing or unreadable; the message names the file."""


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Writes ``ckpt`` to a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())  # the rename must never expose a file whose bytes are not on disk yet
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads and checks a checkpoint (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror})") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
        # torch's own message runs to many lines and suggests loading untrusted pickles; the file is simply not ours
        raise CheckpointError(f"{path}: not a charlm checkpoint (torch.load cannot read it as one)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a charlm checkpoint (format {got!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> CharRNN:
    """The checkpoint's model, weights loaded, in eval mode on the CPU."""
    model = CharRNN(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()
