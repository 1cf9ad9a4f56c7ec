"""The training loop: AdamW, warmup + cosine decay over the budget, clipping, validation, checkpoints."""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png")  # what a run writes into its folder


class DivergedError(RuntimeError):
    """A loss or weight became NaN or infinite: training cannot continue."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or interrupted) run reached."""

    run_dir: Path
    step: int
    seconds: float  # training time, validation and checkpointing excluded
    val_loss: float | None
    best_val_loss: float | None
    chars_per_second: float
    stopped_by: int | None = None  # the signal (SIGINT/SIGTERM) that ended the run early; None if it finished


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


class StopSignals:
    """While active, SIGINT and SIGTERM only record ``signum``, so the loop can stop between two steps.

    The first signal restores the previous handlers: a second Ctrl-C aborts at once, as it usually does.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python sets handlers in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. nohup or a background job: keep ignoring
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


class Trainer:
    """One run: holds the model, optimizer, data streams and counters; ``run()`` trains to the budget."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus | None = None, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        stale = self._earlier_run(overwrite)
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
        for name in stale:  # only now that the new run is set up; a stale best.pt must not outlive its run
            (self.run_dir / name).unlink()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step if ckpt else None)

    def _earlier_run(self, overwrite: bool) -> list[str]:
        """The files of an earlier run that a new run would replace; ValueError unless ``overwrite``."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir}: --out-dir must be a folder, not a file")
        found = [] if self.cfg.resume else [name for name in RUN_FILES if (self.run_dir / name).exists()]
        if found and not overwrite:
            raise ValueError(f"{self.run_dir} already holds a run ({', '.join(found)}); pass --resume to "
                             "continue it, --overwrite to replace it, or choose another --out-dir")
        return found

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
        value = loss.item()
        if not math.isfinite(value):  # checked before the update, which would spread it to every weight
            raise self._diverged(f"step {self.step + 1}: training loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.state = detach_state(state)  # keep the value, cut the graph: the next window continues from here
        self.step += 1
        return value

    def _diverged(self, what: str) -> DivergedError:
        return DivergedError(f"{what}: the run diverged (try a lower --lr); nothing after the last checkpoint "
                             f"in {self.run_dir} was saved")

    def save(self, name: str) -> None:
        """Saves the run as ``name`` in the run folder; DivergedError instead if a weight is NaN or infinite."""
        # AdamW's update can overflow with a finite loss; such weights must never replace a good checkpoint
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise self._diverged(f"step {self.step}: a weight is NaN or infinite")
        save_checkpoint(self.run_dir / name, self.checkpoint())

    def validate(self) -> float:
        """Validation loss over the whole split; logs it and saves best.pt on improvement."""
        val_loss = evaluate(self.model, self.val_ids, self.cfg.eval_batch_size)
        if not math.isfinite(val_loss):
            raise self._diverged(f"step {self.step}: validation loss is {val_loss}")
        self.val_loss = val_loss
        improved = self.best_val_loss is None or self.val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = self.val_loss
        self.log.write({"step": self.step, "seconds": round(self.seconds, 3), "val_loss": self.val_loss,
                        "val_bits_per_char": bits(self.val_loss)})
        if improved:
            self.save("best.pt")
        return self.val_loss

    def done(self) -> bool:
        """True once the step or time budget is spent."""
        return progress(self.cfg, self.step, self.seconds) >= 1.0

    def run(self) -> TrainResult:
        """Trains until the budget is spent or SIGINT/SIGTERM arrives, validating and checkpointing on the way.

        A signal is acted on between steps, so last.pt always holds a whole step and resuming it reproduces
        an uninterrupted run.
        """
        cfg, first_step = self.cfg, self.step
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not cfg.progress, dynamic_ncols=True)
        with StopSignals() as stop:
            try:
                cps = self._train(bar, stop)
                stopped_by = None if self.done() else stop.signum
                if stopped_by is not None:
                    print(f"\n{signal.Signals(stopped_by).name}: stopped after step {self.step}; saving "
                          f"{self.run_dir / 'last.pt'} (continue with --resume)")
                elif self.step > first_step:  # a finished run that is resumed has validated at its end already
                    self.validate()
                self.save("last.pt")
            finally:
                bar.close()
                self.log.close()
        plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png",
                    f"{cfg.arch} {cfg.layers}x{cfg.hidden_size} on {self.corpus.name}")
        return TrainResult(self.run_dir, self.step, self.seconds, self.val_loss, self.best_val_loss, cps, stopped_by)

    def _train(self, bar: tqdm, stop: StopSignals) -> float:
        """The step loop, until the budget is spent or a signal asks to stop; returns the last chars/s."""
        cfg, chars = self.cfg, self.cfg.batch_size * self.cfg.seq_len
        window_loss, window_time, window_steps, cps = 0.0, 0.0, 0, 0.0
        while not self.done() and stop.signum is None:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            self.seconds += dt
            window_loss, window_time, window_steps = window_loss + loss, window_time + dt, window_steps + 1
            bar.update(1)
            # on a stop, the partial window is logged too: the resumed run starts a fresh one
            if self.step % cfg.log_interval == 0 or self.done() or stop.signum is not None:
                cps = chars * window_steps / window_time
                self.log.write({"step": self.step, "seconds": round(self.seconds, 3),
                                "lr": self.optimizer.param_groups[0]["lr"],
                                "train_loss": window_loss / window_steps, "chars_per_s": round(cps)})
                bar.set_postfix(loss=f"{window_loss / window_steps:.3f}", chars_s=f"{cps:,.0f}")
                window_loss, window_time, window_steps = 0.0, 0.0, 0
            if self.step % cfg.eval_interval == 0 and not self.done():
                self.validate()
            if self.step % cfg.checkpoint_interval == 0 and not self.done():
                self.save("last.pt")
        return cps
