"""Beam search bookkeeping: which hypotheses survive a step, and which tokens are already final.

Pure numpy, no model and no rows: the attention decoder's loop (``service.drivers.attention``)
steps one slab row per live hypothesis and hands this class the next-token log-probabilities; it
answers which parent each new hypothesis continues (so the loop copies rows) and which leading
tokens no later step can change (so the loop streams them at once). The rules, exactly, so that
an offline decoder can reproduce them:

* a hypothesis's score is the sum of its tokens' log-probabilities (no length normalisation);
* each step, every live hypothesis proposes every token; candidates are ranked by score (ties:
  the lower hypothesis index, then the lower token id) and, walking down that ranking, one ending
  in ``end_id`` joins the finished set and any other becomes live, until ``width`` live ones are found;
* the search stops when ``width`` hypotheses have finished, or when the best finished score is at
  least the best live score (scores only fall, so no live hypothesis can overtake it);
* the answer is the best finished hypothesis (ties: the first to finish), else the best live one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Hypothesis:
    """A partial output: token ids, their log-probabilities, and what the step of each returned."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    extras: list[np.ndarray] = field(default_factory=list)
    score: float = 0.0

    def extend(self, token: int, logprob: float, extra: np.ndarray) -> Hypothesis:
        return Hypothesis([*self.tokens, token], [*self.logprobs, logprob], [*self.extras, extra], self.score + logprob)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (the ranking must not depend on float32 rounding)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


class BeamSearch:
    """The hypotheses of one beam search; ``advance`` after every decoder step."""

    def __init__(self, width: int, end_id: int) -> None:
        if width < 1:
            raise ValueError(f"beam width must be >= 1, got {width}")
        self.width = width
        self.end_id = end_id
        self.live: list[Hypothesis] = [Hypothesis()]
        self.finished: list[Hypothesis] = []
        self.emitted = 0  # leading tokens already reported final

    def advance(self, logprobs: np.ndarray, extras: list[np.ndarray]) -> list[int]:
        """Takes ``[len(live), V]`` log-probabilities and one extra per live hypothesis (its
        attention map); returns, for each new live hypothesis, the index of its parent."""
        vocabulary = logprobs.shape[1]
        scores = np.asarray([h.score for h in self.live])[:, None] + logprobs
        order = np.argsort(-scores.reshape(-1), kind="stable")  # ties: lower (parent, token) first
        live: list[Hypothesis] = []
        parents: list[int] = []
        for flat in order:
            parent, token = divmod(int(flat), vocabulary)
            grown = self.live[parent].extend(token, float(logprobs[parent, token]), extras[parent])
            if token == self.end_id:
                if len(self.finished) < self.width:
                    self.finished.append(grown)
            else:
                live.append(grown)
                parents.append(parent)
            if len(live) == self.width:
                break
        self.live = live
        return parents

    @property
    def done(self) -> bool:
        if len(self.finished) >= self.width or not self.live:
            return True
        return bool(self.finished) and max(h.score for h in self.finished) >= max(h.score for h in self.live)

    def best(self) -> Hypothesis:
        pool = self.finished or self.live
        return max(pool, key=lambda h: h.score)  # max keeps the first of equal scores

    def _length(self, hypothesis: Hypothesis) -> int:
        """Its tokens but a final ``end_id``, which is never reported."""
        tokens = hypothesis.tokens
        return len(tokens) - (1 if tokens and tokens[-1] == self.end_id else 0)

    def newly_final(self) -> tuple[Hypothesis, range]:
        """Positions that every hypothesis still in the running shares, not yet reported.

        Any of them may become the answer, so a token is final once all agree on it.
        """
        pool = self.live + self.finished
        shortest = min(self._length(h) for h in pool)
        reference = pool[0]
        agreed = self.emitted
        while agreed < shortest and all(h.tokens[agreed] == reference.tokens[agreed] for h in pool):
            agreed += 1
        span = range(self.emitted, agreed)
        self.emitted = agreed
        return reference, span

    def rest_of_answer(self) -> tuple[Hypothesis, range]:
        """The answer and its positions not yet reported (its final ``end_id`` excluded)."""
        best = self.best()
        length = self._length(best)
        span = range(self.emitted, length)
        self.emitted = length
        return best, span
