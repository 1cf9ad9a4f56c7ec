"""The model registry on a real repository: versions, default model, broken artifacts skipped (no gRPC)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from service import errors
from service.engine import EngineConfig
from service.registry import Registry
from service.runtime import RuntimeConfig


def copy_version(repo: Path, src: str, name: str, version: int) -> None:
    """A copy of the artifact ``src`` ("name/version") published as name/version."""
    dst = repo / name / str(version)
    shutil.copytree(repo / src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(name=name, version=version)
    (dst / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    """model_repo plus tiny-gru/2 and a broken tiny-broken/1."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    copy_version(repo, "tiny-gru/1", "tiny-gru", 2)
    (repo / "tiny-broken" / "1").mkdir(parents=True)
    (repo / "tiny-broken" / "1" / "meta.json").write_text("{not json")
    return repo


def load(repo: Path, default: str = "") -> Registry:
    return Registry.load(repo, RuntimeConfig(), EngineConfig(), default)


def test_versions_latest_and_broken_skipped(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        reg = load(repo)
    assert [m.spec for m in reg.models] == ["tiny-gru:1", "tiny-gru:2", "tiny-lstm:1", "tiny-rnn:1"]
    assert "tiny-broken" in caplog.text  # reported, and the others still served
    assert reg.resolve("tiny-gru").spec == "tiny-gru:2" and reg.resolve("tiny-gru:1").spec == "tiny-gru:1"
    assert reg.default.spec == "tiny-gru:2"  # no shakespeare: the first name, latest version
    for spec in ("tiny-broken", "tiny-gru:3", "nope"):
        with pytest.raises(errors.NotFound) as e:
            reg.resolve(spec)
        assert e.value.reason == "MODEL_NOT_FOUND" and "tiny-lstm:1" in e.value.message


def test_default_model_is_configured_else_shakespeare(repo: Path) -> None:
    assert load(repo, "tiny-rnn").default.spec == "tiny-rnn:1"
    assert load(repo, "tiny-gru:1").default.spec == "tiny-gru:1"
    copy_version(repo, "tiny-lstm/1", "shakespeare", 1)
    assert load(repo).default.spec == "shakespeare:1"
    for bad in ("nope", "tiny-gru:7"):
        with pytest.raises(ValueError, match=bad):
            load(repo, bad)


def test_versions_serves_the_newest_of_each_name(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy_version(repo, "tiny-gru/1", "tiny-gru", 3)
    with caplog.at_level(logging.INFO):
        reg = Registry.load(repo, RuntimeConfig(), EngineConfig(), versions=2)
    assert [m.spec for m in reg.models] == ["tiny-gru:2", "tiny-gru:3", "tiny-lstm:1", "tiny-rnn:1"]
    assert "not serving tiny-gru:1" in caplog.text
    latest = Registry.load(repo, RuntimeConfig(), EngineConfig(), versions=1)
    assert [m.spec for m in latest.models] == ["tiny-gru:3", "tiny-lstm:1", "tiny-rnn:1"]
    with pytest.raises(ValueError, match=r"tiny-gru:2.*--versions 1"):
        Registry.load(repo, RuntimeConfig(), EngineConfig(), "tiny-gru:2", versions=1)


def test_no_loadable_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no loadable model"):
        load(tmp_path)
