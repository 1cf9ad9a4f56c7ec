"""The model's character vocabulary: text <-> ids, with errors that name the offending character."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from service.errors import InvalidArgument


class Vocab:
    """Characters in id order (``vocabulary[i]`` is the character of id ``i``)."""

    def __init__(self, vocabulary: str) -> None:
        if not vocabulary:
            raise ValueError("vocabulary is empty")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has repeated characters")
        self.vocabulary = vocabulary
        self.chars: tuple[str, ...] = tuple(vocabulary)
        self._ids = {c: i for i, c in enumerate(vocabulary)}
        # id -> character as a numpy array, for ``texts`` (numpy's strings end at a NUL: without one only)
        self._table = np.array(self.chars, dtype="<U1") if "\0" not in vocabulary else None

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._ids

    def encode(self, text: str, field: str = "prompt") -> list[int]:
        """Ids of ``text``; InvalidArgument(field) names the first character outside the vocabulary."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            bad = str(e.args[0])
            raise InvalidArgument(
                field, f"character {bad!r} (U+{ord(bad):04X}) is not in the model's vocabulary"
            ) from None

    def encode_array(self, text: str, field: str = "prompt") -> np.ndarray:
        """Ids of ``text`` as an int64 array (T,)."""
        return np.array(self.encode(text, field), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``."""
        chars = self.chars
        return "".join([chars[i] for i in ids])

    def texts(self, ids: np.ndarray) -> list[str]:
        """The text of each row of ``ids`` (n, K), by array operations (a few µs for 32 x 8 ids)."""
        if self._table is None:
            return [self.decode(row) for row in ids.tolist()]
        return self._table[ids].view(f"<U{ids.shape[1]}").ravel().tolist()  # (n, K) chars -> n strings
