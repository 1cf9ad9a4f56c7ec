"""Every way an artifact can be broken gives an ArtifactError naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from service.artifact import ArtifactError, load_artifact, scan_repository


def copy_version(model_repo: Path, tmp_path: Path, name: str = "tiny-lstm", version: str = "1") -> Path:
    """A private copy of a good artifact, to break."""
    dst = tmp_path / "repo" / name / version
    shutil.copytree(model_repo / name / "1", dst)
    return dst


def edit_meta(path: Path, change: Callable[[dict], object]) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def reseal(path: Path) -> None:
    """Records the current model.onnx's sha256 in meta.json, so only the graph check can catch a change."""
    sha = hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()
    edit_meta(path, lambda m: m.update(onnx_sha256=sha))


def expect_error(path: Path, file: str, *words: str) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        load_artifact(path)
    err = caught.value
    assert err.path == path / file if file else path
    assert str(err) == f"{err.path}: {err.problem}"
    for word in words:
        assert word in err.problem, err.problem
    return err


def test_missing_folder(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope" / "1", "", "no such")


def test_missing_meta(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    (path / "meta.json").unlink()
    expect_error(path, "meta.json", "missing")


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"format_version": 1, "name": "tiny-l', ("not a valid",)),  # truncated JSON
        ("\x00\x01 not json at all", ("not a valid",)),
        ('{"format_version": 1, "colour": "blue"}', ("colour",)),  # unknown field
        ('{"format_version": "one"}', ("format_version",)),  # wrong type
    ],
)
def test_corrupt_meta(model_repo: Path, tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    path = copy_version(model_repo, tmp_path)
    (path / "meta.json").write_text(text)
    expect_error(path, "meta.json", *words)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.update(format_version=2), ("format_version 2", "not supported")),
        (lambda m: m.update(architecture="transformer"), ("architecture",)),
        (lambda m: m.update(vocab_size=m["vocab_size"] + 1), ("vocab_size",)),
        (lambda m: m.update(vocabulary="a" + m["vocabulary"][1:]), ("distinct",)),
        (lambda m: m.update(input_name=""), ("input_name is empty",)),
        (lambda m: m.update(onnx_file="../model.onnx"), ("onnx_file",)),
        (lambda m: m["states"].pop(), ("states are ['h']", "lstm")),
        (lambda m: m["states"][1].update(hidden=33), ("state c", "33")),
        (lambda m: m["states"][0].update(input=""), ("state h",)),
        (lambda m: m.update(version=7), ("tiny-lstm:7", "tiny-lstm/1")),
        (lambda m: m.update(name="other"), ("other:1",)),
        (lambda m: m.update(serving={"decode_precision": "int8"}), ("serving is set", "only the server")),
    ],
)
def test_inconsistent_meta(model_repo: Path, tmp_path: Path, change: Callable[[dict], None],
                           words: tuple[str, ...]) -> None:  # fmt: skip
    path = copy_version(model_repo, tmp_path)
    edit_meta(path, change)
    expect_error(path, "meta.json", *words)


def test_missing_onnx(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    (path / "model.onnx").unlink()
    expect_error(path, "model.onnx", "missing")


def test_truncated_onnx_fails_the_checksum(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    data = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(data[: len(data) // 2])
    expect_error(path, "model.onnx", "sha256", f"{len(data) // 2} bytes", "truncated")


def test_flipped_byte_fails_the_checksum(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    expect_error(path, "model.onnx", "does not match meta.json")


def test_truncated_onnx_with_matching_checksum_fails_to_parse(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    data = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(data[:1000])
    reseal(path)
    expect_error(path, "model.onnx", "not a valid ONNX model")


def test_vocab_size_disagrees_with_logits(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    edit_meta(path, lambda m: m.update(vocabulary=m["vocabulary"] + "~", vocab_size=m["vocab_size"] + 1))
    expect_error(path, "model.onnx", "tensor logits", str(len(json.loads((path / "meta.json").read_text())
                                                             ["vocabulary"])))  # fmt: skip


def test_state_names_disagree_with_graph(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path)
    edit_meta(path, lambda m: m["states"][1].update(input="cell_in"))
    expect_error(path, "model.onnx", "graph inputs", "cell_in")


def test_state_shape_disagrees_with_graph(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path, "tiny-rnn")
    edit_meta(path, lambda m: (m.update(layers=3), m["states"][0].update(layers=3)))
    expect_error(path, "model.onnx", "tensor h_in", "[2, '?', 32]", "[3, '?', 32]")


def test_pinned_batch_axis_is_refused(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path, "tiny-gru")
    graph = onnx.load(str(path / "model.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # input_ids [1, seq]: one stream only
    onnx.save(graph, str(path / "model.onnx"))
    reseal(path)
    expect_error(path, "model.onnx", "tensor input_ids has shape [1, '?']", "['?', '?']")


def test_onnx_of_another_model(model_repo: Path, tmp_path: Path) -> None:
    path = copy_version(model_repo, tmp_path, "tiny-lstm")
    shutil.copy(model_repo / "tiny-gru" / "1" / "model.onnx", path / "model.onnx")
    reseal(path)
    expect_error(path, "model.onnx", "graph inputs", "c_in")


def test_scan_repository_keeps_good_models_and_reports_bad_ones(model_repo: Path, tmp_path: Path) -> None:
    good = copy_version(model_repo, tmp_path, "tiny-gru", "1")
    repo = good.parent.parent
    bad = copy_version(model_repo, tmp_path, "tiny-lstm", "1")
    (bad / "model.onnx").unlink()
    (repo / "tiny-gru" / ".export-abc123").mkdir()  # an exporter's work folder: not a version
    (repo / "tiny-gru" / "latest").mkdir()  # not an integer: not a version
    (repo / ".cache").mkdir()
    artifacts, errors = scan_repository(repo)
    assert [a.spec for a in artifacts] == ["tiny-gru:1"]
    assert [e.path for e in errors] == [bad / "model.onnx"]


def test_scan_missing_repository(tmp_path: Path) -> None:
    artifacts, errors = scan_repository(tmp_path / "nowhere")
    assert artifacts == [] and [str(e) for e in errors] == [f"{tmp_path / 'nowhere'}: no such model repository folder"]
