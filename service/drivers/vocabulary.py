"""Text ↔ token ids for language models, from the manifest's ``decoding.vocabulary``."""

from __future__ import annotations

import numpy as np

from service.errors import InvalidArgument


class Vocabulary:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self._ids = {token: index for index, token in enumerate(tokens)}
        #: UTF-8 bytes of the longest token: what answer-size bounds assume per token.
        self.longest_token_bytes = max((len(token.encode()) for token in tokens), default=0)
        # One read-only array per token: a one-character step (the common case of a typing
        # client) is encoded by a dict lookup instead of building an array.
        self._single: dict[str, np.ndarray] = {}
        for token, index in self._ids.items():
            if len(token) != 1:
                continue  # encode() reads text a character at a time
            single = np.array([index], dtype=np.int64)
            single.flags.writeable = False
            self._single[token] = single

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text``; an unknown character is refused with its position."""
        single = self._single.get(text)
        if single is not None:
            return single
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
