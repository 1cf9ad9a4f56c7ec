"""Model artifacts: load REPO/<name>/<version>/ and check its meta.json against its ONNX graph.

Imports only onnx, protobuf and charlm.v1: never torch or training (a server has neither).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from charlm.v1 import charlm_pb2
from google.protobuf import json_format

FORMAT_VERSION = 1
META_FILE = "meta.json"
STATE_NAMES = {"rnn": ("h",), "gru": ("h",), "lstm": ("h", "c")}
_F32, _I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


class ArtifactError(Exception):
    """A missing, corrupt or inconsistent artifact; str(e) == f"{path}: {problem}"."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Artifact:
    """A validated model version folder."""

    path: Path  # the version folder REPO/<name>/<version>
    info: charlm_pb2.ModelInfo  # parsed, validated meta.json
    onnx_path: Path  # path / info.onnx_file

    @property
    def spec(self) -> str:
        """ "name:version"."""
        return f"{self.info.name}:{self.info.version}"


def load_artifact(version_dir: Path) -> Artifact:
    """Reads and validates one version folder; raises ArtifactError naming the file and the problem."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise ArtifactError(version_dir, "no such artifact folder")
    meta_path = version_dir / META_FILE
    info = _read_meta(meta_path)
    _check_meta(meta_path, info, version_dir)
    onnx_path = version_dir / info.onnx_file
    _check_onnx(onnx_path, info)
    return Artifact(path=version_dir, info=info, onnx_path=onnx_path)


def scan_repository(repo: Path) -> tuple[list[Artifact], list[ArtifactError]]:
    """Loads every REPO/<name>/<integer>/ folder; returns the good ones (by name, version) and the errors."""
    repo = Path(repo)
    if not repo.is_dir():
        return [], [ArtifactError(repo, "no such model repository folder")]
    artifacts: list[Artifact] = []
    errors: list[ArtifactError] = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # hidden folders are an exporter's work in progress (.export-*): never a version
        versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        for version_dir in sorted(versions, key=lambda p: int(p.name)):
            try:
                artifacts.append(load_artifact(version_dir))
            except ArtifactError as e:
                errors.append(e)
    return artifacts, errors


def _read_meta(meta_path: Path) -> charlm_pb2.ModelInfo:
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(meta_path, "missing (every version folder needs meta.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(meta_path, f"unreadable: {e}") from None
    try:
        return json_format.Parse(text, charlm_pb2.ModelInfo())
    except json_format.ParseError as e:
        raise ArtifactError(meta_path, f"not a valid charlm.v1.ModelInfo JSON document: {e}") from None


def _check_meta(meta_path: Path, info: charlm_pb2.ModelInfo, version_dir: Path) -> None:
    """Internal consistency of meta.json, and agreement with the folder it sits in."""

    def fail(problem: str) -> ArtifactError:
        return ArtifactError(meta_path, problem)

    if info.format_version != FORMAT_VERSION:
        raise fail(f"format_version {info.format_version} is not supported (this server reads {FORMAT_VERSION})")
    if info.name != version_dir.parent.name or str(info.version) != version_dir.name:
        raise fail(f"describes {info.name}:{info.version} but sits in {version_dir.parent.name}/{version_dir.name}")
    if info.architecture not in STATE_NAMES:
        raise fail(f"architecture {info.architecture!r} is not one of {sorted(STATE_NAMES)}")
    if info.layers < 1 or info.hidden_size < 1:
        raise fail(f"layers ({info.layers}) and hidden_size ({info.hidden_size}) must be >= 1")
    vocab = info.vocabulary
    if not vocab or len(vocab) != info.vocab_size or len(set(vocab)) != len(vocab):
        raise fail(f"vocabulary has {len(vocab)} characters ({len(set(vocab))} distinct), vocab_size is "
                   f"{info.vocab_size}")  # fmt: skip
    for field in ("input_name", "logits_name", "onnx_file", "onnx_sha256"):
        if not getattr(info, field):
            raise fail(f"{field} is empty")
    if info.HasField("serving"):
        raise fail("serving is set: it says how a server runs the model, and only the server fills it in")
    if Path(info.onnx_file).name != info.onnx_file:
        raise fail(f"onnx_file {info.onnx_file!r} must be a file name inside the version folder")
    names = tuple(s.name for s in info.states)
    if names != STATE_NAMES[info.architecture]:
        raise fail(f"states are {list(names)}, a {info.architecture} has {list(STATE_NAMES[info.architecture])}")
    for s in info.states:
        if not s.input or not s.output:
            raise fail(f"state {s.name}: input and output graph names are required")
        if (s.layers, s.hidden) != (info.layers, info.hidden_size):
            raise fail(f"state {s.name} is [{s.layers}, batch, {s.hidden}], the model is "
                       f"[{info.layers}, batch, {info.hidden_size}]")  # fmt: skip


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_onnx(onnx_path: Path, info: charlm_pb2.ModelInfo) -> None:
    """The file is the one meta.json names (sha256), parses, and its graph has the declared signature."""
    if not onnx_path.is_file():
        raise ArtifactError(onnx_path, "missing (named by meta.json's onnx_file)")
    size, sha = onnx_path.stat().st_size, _sha256(onnx_path)
    if sha != info.onnx_sha256:
        raise ArtifactError(onnx_path, f"sha256 {sha[:12]}… ({size} bytes) does not match meta.json's "
                            f"onnx_sha256 {info.onnx_sha256[:12]}…: truncated, corrupt or replaced")  # fmt: skip
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ... for damaged files
        raise ArtifactError(onnx_path, f"not a valid ONNX model (truncated or corrupt?): {e}") from None
    hidden = (info.layers, None, info.hidden_size)
    want_in = {info.input_name: (_I64, (None, None)), **{s.input: (_F32, hidden) for s in info.states}}
    want_out = {
        info.logits_name: (_F32, (None, None, info.vocab_size)),
        **{s.output: (_F32, hidden) for s in info.states},
    }
    initializers = {t.name for t in model.graph.initializer}
    for kind, values, want in (("inputs", model.graph.input, want_in), ("outputs", model.graph.output, want_out)):
        found = {v.name: v.type.tensor_type for v in values if v.name not in initializers}
        if set(found) != set(want):
            raise ArtifactError(onnx_path, f"graph {kind} are {sorted(found)}, meta.json declares {sorted(want)}")
        for name, (dtype, dims) in want.items():
            _check_tensor(onnx_path, name, found[name], dtype, dims)


def _check_tensor(
    onnx_path: Path, name: str, t: onnx.TypeProto.Tensor, dtype: int, dims: tuple[int | None, ...]
) -> None:
    """dtype, rank, and every dim: fixed ones equal, dynamic ones (None) not pinned to a size."""
    dtype_name = onnx.TensorProto.DataType.Name
    if t.elem_type != dtype:
        raise ArtifactError(onnx_path, f"tensor {name} is {dtype_name(t.elem_type)}, expected {dtype_name(dtype)}")
    got = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if got != list(dims):
        shown, want = (["?" if d is None else d for d in x] for x in (got, dims))
        raise ArtifactError(onnx_path, f"tensor {name} has shape {shown}, meta.json implies {want} (? = dynamic)")
