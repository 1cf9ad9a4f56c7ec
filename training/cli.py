"""`charlm-train` (also `python -m training`): train, eval, sample, diagnose and export subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.checkpoint import CheckpointError, load_checkpoint
from training.config import TrainConfig
from training.corpus import CorpusError
from training.trainer import DivergedError

_D = TrainConfig()  # the one source of defaults, shown in --help
_RESUMABLE = {"max_steps", "max_seconds", "eval_interval", "checkpoint_interval", "log_interval", "threads",
              "device", "progress"}  # flags that may change when a run is resumed; everything else is the run's


def _help(text: str, field: str) -> str:
    return f"{text} (default: {getattr(_D, field)})"


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a corpus", argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a character-level RNN/LSTM/GRU. Writes last.pt, best.pt, metrics.jsonl and curves.png "
        "into --out-dir.",
        epilog="examples:\n  charlm-train train --corpus shakespeare --max-seconds 1800 --out-dir runs/shakespeare\n"
        "  charlm-train train --corpus my_texts/ --arch gru --layers 1 --max-steps 2000 --out-dir runs/gru\n"
        "  charlm-train train --resume --out-dir runs/shakespeare   # continue a killed or interrupted run\n\n"
        "Ctrl-C (or SIGTERM) stops between two steps and saves last.pt; the result JSON then says\n"
        '"interrupted": true and the exit status is 130 (143 for SIGTERM). A second Ctrl-C aborts at once.')
    p.add_argument("--corpus", help=_help("'shakespeare' (built in, fetched once) or a UTF-8 file/folder", "corpus"))
    p.add_argument("--out-dir", dest="out_dir", help=_help("run folder", "out_dir"))
    p.add_argument("--arch", choices=["rnn", "lstm", "gru"], help=_help("cell type", "arch"))
    for flag, kind, text in [
        ("layers", int, "stacked recurrent layers"), ("hidden-size", int, "hidden units per layer"),
        ("embedding-size", int, "input embedding width"), ("dropout", float, "dropout between layers"),
        ("batch-size", int, "parallel streams B"), ("seq-len", int, "truncated-BPTT window T"),
        ("val-fraction", float, "validation split: the last fraction of the corpus"),
        ("lr", float, "peak learning rate, in (0, 1]"), ("min-lr-ratio", float, "final lr as a fraction of --lr"),
        ("warmup-steps", int, "linear warmup steps"), ("weight-decay", float, "AdamW weight decay"),
        ("grad-clip", float, "max global gradient norm, 0 = off"),
        ("max-steps", int, "step budget, 0 = none"), ("max-seconds", float, "training-time budget in s, 0 = none"),
        ("eval-interval", int, "steps between validations"), ("checkpoint-interval", int, "steps between last.pt"),
        ("log-interval", int, "steps between metrics lines"), ("eval-batch-size", int, "validation streams"),
        ("seed", int, "random seed"), ("threads", int, "torch CPU threads, 0 = torch's default"),
    ]:
        field = flag.replace("-", "_")
        p.add_argument(f"--{flag}", dest=field, type=kind, help=_help(text, field))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help=_help("where to train", "device"))
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last.pt")
    again.add_argument("--overwrite", action="store_true", help="replace the run already in --out-dir (its "
                       "last.pt, best.pt, metrics.jsonl and curves.png); without it such a folder is refused")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_train)


def build_train_config(given: dict[str, Any]) -> TrainConfig:
    """TrainConfig from the flags actually given; with --resume the saved run's config fills the rest."""
    given = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    for budget in ("max_steps", "max_seconds"):
        if given.get(budget) == 0:
            given[budget] = None  # 0 = no limit of this kind
    if given.get("resume"):
        last = Path(given.get("out_dir", _D.out_dir)) / "last.pt"
        if last.exists():
            saved = load_checkpoint(last)["train_config"]
            fixed = {k for k in given if k not in _RESUMABLE | {"resume", "out_dir"} and given[k] != saved.get(k)}
            if fixed:
                raise ValueError(f"{last}: cannot change {', '.join(sorted(fixed))} when resuming")
            given = {**saved, **given}
    return TrainConfig.from_dict(given)


def _train(args: argparse.Namespace) -> int:
    from training.trainer import Trainer

    result = Trainer(build_train_config(vars(args)), overwrite=getattr(args, "overwrite", False)).run()
    print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, "seconds": round(result.seconds, 1),
                      "val_loss": result.val_loss, "best_val_loss": result.best_val_loss,
                      "interrupted": result.stopped_by is not None}))
    return 0 if result.stopped_by is None else 128 + result.stopped_by  # the shell's code for death by signal


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss and bits/char of a checkpoint on a text",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  charlm-train eval runs/shakespeare/best.pt "
                       "../shared/data/tinyshakespeare.txt --skip-unknown")
    p.add_argument("checkpoint", help="a .pt file written by train")
    p.add_argument("text", help="UTF-8 file or folder, or 'shakespeare'; every character must be in the vocabulary "
                   "unless --skip-unknown")
    p.add_argument("--skip-unknown", action="store_true", help="leave out characters the model's vocabulary lacks "
                   "(counted in the result as skipped_chars) instead of refusing the text")
    p.add_argument("--streams", type=int, default=64, help="parallel pieces the text is read in (default: 64)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from training.checkpoint import model_from_checkpoint
    from training.corpus import load_corpus
    from training.data import Vocab
    from training.evaluate import bits, evaluate

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    corpus = load_corpus(args.text)
    text = corpus.text
    if args.skip_unknown:
        text = text.translate({ord(c): None for c in set(text) - set(ckpt["vocab"])})
    try:
        ids = Vocab(ckpt["vocab"]).encode(text, corpus.name)
    except ValueError as e:
        raise ValueError(f"{e} (--skip-unknown leaves such characters out)") from None
    loss = evaluate(model_from_checkpoint(ckpt), ids, args.streams)
    if not math.isfinite(loss):
        raise ValueError(f"{args.checkpoint}: the model's loss on {corpus.name} is {loss} (broken weights?)")
    print(json.dumps({"checkpoint": args.checkpoint, "text": corpus.name, "chars": len(ids),
                      "skipped_chars": len(corpus.text) - len(text), "loss_nats_per_char": round(loss, 4),
                      "bits_per_char": round(bits(loss), 4)}))
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text locally from a checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  charlm-train sample runs/shakespeare/best.pt --prime 'ROMEO:' --length 300 "
                       "--temperature 0.8 --top-k 20 --seed 1")
    p.add_argument("checkpoint", help="a .pt file written by train")
    p.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="characters to generate (default: 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely, 0 = all (default: 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from training.checkpoint import model_from_checkpoint
    from training.data import Vocab
    from training.evaluate import sample

    ckpt = load_checkpoint(args.checkpoint)
    text = sample(model_from_checkpoint(ckpt), Vocab(ckpt["vocab"]), args.prime, args.length, args.temperature,
                  args.top_k, args.seed)
    print(args.prime + text)
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The full `charlm-train` parser."""
    parser = argparse.ArgumentParser(prog="charlm-train", description="Train, evaluate, sample and export "
                                     "character-level recurrent language models.",
                                     epilog="example: charlm-train train --corpus shakespeare --max-seconds 600")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    from training import diagnose, export

    diagnose.register(sub)
    export.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `charlm-train` console script."""
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CorpusError, CheckpointError, ValueError) as e:
        return _fail(args.command, str(e), 2)
    except OSError as e:  # a path that is not what it should be (a file given as --repo, no permission, ...)
        return _fail(args.command, f"{e.filename}: {e.strerror}" if e.filename else str(e), 2)
    except DivergedError as e:
        return _fail(args.command, str(e), 1)
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        return _fail(args.command, "interrupted", 130)


def _fail(command: str, message: str, code: int) -> int:
    print(f"charlm-train {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
