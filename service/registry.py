"""The served models: the newest versions of each name in the model repository, each with its own runtime and
batching engine."""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from charlm.v1 import charlm_pb2

from service import errors
from service.artifact import Artifact, scan_repository
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.types import EngineObserver
from service.vocab import Vocab

log = logging.getLogger(__name__)

SHIPPED_DEFAULT = "shakespeare"


@dataclass
class Model:
    """One served model version."""

    artifact: Artifact
    engine: Engine
    vocab: Vocab

    @functools.cached_property
    def spec(self) -> str:
        """ "name:version" (kept: every generation's last message names it)."""
        return self.artifact.spec

    @functools.cached_property
    def info(self) -> charlm_pb2.ModelInfo:
        """The artifact's metadata and how this server runs it (what GetModel returns)."""
        info = charlm_pb2.ModelInfo()
        info.CopyFrom(self.artifact.info)
        rt = self.engine.runtime
        info.serving.provider, info.serving.decode_precision = rt.provider, rt.decode_precision
        info.serving.prompt_precision = rt.prompt_precision
        return info


class Registry:
    """Resolves "name", "name:version" and "" (the default) to a served model version."""

    def __init__(self, models: list[Model], default_name: str = "") -> None:
        if not models:
            raise ValueError("no model to serve")
        self._ordered = sorted(models, key=lambda m: (m.info.name, m.info.version))
        self._models = {m.spec: m for m in self._ordered}
        self._latest = {m.info.name: m for m in self._ordered}  # the highest version of each name wins
        fallback = SHIPPED_DEFAULT if SHIPPED_DEFAULT in self._latest else self._ordered[0].info.name
        try:
            self.default = self.resolve(default_name or fallback)
        except errors.NotFound as e:  # a configuration error, not a request's
            raise ValueError(f"default model: {e.message}") from None

    @classmethod
    def load(cls, repo: Path, runtime: RuntimeConfig, engine: EngineConfig, default_name: str = "",
             observer: EngineObserver | None = None, versions: int = 0) -> Registry:
        """Loads the newest ``versions`` versions of each name under ``repo`` (0 = all); broken artifacts are
        logged and skipped."""
        artifacts, broken = scan_repository(repo)
        for err in broken:
            log.error("skipping a model that failed to load: %s", err)
        models = []
        for art in newest(artifacts, versions):
            try:
                vocab = Vocab(art.info.vocabulary)
                rt = Runtime(art, runtime)
            except Exception as e:  # onnxruntime raises its own types; one bad model must not stop the others
                log.error("skipping model %s: %s: %s", art.spec, type(e).__name__, e)
                continue
            models.append(Model(art, Engine(rt, vocab, engine, art.spec, observer), vocab))
            log.info("loaded model %s from %s (provider %s, decode steps in %s, prompts in %s)", art.spec, art.path,
                     rt.provider, rt.decode_precision, rt.prompt_precision)
        if not models:
            raise FileNotFoundError(f"{repo}: no loadable model version (expected {repo}/<name>/<version>/meta.json)")
        try:
            return cls(models, default_name)
        except ValueError as e:
            if versions:  # the default may name a version left out
                raise ValueError(f"{e} (--versions {versions} serves the newest of each name)") from None
            raise

    def resolve(self, spec: str) -> Model:
        """The model named by "name" (its latest version), "name:version", or "" (the default)."""
        if not spec:
            return self.default
        model = self._models.get(spec) if ":" in spec else self._latest.get(spec)
        if model is None:
            served = ", ".join(sorted(self._models))
            raise errors.NotFound(f"model {spec!r} is not served (served: {served})", "MODEL_NOT_FOUND", model=spec)
        return model

    @property
    def models(self) -> list[Model]:
        """All served versions, by name then version."""
        return list(self._ordered)

    async def start(self) -> None:
        """Starts every engine's step loop."""
        for m in self._ordered:
            await m.engine.start()

    async def close(self) -> None:
        """Stops every engine."""
        for m in self._ordered:
            await m.engine.close()


def newest(artifacts: list[Artifact], versions: int) -> list[Artifact]:
    """The newest ``versions`` versions of each name (0 = all), by name then version. Each served version holds
    its own runtime, engine and threads (~100 MB for the shipped model), so a repository that a trainer keeps
    adding to would otherwise grow the server with every run."""
    ordered = sorted(artifacts, key=lambda a: (a.info.name, a.info.version))
    if versions <= 0:
        return ordered
    kept: list[Artifact] = []
    for _, group in itertools.groupby(ordered, key=lambda a: a.info.name):
        of_name = list(group)
        for art in of_name[:-versions]:
            log.info("not serving %s: a newer version is served (--versions %d)", art.spec, versions)
        kept += of_name[-versions:]
    return kept
