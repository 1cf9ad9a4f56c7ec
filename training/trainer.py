"""The training loop: AdamW, warmup + cosine decay over the budget, clipping, validation, checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.corpus import Corpus, load_corpus
from training.data import Streams, Vocab, split
from training.evaluate import bits, evaluate
from training.metrics import MetricsLog, plot_curves, read_metrics
from training.models import CharRNN, State, detach_state


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or interrupted) run reached."""

    run_dir: Path
    step: int
    seconds: float  # training time, validation and checkpointing excluded
    val_loss: float | None
    best_val_loss: float | None
    chars_per_second: float


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but torch sees no CUDA device")
    return torch.device(name)


def progress(cfg: TrainConfig, step: int, seconds: float) -> float:
    """Fraction of the budget used: the larger of the step and time fractions."""
    fractions = [step / cfg.max_steps if cfg.max_steps else 0.0, seconds / cfg.max_seconds if cfg.max_seconds else 0.0]
    return min(1.0, max(fractions))


def learning_rate(cfg: TrainConfig, step: int, done: float) -> float:
    """Linear warmup over warmup_steps, then cosine decay from lr to lr * min_lr_ratio as ``done`` goes 0 -> 1.

    The decay follows the budget fraction, so a wall-clock budget also ends at the low learning rate.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * done))


def make_optimizer(model: CharRNN, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


class Trainer:
    """One run: holds the model, optimizer, data streams and counters; ``run()`` trains to the budget."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.corpus = corpus or load_corpus(cfg.corpus)
        ckpt = self._resume_checkpoint()
        self.vocab = Vocab(ckpt["vocab"]) if ckpt else Vocab.from_text(self.corpus.text)
        train_ids, self.val_ids = split(self.vocab.encode(self.corpus.text, self.corpus.name), cfg.val_fraction)
        self.streams = Streams.from_ids(train_ids, cfg.batch_size, cfg.seq_len)
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(cfg.model_config(len(self.vocab))).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.state: State = self.model.init_state(cfg.batch_size, self.device)
        self.step, self.seconds = 0, 0.0
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        if ckpt:
            self._restore(ckpt)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step if ckpt else None)

    def _resume_checkpoint(self) -> dict[str, Any] | None:
        last = self.run_dir / "last.pt"
        if not self.cfg.resume:
            return None
        if not last.exists():
            print(f"resume: {last} does not exist yet; starting a new run")
            return None
        ckpt = load_checkpoint(last)
        if ckpt["corpus"]["sha256"] != self.corpus.sha256:
            raise CheckpointError(f"{last}: was trained on a different corpus ({ckpt['corpus']['name']})")
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.seconds = ckpt["step"], ckpt["seconds"]
        self.val_loss, self.best_val_loss = ckpt["val_loss"], ckpt["best_val_loss"]
        self.state = tuple(s.to(self.device) for s in ckpt["data"]["state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.device.type == "cuda" and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        print(f"resumed {self.run_dir / 'last.pt'} at step {self.step} ({self.seconds:.1f} s trained)")

    def checkpoint(self) -> dict[str, Any]:
        """The current run as a checkpoint dict (format in training/checkpoint.py)."""
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return {
            "format": FORMAT, "model_config": self.model.config.to_dict(),
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.vocab.chars, "train_config": self.cfg.to_dict(), "corpus": self.corpus.info(),
            "step": self.step, "seconds": self.seconds, "seed": self.cfg.seed,
            "val_loss": self.val_loss, "val_bits_per_char": None if self.val_loss is None else bits(self.val_loss),
            "best_val_loss": self.best_val_loss,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "warmup-cosine-over-budget", "lr": self.optimizer.param_groups[0]["lr"]},
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
            "data": {"window": self.step, "state": [s.detach().cpu() for s in self.state]},
        }

    def train_step(self) -> float:
        """One truncated-BPTT window on every stream; returns its mean loss (nats/char)."""
        if self.step > 0 and self.step % self.streams.windows == 0:
            self.state = self.model.init_state(self.cfg.batch_size, self.device)  # new epoch: streams restart
        x, y = (t.to(self.device) for t in self.streams.window(self.step))  # (B, T) each
        lr = learning_rate(self.cfg, self.step, progress(self.cfg, self.step, self.seconds))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, state = self.model(x, self.state)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.state = detach_state(state)  # keep the value, cut the graph: the next window continues from here
        self.step += 1
        return loss.item()

    def validate(self) -> float:
        """Validation loss over the whole split; logs it and saves best.pt on improvement."""
        self.val_loss = evaluate(self.model, self.val_ids, self.cfg.eval_batch_size)
        improved = self.best_val_loss is None or self.val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = self.val_loss
        self.log.write({"step": self.step, "seconds": round(self.seconds, 3), "val_loss": self.val_loss,
                        "val_bits_per_char": bits(self.val_loss)})
        if improved:
            save_checkpoint(self.run_dir / "best.pt", self.checkpoint())
        return self.val_loss

    def done(self) -> bool:
        """True once the step or time budget is spent."""
        return progress(self.cfg, self.step, self.seconds) >= 1.0

    def run(self) -> TrainResult:
        """Trains until the budget is spent (or Ctrl-C), validating and checkpointing along the way."""
        cfg, chars = self.cfg, self.cfg.batch_size * self.cfg.seq_len
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not cfg.progress, dynamic_ncols=True)
        window_loss, window_time, window_steps, cps = 0.0, 0.0, 0, 0.0
        try:
            while not self.done():
                t0 = time.perf_counter()
                loss = self.train_step()
                dt = time.perf_counter() - t0
                self.seconds += dt
                window_loss, window_time, window_steps = window_loss + loss, window_time + dt, window_steps + 1
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.done():
                    cps = chars * window_steps / window_time
                    self.log.write({"step": self.step, "seconds": round(self.seconds, 3),
                                    "lr": self.optimizer.param_groups[0]["lr"],
                                    "train_loss": window_loss / window_steps, "chars_per_s": round(cps)})
                    bar.set_postfix(loss=f"{window_loss / window_steps:.3f}", chars_s=f"{cps:,.0f}")
                    window_loss, window_time, window_steps = 0.0, 0.0, 0
                if self.step % cfg.eval_interval == 0 and not self.done():
                    self.validate()
                if self.step % cfg.checkpoint_interval == 0 and not self.done():
                    save_checkpoint(self.run_dir / "last.pt", self.checkpoint())
            self.validate()
        except KeyboardInterrupt:
            print(f"\ninterrupted at step {self.step}; saving {self.run_dir / 'last.pt'} (continue with --resume)")
        finally:
            bar.close()
        save_checkpoint(self.run_dir / "last.pt", self.checkpoint())
        self.log.close()
        plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png",
                    f"{cfg.arch} {cfg.layers}x{cfg.hidden_size} on {self.corpus.name}")
        return TrainResult(self.run_dir, self.step, self.seconds, self.val_loss, self.best_val_loss, cps)
