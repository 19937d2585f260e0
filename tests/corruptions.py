"""Seeded corruptions of valid requests, for the tests of readers that take bytes without a message.

A reader that reads a request straight from its bytes must never take bytes that the checked
path (protobuf, then the full checks) would read differently or refuse. Feeding it thousands of
near-valid requests (a byte changed, cut, inserted or one bit flipped) finds a rule it forgot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def corrupted(valid: Sequence[bytes], count: int, seed: int) -> Iterator[bytes]:
    """``count`` requests, each one of ``valid`` with one seeded corruption."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        data = bytearray(valid[int(rng.integers(len(valid)))])
        at = int(rng.integers(len(data)))
        how = int(rng.integers(4))
        if how == 0:
            data[at] = int(rng.integers(256))
        elif how == 1:
            del data[at:]
        elif how == 2:
            data.insert(at, int(rng.integers(256)))
        else:
            data[at] ^= 1 << int(rng.integers(8))
        yield bytes(data)
