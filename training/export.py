"""Export a CharRNN to an ONNX model artifact REPO/NAME/VERSION, verified against PyTorch before it appears."""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from charlm.v1 import charlm_pb2
from google.protobuf import json_format

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.models import CharRNN, ModelConfig

FORMAT_VERSION = 1
ONNX_FILE, META_FILE, CARD_FILE = "model.onnx", "meta.json", "MODEL_CARD.md"
INPUT_NAME, LOGITS_NAME = "input_ids", "logits"
OPSET = 17
ROLLOUT_CHARS = 256  # verification rollout length
TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and torch (logits and states)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ExportError(ValueError):
    """The model cannot be exported, or the exported graph disagrees with PyTorch (charlm-train exits 2)."""


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


def state_io_names(config: ModelConfig) -> list[tuple[str, str, str]]:
    """(logical name, graph input, graph output) per state tensor: h_in/h_out, plus c_in/c_out for the LSTM."""
    return [(s, f"{s}_in", f"{s}_out") for s in config.state_names()]


def _write_onnx(model: CharRNN, path: Path) -> None:
    """TorchScript-based export (dynamo=False): it keeps the batch and sequence axes dynamic for nn.LSTM."""
    names = state_io_names(model.config)
    ids = torch.zeros(2, 3, dtype=torch.long)  # (B, T): any size, the axes are declared dynamic
    state = model.init_state(2)
    dynamic = {INPUT_NAME: {0: "batch", 1: "seq"}, LOGITS_NAME: {0: "batch", 1: "seq"}}
    dynamic |= {name: {1: "batch"} for _, i, o in names for name in (i, o)}
    with warnings.catch_warnings():
        # Known and handled: the RNN batch warning asks for the states as graph inputs (they are); nn.RNN's
        # shape asserts become trace-time constants (_check_graph checks the dims); the legacy exporter is
        # chosen on purpose (the dynamo one fixed the sequence length in a trial, see docs/artifact.md).
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx|training\.export")
        torch.onnx.export(
            model, (ids, state), str(path), dynamo=False, opset_version=OPSET,  # state: a tuple, flattened
            input_names=[INPUT_NAME, *(i for _, i, _ in names)],
            output_names=[LOGITS_NAME, *(o for _, _, o in names)],
            dynamic_axes=dynamic,
        )  # fmt: skip


def _check_graph(path: Path, config: ModelConfig) -> None:
    """ONNX checker, then the names, dtypes and dims the exporter meant to write (None = dynamic)."""
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    state = (config.layers, None, config.hidden_size)
    want = {INPUT_NAME: (i64, (None, None)), LOGITS_NAME: (f32, (None, None, config.vocab_size))}
    want |= {name: (f32, state) for _, i, o in state_io_names(config) for name in (i, o)}
    found = {v.name: v for v in [*graph.input, *graph.output]}
    if set(found) != set(want):
        raise ExportError(f"graph tensors are {sorted(found)}, expected {sorted(want)}")
    for name, (dtype, dims) in want.items():
        t = found[name].type.tensor_type
        got = tuple(None if d.dim_param else d.dim_value for d in t.shape.dim)  # an unknown dim reads as 0
        if t.elem_type != dtype or got != dims:
            kind = onnx.TensorProto.DataType.Name
            raise ExportError(f"graph tensor {name} is {kind(t.elem_type)} {got}, expected {kind(dtype)} {dims}")


def _difference(name: str, got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference; for the LSTM cell state, relative to max(1, |c|).

    c is unbounded: counter-like units of the shipped model reach |c| ≈ 200, where one float32 ulp is 1.5e-5
    and torch itself is 2e-4 away from a float64 reference after 256 steps. Logits and h are compared absolutely.
    """
    scale = np.maximum(1.0, np.abs(want)) if name == "c" else 1.0
    return float((np.abs(got - want) / scale).max())


def _verify(model: CharRNN, path: Path, tolerance: float) -> float:
    """onnxruntime (CPU) vs torch on a 256-char rollout, stepwise with the state carried and as one call."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the check is small; don't compete for cores
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [INPUT_NAME, *(i for _, i, _ in state_io_names(model.config))]
    names = [LOGITS_NAME, *model.config.state_names()]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (3, ROLLOUT_CHARS), generator=gen)  # (B=3, T)
    # a non-zero start state, so a graph that ignored its state inputs would fail
    state0 = [0.5 * torch.randn(s.shape, generator=gen) for s in model.init_state(3)]  # each (L, B, H)

    def ort_run(x: torch.Tensor, state: list[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(zip(inputs, [x.numpy(), *state], strict=True))))

    def torch_run(x: torch.Tensor, state: list[np.ndarray]) -> list[np.ndarray]:
        logits, new_state = model(x, tuple(torch.from_numpy(s) for s in state))
        return [logits.numpy(), *(s.numpy() for s in new_state)]

    def rollout(run: Callable[[torch.Tensor, list[np.ndarray]], list[np.ndarray]], step: int) -> list[np.ndarray]:
        state, logits = [s.numpy() for s in state0], []
        for t in range(0, ROLLOUT_CHARS, step):
            out = run(ids[:, t : t + step], state)
            logits.append(out[0])
            state = out[1:]
        return [np.concatenate(logits, axis=1), *state]  # (B, T, V), then the final state

    # oneDNN's LSTM JIT-compiles kernels on first use (~2 s); the plain ATen kernels are the reference anyway
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp: assigning sets the flag
    worst = dict.fromkeys(names, 0.0)
    try:
        with torch.no_grad():
            for n in (1, ROLLOUT_CHARS):
                for name, got, want in zip(names, rollout(ort_run, n), rollout(torch_run, n), strict=True):
                    worst[name] = float(np.maximum(worst[name], _difference(name, got, want)))  # keeps NaN
    finally:
        torch.backends.mkldnn.enabled = onednn
    for name, diff in worst.items():
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(f"onnxruntime disagrees with PyTorch on {name}: difference {diff:.3g} > {tolerance:g}")
    return max(worst.values())


def _sha256(path: Path) -> str:
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
        onnx_file=onnx_path.name, onnx_sha256=_sha256(onnx_path),
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
        _write_onnx(model, onnx_path)
        _check_graph(onnx_path, model.config)
        diff = _verify(model, onnx_path, tolerance)
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
