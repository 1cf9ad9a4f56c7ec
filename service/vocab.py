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
