"""A session's options once its model's driver has checked them and filled in the defaults.

Drivers produce them when a session opens; the session store keeps them and the durable store
writes them into a session's record, so they live below all three.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ResolvedOptions:
    """Session options with their defaults filled in and checked against the model."""

    top_k: int = 5
    return_tensors: tuple[str, ...] = ()
