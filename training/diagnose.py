"""Gradient-flow diagnostic: ‖∂L/∂h_t‖ against the distance from the loss, vanilla RNN vs LSTM on one text."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.corpus import Corpus, load_corpus
from training.data import Vocab
from training.models import CharRNN
from training.trainer import Trainer


@dataclass(frozen=True)
class DiagnoseConfig:
    """What `charlm-train diagnose` trains and measures."""

    corpus: str = "shakespeare"
    out_dir: str = "runs/diagnose"
    hidden_size: int = 64
    layers: int = 1
    train_steps: int = 300  # brief training first, so the LSTM has learned to use its memory
    distance: int = 100  # measure ‖∂L_T/∂h_{T-k}‖ for k = 0 .. distance-1
    windows: int = 32  # windows averaged over
    seed: int = 1337
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "train_steps", "windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.distance < 2:  # the near/far ratio compares distance 1 with the farthest
            raise ValueError(f"distance must be >= 2, got {self.distance}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {self.threads}")


def gradient_norms(model: CharRNN, ids: torch.Tensor, distance: int, windows: int) -> list[float]:
    """Mean over ``windows`` windows of ‖∂L_T/∂h_{T-k}‖ (all layers' h), k = 0..distance-1.

    L_T is the loss of the last character of each window only, so every gradient reaching h_{T-k}
    has travelled k steps back through the recurrence.
    """
    model.eval()  # no dropout: we measure the function, not noise
    starts = torch.linspace(0, len(ids) - distance - 2, windows).long()
    x = torch.stack([ids[s : s + distance] for s in starts])  # (W, K)
    y = torch.stack([ids[s + distance] for s in starts])  # (W,) the character after each window
    state = tuple(s.requires_grad_() for s in model.init_state(windows))
    hs = []
    emb = model.embed(x)  # (W, K, E)
    for t in range(distance):  # unrolled one step at a time so every h_t is a node we can ask about
        if model.config.arch == "lstm":
            _, (h, c) = model.rnn(emb[:, t : t + 1], (state[0], state[1]))
            state = (h, c)
        else:
            _, h = model.rnn(emb[:, t : t + 1], state[0])
            state = (h,)
        h.retain_grad()
        hs.append(h)  # (layers, W, H)
    loss = F.cross_entropy(model.decoder(hs[-1][-1]), y)  # top layer's h_T (== out[:, -1]) -> logits (W, V)
    loss.backward()
    # hs[-1 - k] is k steps from the loss; norm over layers and units, then mean over windows
    return [float(hs[-1 - k].grad.transpose(0, 1).flatten(1).norm(dim=1).mean()) for k in range(distance)]


def run(cfg: DiagnoseConfig, corpus: Corpus | None = None) -> dict[str, list[float]]:
    """Trains a vanilla RNN and an LSTM briefly on the same text, measures both, writes table and PNG."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = corpus or load_corpus(cfg.corpus)
    if len(corpus.text) < cfg.distance + 2:  # each window is `distance` characters plus the one predicted
        raise ValueError(f"distance {cfg.distance} needs a corpus of at least {cfg.distance + 2} characters, "
                         f"{corpus.name} has {len(corpus.text)}")
    out = Path(cfg.out_dir)
    base = TrainConfig(corpus=corpus.name, hidden_size=cfg.hidden_size, layers=cfg.layers, embedding_size=32,
                       batch_size=16, seq_len=64, lr=3e-3, warmup_steps=10, max_steps=cfg.train_steps,
                       max_seconds=None, eval_interval=10**9, checkpoint_interval=10**9, seed=cfg.seed,
                       progress=False)
    ids = Vocab.from_text(corpus.text).encode(corpus.text, corpus.name)
    norms = {}
    for arch in ("rnn", "lstm"):
        trainer = Trainer(replace(base, arch=arch, out_dir=str(out / arch)), corpus, overwrite=True)  # scratch runs
        if trainer.run().stopped_by is not None:
            raise KeyboardInterrupt  # Ctrl-C stopped the brief training: there is nothing to measure
        norms[arch] = gradient_norms(trainer.model, ids, cfg.distance, cfg.windows)
    write_report(norms, out)
    return norms


def near_far_ratio(norms: list[float]) -> float:
    """‖∂L/∂h‖ one step from the loss over ‖∂L/∂h‖ at the farthest distance measured."""
    return norms[1] / norms[-1] if norms[-1] > 0 else math.inf  # float32 gradients can underflow to 0


def write_report(norms: dict[str, list[float]], out: Path) -> None:
    """gradient_norms.json, gradient_flow.png and a printed table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gradient_norms.json.tmp"
    tmp.write_text(json.dumps(norms), encoding="utf-8")
    os.replace(tmp, out / "gradient_norms.json")
    distance = len(norms["rnn"])
    print(f"{'distance':>8}  {'rnn ‖∂L/∂h‖':>12}  {'lstm ‖∂L/∂h‖':>12}")
    for k in sorted({0, 1, 2, 5, 10, 20, 50, distance - 1} & set(range(distance))):
        print(f"{k:>8}  {norms['rnn'][k]:>12.3e}  {norms['lstm'][k]:>12.3e}")
    print(f"near/far ratio (k=1 / k={distance - 1}): rnn {near_far_ratio(norms['rnn']):.3e}, "
          f"lstm {near_far_ratio(norms['lstm']):.3e}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for arch, values in norms.items():
        ax.semilogy(range(distance), values, label=arch)
    ax.set_xlabel("distance from the loss (steps)")
    ax.set_ylabel("‖∂L/∂h_t‖ (mean over windows)")
    ax.set_title("gradient flow: vanilla RNN vs LSTM")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gradient_flow.tmp.png", dpi=100)
    plt.close(fig)
    os.replace(out / "gradient_flow.tmp.png", out / "gradient_flow.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `diagnose` subcommand."""
    d = DiagnoseConfig()
    p = subparsers.add_parser(
        "diagnose", help="gradient flow through time: vanilla RNN vs LSTM",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Trains a vanilla RNN and an LSTM briefly on the same text, then measures how the gradient of "
        "the last character's loss decays with distance back in time. Writes gradient_flow.png and "
        "gradient_norms.json into --out-dir.",
        epilog="example:\n  charlm-train diagnose --corpus ../shared/data/tinyshakespeare.txt --out-dir runs/diagnose")
    p.add_argument("--corpus", default=d.corpus, help=f"'shakespeare' or a UTF-8 file/folder (default: {d.corpus})")
    p.add_argument("--out-dir", default=d.out_dir, help=f"where to write the table and plot (default: {d.out_dir})")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help=f"(default: {d.hidden_size})")
    p.add_argument("--layers", type=int, default=d.layers, help=f"(default: {d.layers})")
    p.add_argument("--train-steps", type=int, default=d.train_steps, help=f"(default: {d.train_steps})")
    p.add_argument("--distance", type=int, default=d.distance, help=f"steps back measured (default: {d.distance})")
    p.add_argument("--windows", type=int, default=d.windows, help=f"windows averaged (default: {d.windows})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads, 0 = default")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(DiagnoseConfig)}
    run(DiagnoseConfig(**{k: v for k, v in vars(args).items() if k in names}))
    return 0
