"""Text ↔ token ids for language models, from the manifest's ``decoding.vocabulary``."""

from __future__ import annotations

from functools import cache

import numpy as np

from service.contract import Manifest
from service.errors import InvalidArgument


class Vocabulary:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self._ids = {token: index for index, token in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text``; an unknown character is refused with its position."""
        try:
            return np.fromiter((self._ids[ch] for ch in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            position = next(i for i, ch in enumerate(text) if ch not in self._ids)
            raise InvalidArgument(
                f"character {exc.args[0]!r} at position {position} is not in the model's vocabulary"
            ) from None

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.tokens)):
            bad = int(ids[(ids < 0) | (ids >= len(self.tokens))][0])
            raise InvalidArgument(f"token id {bad} is outside the vocabulary [0, {len(self.tokens)})")
        return ids

    def decode(self, token_id: int) -> str:
        return self.tokens[token_id]


@cache
def _vocabulary(tokens: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(list(tokens))


def vocabulary_of(manifest: Manifest) -> Vocabulary | None:
    """The model's vocabulary, or None for a model whose inputs are not tokens."""
    tokens = manifest.vocabulary
    return _vocabulary(tuple(tokens)) if tokens else None
