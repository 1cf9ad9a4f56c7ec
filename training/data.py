"""Vocabulary, the train/validation split and stateful truncated-BPTT batches (char-rnn style)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class Vocab:
    """Characters in id order: ``chars[i]`` is the character of id ``i``."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("a vocabulary needs at least one character and no duplicates")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """Every distinct character of ``text``, sorted by code point."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, source: str = "text") -> torch.Tensor:
        """text -> int64 ids (N,); ValueError naming ``source`` and the first unknown character."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        lut = np.full(max(max(map(ord, self.chars)), int(codes.max(initial=0))) + 1, -1, dtype=np.int64)
        lut[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = lut[codes]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            ch = text[int(bad[0])]
            raise ValueError(f"{source}: character {ch!r} (U+{ord(ch):04X}) at offset {int(bad[0])} "
                             "is not in the model's vocabulary")
        return torch.from_numpy(ids)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """ids -> text."""
        return "".join(self.chars[int(i)] for i in ids)


def split(ids: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split: the first (1 - val_fraction) for training, the rest for validation (nanoGPT's)."""
    n_train = int(len(ids) * (1.0 - val_fraction))
    if n_train < 2 or len(ids) - n_train < 2:
        raise ValueError(f"corpus of {len(ids)} characters is too short to split with val_fraction={val_fraction}")
    return ids[:n_train], ids[n_train:]


@dataclass
class Streams:
    """The training text cut into B contiguous streams, read T characters at a time.

    Window k of every stream starts where window k-1 ended, so the hidden state carried (detached) from
    the previous window is the right context: char-rnn's stateful truncated BPTT. After the last full window
    the streams start over (an epoch) and the state is reset.
    """

    data: torch.Tensor  # (B, L) int64
    seq_len: int

    @classmethod
    def from_ids(cls, ids: torch.Tensor, batch_size: int, seq_len: int) -> Streams:
        """Cuts ``ids`` into ``batch_size`` streams (the tail that does not divide evenly is dropped)."""
        length = len(ids) // batch_size
        if length < seq_len + 1:
            raise ValueError(f"training split of {len(ids)} characters is too short for batch_size={batch_size} "
                             f"streams of seq_len={seq_len}+1; use a smaller batch or sequence")
        return cls(ids[: batch_size * length].view(batch_size, length), seq_len)

    @property
    def windows(self) -> int:
        """Windows per epoch."""
        return (self.data.shape[1] - 1) // self.seq_len

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) of window ``k`` (mod epoch)."""
        start = (k % self.windows) * self.seq_len
        x = self.data[:, start : start + self.seq_len]  # (B, T)
        y = self.data[:, start + 1 : start + self.seq_len + 1]  # (B, T), x shifted by one
        return x, y


def eval_streams(ids: torch.Tensor, streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (S, L) covering every next-character prediction of ``ids`` exactly once.

    Stream s reads a contiguous piece; pieces overlap by one character so that each of the N-1 targets is
    scored once. Short streams are padded with target -100 (ignored by cross_entropy).
    """
    n_targets = len(ids) - 1
    streams = max(1, min(streams, n_targets))
    base, extra = divmod(n_targets, streams)
    length = base + (1 if extra else 0)
    x = torch.zeros(streams, length, dtype=torch.int64)
    y = torch.full((streams, length), -100, dtype=torch.int64)
    start = 0
    for s in range(streams):
        n = base + (1 if s < extra else 0)
        x[s, :n] = ids[start : start + n]
        y[s, :n] = ids[start + 1 : start + n + 1]
        start += n
    return x, y
