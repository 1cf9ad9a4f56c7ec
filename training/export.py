"""Export a CharRNN to an ONNX model artifact REPO/NAME/VERSION, verified against PyTorch before it appears."""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.model_card import Provenance, build_info, model_card
from training.models import CharRNN
from training.onnx_graph import TOLERANCE, ExportError, check_graph, verify, write_onnx

__all__ = ["ExportError", "Provenance", "export_model", "register"]

ONNX_FILE, META_FILE, CARD_FILE = "model.onnx", "meta.json", "MODEL_CARD.md"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _write_text(path: Path, text: str) -> None:
    """Atomic, durable small-file write (temp file + fsync + os.replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _publish(work: Path, model_dir: Path, version: int | None, write_meta: Callable[[int], None]) -> Path:
    """Renames the verified folder to model_dir/N; never replaces an existing version."""
    while True:
        n = version or max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0) + 1
        target = model_dir / str(n)
        write_meta(n)
        try:
            if target.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(target))
            os.rename(work, target)  # atomic; fails if a concurrent exporter filled `target` meanwhile
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            if version is not None:
                raise ExportError(f"{target} already exists; pick another --version or omit it") from None
            continue  # another exporter took n: take the next one
        fd = os.open(model_dir, os.O_RDONLY)
        os.fsync(fd)  # make the rename itself durable
        os.close(fd)
        return target


def export_model(
    model: CharRNN, vocab: str, repo: Path, name: str, version: int | None = None,
    provenance: Provenance | None = None, tolerance: float = TOLERANCE, export_command: str = "",
) -> Path:  # fmt: skip
    """Exports, checks and verifies ``model`` in a temp folder, then renames it to REPO/NAME/N; returns that path.

    N is ``version`` or the next free one. On any failure nothing is left behind and ExportError is raised.
    """
    if not NAME_RE.match(name):
        raise ExportError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    if version is not None and version < 1:
        raise ExportError(f"version {version}: must be >= 1")
    if len(vocab) != model.config.vocab_size or len(set(vocab)) != len(vocab):
        raise ExportError(f"vocabulary has {len(vocab)} characters ({len(set(vocab))} distinct), "
                          f"the model expects {model.config.vocab_size} distinct")  # fmt: skip
    if version is not None and (Path(repo) / name / str(version)).exists():  # fail before the slow part
        raise ExportError(f"{Path(repo) / name / str(version)} already exists; pick another --version or omit it")
    prov = provenance or Provenance()
    model = copy.deepcopy(model).cpu().float().eval()  # float32 graph; the caller's model keeps device and mode
    model_dir = Path(repo) / name
    created = [d for d in (Path(repo), model_dir) if not d.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    # the work folder lives beside the versions, so publishing is one same-filesystem rename
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        os.chmod(work, 0o755)
        onnx_path = work / ONNX_FILE
        write_onnx(model, onnx_path)
        check_graph(onnx_path, model.config)
        diff = verify(model, onnx_path, tolerance)
        with open(onnx_path, "rb") as f:
            os.fsync(f.fileno())

        def write_meta(n: int) -> None:
            info = build_info(model, vocab, name, n, onnx_path, prov)
            _write_text(work / META_FILE, json_format.MessageToJson(info, preserving_proto_field_name=True) + "\n")
            _write_text(work / CARD_FILE, model_card(info, prov, onnx_path.stat().st_size, diff, export_command))

        return _publish(work, model_dir, version, write_meta)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for d in reversed(created):  # leave the repository as we found it
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def run_export(args: argparse.Namespace) -> int:
    """`charlm-train export`: checkpoint -> verified artifact (errors propagate to the CLI, which exits 2)."""
    ckpt = load_checkpoint(args.checkpoint)
    prov = Provenance.from_checkpoint(ckpt, command=args.train_command)
    version = [] if args.version is None else ["--version", str(args.version)]
    command = shlex.join(["charlm-train", "export", str(args.checkpoint), "--repo", str(args.repo),
                          "--name", args.name, *version])  # fmt: skip
    model = model_from_checkpoint(ckpt)
    path = export_model(model, ckpt["vocab"], args.repo, args.name, args.version, prov, args.tolerance, command)
    print(f"exported {args.checkpoint} -> {path}")
    return 0


EXAMPLE = """example:
  charlm-train export runs/shakespeare/best.pt --repo models --name shakespeare
  (writes models/shakespeare/N/{model.onnx,meta.json,MODEL_CARD.md}, N = next free version)"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `export` subcommand to charlm-train."""
    p = subparsers.add_parser(
        "export", help="export a checkpoint to a verified ONNX artifact in a model repository",
        description="Export a checkpoint to REPO/NAME/VERSION (model.onnx, meta.json, MODEL_CARD.md). The graph is "
        "checked and compared with PyTorch (onnxruntime, 256-char rollout) before the folder appears.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by charlm-train train (e.g. RUN/best.pt)")
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository folder (default: models)")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=int, default=None, help="version number (default: the next free one)")
    p.add_argument("--train-command", default="", help="the training command, recorded in the model card")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs difference onnxruntime vs torch")
    p.set_defaults(func=run_export)
