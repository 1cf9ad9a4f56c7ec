"""Benchmark: the default LSTM trained on tiny-shakespeare under a wall-clock budget.

nanoGPT's split (first 90% train, last 10% validation); validation loss over the whole validation split with
the state carried through it; training characters/second. Prints a table and a JSON line.

    .venv/bin/python bench/train_quality.py --seconds 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from training.config import TrainConfig
from training.evaluate import bits
from training.trainer import Trainer

TUNABLE = ("layers", "hidden_size", "embedding_size", "dropout", "batch_size", "seq_len", "lr", "min_lr_ratio",
           "warmup_steps", "weight_decay", "grad_clip", "seed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags: the text path, the budget, threads, and optional overrides of the default config."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", default="../shared/data/tinyshakespeare.txt", help="corpus file")
    p.add_argument("--seconds", type=float, default=100.0, help="training-time budget (default: 100)")
    p.add_argument("--steps", type=int, default=None, help="also stop after this many steps (for tuning)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="(default: cpu)")
    p.add_argument("--out-dir", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the result JSON here")
    defaults = TrainConfig()
    for name in TUNABLE:
        kind = type(getattr(defaults, name))
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"override the default ({getattr(defaults, name)})")
    return p.parse_args(argv)


def run(args: argparse.Namespace, out_dir: Path) -> dict[str, object]:
    """Trains once and returns the measured figures."""
    overrides = {k: getattr(args, k) for k in TUNABLE if getattr(args, k) is not None}
    cfg = replace(TrainConfig(), corpus=args.text, out_dir=str(out_dir), val_fraction=0.1, max_steps=args.steps,
                  max_seconds=args.seconds, eval_interval=10**9, checkpoint_interval=10**9, threads=args.threads,
                  device=args.device, progress=sys.stderr.isatty(), **overrides)
    wall = time.perf_counter()
    result = Trainer(cfg).run()
    assert result.val_loss is not None  # run() always validates at the end
    chars = result.step * cfg.batch_size * cfg.seq_len
    return {
        "text": args.text, "arch": cfg.arch, "layers": cfg.layers, "hidden_size": cfg.hidden_size,
        "embedding_size": cfg.embedding_size, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "dropout": cfg.dropout, "threads": torch.get_num_threads(),
        "device": str(args.device), "budget_seconds": args.seconds, "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1), "steps": result.step, "train_chars": chars,
        "train_chars_per_s": round(chars / result.seconds), "val_loss_nats_per_char": round(result.val_loss, 4),
        "val_bits_per_char": round(bits(result.val_loss), 4), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def table(r: dict[str, object]) -> str:
    """A markdown table row with its header."""
    head = "| config | threads | train s | steps | val nats/char | val bits/char | train chars/s |"
    config = (f"{r['arch']} {r['layers']}x{r['hidden_size']} emb {r['embedding_size']}, B={r['batch_size']} "
              f"T={r['seq_len']} lr={r['lr']}")
    row = (f"| {config} | {r['threads']} | {r['train_seconds']} | {r['steps']} | {r['val_loss_nats_per_char']} "
           f"| {r['val_bits_per_char']} | {r['train_chars_per_s']:,} |")
    return "\n".join([head, "|---|---|---|---|---|---|---|", row])


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table and JSON."""
    args = parse_args(argv)
    if args.out_dir:
        result = run(args, Path(args.out_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="charlm-bench-") as tmp:
            result = run(args, Path(tmp))
    print(table(result))
    print(json.dumps(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
