"""The classical Hopfield network (Hopfield 1982): bipolar units, a quadratic energy, Hebbian and Storkey rules."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from training.tasks.associative_memory.sweep import SweepNet

Rule = Literal["hebbian", "storkey"]
Update = Literal["async", "sync"]
RULES: tuple[Rule, ...] = ("hebbian", "storkey")
#: A local field within this of zero is a tie. float32 sums come out a few ulp off zero in an order
#: that depends on the kernel (a batched matmul and a single-row one differ), so without it a
#: tie could break one way alone and the other way in a batch. Hebbian and Storkey fields are
#: multiples of ~1/N, far above it.
TIE_TOLERANCE = 1e-5
UPDATES: tuple[Update, ...] = ("async", "sync")


def hebbian_weights(patterns: np.ndarray) -> np.ndarray:
    r"""Hebb's rule for ``P`` bipolar patterns ``\xi^\mu`` of ``N`` units (rows of ``patterns``).

    .. math::  w_{ij} = \frac{1}{N} \sum_{\mu=1}^{P} \xi^\mu_i \xi^\mu_j \quad (i \ne j), \qquad w_{ii} = 0

    Returns ``W [N, N]`` float32, symmetric with a zero diagonal.
    """
    xi = np.asarray(patterns, dtype=np.float64)
    units = xi.shape[1]
    w = xi.T @ xi / units  # sum over mu of xi_i xi_j, over N
    np.fill_diagonal(w, 0.0)  # w_ii = 0: no self-coupling
    weights: np.ndarray = w.astype(np.float32)
    return weights


def storkey_weights(patterns: np.ndarray) -> np.ndarray:
    r"""Storkey's rule (Storkey 1997): patterns are learnt one at a time, each correcting for the others.

    For pattern ``\nu``, with the local field that excludes units ``i`` and ``j``
    ``h_{ij} = \sum_{k \ne i, j} w^{\nu-1}_{ik} \xi^\nu_k``:

    .. math::  w^\nu_{ij} = w^{\nu-1}_{ij} + \frac{1}{N}\xi^\nu_i \xi^\nu_j
               - \frac{1}{N}\xi^\nu_i h_{ji} - \frac{1}{N} h_{ij} \xi^\nu_j \quad (i \ne j)

    The diagonal stays zero. Incremental and local like Hebb's rule, but its capacity is
    higher (about ``N / sqrt(2 ln N)`` for random patterns). Returns ``W [N, N]`` float32.
    """
    xi_all = np.asarray(patterns, dtype=np.float64)
    units = xi_all.shape[1]
    w = np.zeros((units, units))
    for xi in xi_all:
        field = w @ xi  # sum over all k of w_ik xi_k (w_ii = 0, so k = i adds nothing)
        h = field[:, None] - w * xi[None, :]  # h_ij = field_i - w_ij xi_j: excludes k = j (and k = i)
        w = w + (np.outer(xi, xi) - xi[:, None] * h.T - h * xi[None, :]) / units  # the update above
        np.fill_diagonal(w, 0.0)
    weights: np.ndarray = w.astype(np.float32)
    return weights


class Hopfield(SweepNet):
    r"""A Hopfield network of ``N`` bipolar units ``s_i \in \{-1, +1\}``.

    .. math::  E(s) = -\tfrac{1}{2} s^\top W s - b^\top s

    A unit looks at its local field ``h_i = \sum_j w_{ij} s_j + b_i`` and aligns with it:
    ``s_i \leftarrow \operatorname{sgn}(h_i)`` (on a tie, ``h_i = 0`` up to ``TIE_TOLERANCE``, it keeps its value). With
    ``W`` symmetric and zero on the diagonal, flipping one unit changes the energy by
    ``\Delta E = -\Delta s_i h_i \le 0``, so **asynchronous** updates (one unit at a time) never
    raise the energy and end in a fixed point. **Synchronous** updates (all units at once from
    the same old state) are cheaper per sweep but can fall into a 2-cycle.

    One sweep visits every unit once. Asynchronous order: the units sorted by ``noise``, the
    uniform order keys the server draws per session (``argsort(noise)``), so the graph is
    deterministic given its inputs. Clamped units are never updated.

    Args:
        units: number of units ``N``.
        update: ``"async"`` (one unit at a time, in the order of the keys) or ``"sync"``
            (all at once; the graph then has no noise input).
    """

    stochastic = False
    bipolar = True

    def __init__(self, *, units: int, update: Update = "async") -> None:
        super().__init__()
        if units < 2:
            raise ValueError(f"Hopfield: units must be >= 2, got {units}")
        if update not in UPDATES:
            raise ValueError(f"Hopfield: update must be one of {UPDATES}, got {update!r}")
        self.units = units
        self.noise_units = units if update == "async" else 0
        self.update = update
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight", torch.zeros(units, units))
        self.register_buffer("bias", torch.zeros(units))

    @classmethod
    def from_patterns(cls, patterns: np.ndarray, *, rule: Rule = "hebbian", update: Update = "async") -> Hopfield:
        """A network that stores the bipolar rows of ``patterns`` by ``rule`` (bias zero)."""
        if rule not in RULES:
            raise ValueError(f"Hopfield: rule must be one of {RULES}, got {rule!r}")
        xi = np.asarray(patterns, dtype=np.float32)
        if xi.ndim != 2 or not np.isin(xi, (-1.0, 1.0)).all():
            raise ValueError("Hopfield: patterns must be a [P, N] array of -1 and +1")
        net = cls(units=xi.shape[1], update=update)
        w = hebbian_weights(xi) if rule == "hebbian" else storkey_weights(xi)
        net.weight.copy_(torch.from_numpy(w))
        return net

    def energy(self, pattern: torch.Tensor) -> torch.Tensor:
        r"""``E(s) = -\tfrac{1}{2} s^\top W s - b^\top s`` of each row of ``pattern [B, N]``, ``[B]``."""
        return -0.5 * ((pattern @ self.weight.T) * pattern).sum(dim=1) - pattern @ self.bias

    @staticmethod
    def _align(field: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """``sgn(h)``; on a tie (``|h| <= TIE_TOLERANCE``) keep the current value, and an unset (0) unit becomes +1."""
        keep = torch.where(current == 0, torch.ones_like(current), current)
        up, down = field > TIE_TOLERANCE, field < -TIE_TOLERANCE
        return torch.where(up, torch.ones_like(field), torch.where(down, -torch.ones_like(field), keep))

    def sweep(
        self,
        pattern: torch.Tensor,
        clamp_mask: torch.Tensor,
        clamp_values: torch.Tensor,
        noise: torch.Tensor | None,
        temperature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sweep: ``pattern [B, N] -> (new_pattern [B, N], energy [B], changed [B])``.

        ``noise [B, N]`` are the order keys (``None`` for a synchronous net); ``energy`` is ``E`` of the new pattern and
        ``changed`` the number of units whose value differs from the sweep's start.
        """
        if temperature is not None:
            raise ValueError("Hopfield: a deterministic net takes no temperature")
        s0 = self.start(pattern, clamp_mask, clamp_values)
        free = clamp_mask <= 0
        if self.update == "sync":
            field = s0 @ self.weight.T + self.bias  # h_i = sum_j w_ij s_j + b_i, all from the old state
            s = torch.where(free, self._align(field, s0), s0)
        else:
            if noise is None:
                raise ValueError("Hopfield: an asynchronous sweep needs order keys (noise)")
            order = torch.argsort(noise, dim=1)  # visit units in the order of their keys
            s = s0
            for k in range(self.units):
                i = order[:, k : k + 1]  # [B, 1]: the unit each row updates now
                field = (self.weight[i[:, 0]] * s).sum(dim=1, keepdim=True) + self.bias[i]  # h_i, current state
                current = s.gather(1, i)
                new = torch.where(free.gather(1, i), self._align(field, current), current)
                s = s.scatter(1, i, new)
        changed = (s != s0).sum(dim=1).to(s.dtype)
        return s, self.energy(s), changed
