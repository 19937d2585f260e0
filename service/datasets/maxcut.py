"""Max-cut on a small weighted graph: a combinatorial problem with a known optimum, written as an energy.

A cut splits the nodes into two sides, ``s_i \\in {0, 1}``; its value is the weight of the edges
that cross it:

    C(s) = sum over edges (i, j) of w_ij [s_i != s_j] = sum_(i<j) w_ij (s_i + s_j - 2 s_i s_j)

With ``E(s) = -C(s)`` written in the Boltzmann-machine form ``E = -1/2 s^T W s - b^T s``:

    W_ij = -2 w_ij  (i != j),  W_ii = 0,  b_i = sum_j w_ij

so the lowest energy is the maximum cut. The graph is small enough (<= 22 nodes) for the
optimum to be found by brute force over all ``2^n`` cuts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_BRUTE_FORCE_NODES = 22


@dataclass(frozen=True)
class Graph:
    """An undirected weighted graph as a symmetric ``[n, n]`` weight matrix with a zero diagonal."""

    weights: np.ndarray

    @property
    def nodes(self) -> int:
        return int(self.weights.shape[0])

    def cut_value(self, sides: np.ndarray) -> np.ndarray:
        """``C(s)`` of each row of ``sides [B, n]`` (0/1), ``[B]``."""
        s = np.asarray(sides, dtype=np.float64)
        w = self.weights
        # sum_(i<j) w_ij (s_i + s_j - 2 s_i s_j) = (1/2) sum_ij w_ij (s_i + s_j - 2 s_i s_j)
        degree_term = s @ w.sum(axis=1)
        pair_term = ((s @ w) * s).sum(axis=1)
        values: np.ndarray = degree_term - pair_term
        return values

    def boltzmann_couplings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``E(s) = -1/2 s^T W s - b^T s = -C(s)``: ``W = -2 w``, ``b_i = sum_j w_ij``."""
        return (-2.0 * self.weights).astype(np.float32), self.weights.sum(axis=1).astype(np.float32)


def random_graph(nodes: int, *, edge_probability: float, max_weight: int, seed: int) -> Graph:
    """An Erdos-Renyi graph with integer edge weights drawn uniformly from ``1 .. max_weight``."""
    if nodes < 2 or not 0.0 < edge_probability <= 1.0 or max_weight < 1:
        raise ValueError("random_graph: need nodes >= 2, 0 < edge_probability <= 1, max_weight >= 1")
    rng = np.random.default_rng(seed)
    upper = np.triu(
        (rng.random((nodes, nodes)) < edge_probability) * rng.integers(1, max_weight + 1, (nodes, nodes)), 1
    )
    return Graph((upper + upper.T).astype(np.float64))


def brute_force_max_cut(graph: Graph) -> tuple[float, int]:
    """The maximum cut value and how many of the ``2^n`` cuts reach it (at least 2: swapping sides)."""
    n = graph.nodes
    if n > MAX_BRUTE_FORCE_NODES:
        raise ValueError(f"brute force over 2^{n} cuts is too slow; use <= {MAX_BRUTE_FORCE_NODES} nodes")
    best, count = -np.inf, 0
    codes = np.arange(2**n, dtype=np.int64)
    for start in range(0, 2**n, 1 << 16):
        chunk = codes[start : start + (1 << 16)]
        sides = (chunk[:, None] >> np.arange(n)) & 1
        values = graph.cut_value(sides)
        top = values.max()
        if top > best + 1e-9:
            best, count = float(top), int(np.isclose(values, top).sum())
        elif np.isclose(top, best):
            count += int(np.isclose(values, top).sum())
    return best, count
