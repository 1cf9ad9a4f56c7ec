"""Corpus loading errors, vocabulary, the split and the truncated-BPTT streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.corpus import CorpusError, load_corpus, strip_gutenberg
from training.data import Streams, Vocab, eval_streams, split


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty"), (b"  \n\n", "only whitespace"), (b"abc\x00\x01\x02", "binary"), (b"caf\xe9 au lait", "UTF-8")],
)
def test_bad_file_is_named_in_the_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=problem) as err:
        load_corpus(str(path))
    assert str(path) in str(err.value)


def test_bad_file_inside_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("good text\n")
    (tmp_path / "b.bin").write_bytes(b"\x00\xff\x00")
    with pytest.raises(CorpusError, match=r"b\.bin"):
        load_corpus(str(tmp_path))


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no files"):
        load_corpus(str(tmp_path / "empty"))


def test_folder_is_read_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\r\n")
    (tmp_path / "a.txt").write_text("first\n")
    assert load_corpus(str(tmp_path)).text == "first\nsecond\n"


def test_strip_gutenberg() -> None:
    text = "licence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nTo be.\n*** END OF THIS EBOOK ***\nlegal"
    assert strip_gutenberg(text) == "To be.\n"
    assert strip_gutenberg("no markers\n") == "no markers\n"


def test_vocab_round_trip_and_unknown_character() -> None:
    vocab = Vocab.from_text("hello world")
    assert vocab.chars == " dehlorw"
    assert vocab.decode(vocab.encode("world hello")) == "world hello"
    with pytest.raises(ValueError, match=r"prime: character 'z' \(U\+007A\) at offset 2"):
        vocab.encode("hez", source="prime")


def test_split_is_the_last_tenth() -> None:
    ids = torch.arange(100)
    train, val = split(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_streams_continue_across_windows() -> None:
    ids = torch.arange(2 * 21)  # two streams of 21
    streams = Streams.from_ids(ids, batch_size=2, seq_len=5)
    assert streams.windows == 4
    x0, y0 = streams.window(0)
    x1, _ = streams.window(1)
    assert x0.tolist() == [[0, 1, 2, 3, 4], [21, 22, 23, 24, 25]]
    assert y0.tolist() == [[1, 2, 3, 4, 5], [22, 23, 24, 25, 26]]
    assert x1[:, 0].tolist() == [5, 26]  # window k+1 starts where window k ended, in every stream
    assert torch.equal(streams.window(4)[0], x0)  # next epoch
    with pytest.raises(ValueError, match="too short"):
        Streams.from_ids(ids, batch_size=8, seq_len=5)


def test_eval_streams_score_every_target_once() -> None:
    ids = torch.arange(23)
    x, y = eval_streams(ids, 4)
    targets = sorted(int(t) for t in y.flatten() if t != -100)
    assert targets == list(range(1, 23))
    for xs, ys in zip(x.flatten(), y.flatten(), strict=True):
        if ys != -100:
            assert ys == xs + 1  # each target is the character after its input
