"""Training a restricted Boltzmann machine by contrastive divergence, and completing images with it.

The log-likelihood gradient of an RBM is a difference of two correlations,

    d log P(v) / d w_ij = <v_i h_j>_data - <v_i h_j>_model

(and ``<v_i>``, ``<h_j>`` likewise for the biases ``a``, ``b``). The data term is exact, with
``h`` replaced by ``P(h | v)``. The model term needs samples from the RBM:

* **CD-k** (Hinton 2002) starts a Gibbs chain at each data vector and takes ``k`` steps
  ``v -> h -> v``; biased, but cheap and good for features;
* **persistent CD** (PCD, Tieleman 2008) keeps a set of chains alive across updates and takes
  ``k`` steps from where they were, so they approach the model distribution itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from training.tasks.associative_memory.boltzmann import RBM


@dataclass(frozen=True)
class RBMConfig:
    """Training settings; an unknown keyword is a TypeError (a frozen dataclass)."""

    hidden: int = 100
    k: int = 1
    persistent: bool = False
    epochs: int = 100
    batch: int = 20
    lr: float = 0.05
    momentum: float = 0.5
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.k < 1 or self.epochs < 1 or self.batch < 1:
            raise ValueError("RBMConfig: hidden, k, epochs and batch must be >= 1")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("RBMConfig: need lr > 0, 0 <= momentum < 1, weight_decay >= 0")


@dataclass
class RBMHistory:
    """Mean reconstruction error (squared, per pixel) after each epoch."""

    reconstruction_error: list[float] = field(default_factory=list)


def reconstruction_error(rbm: RBM, data: torch.Tensor) -> float:
    """``mean (v - P(v | h = P(h | v)))^2``: how well one mean-field step ``v -> h -> v`` returns ``v``."""
    with torch.no_grad():
        return float(((data - rbm.visible_probability(rbm.hidden_probability(data))) ** 2).mean())


def train_rbm(data: np.ndarray, config: RBMConfig) -> tuple[RBM, RBMHistory]:
    """Train an RBM on the binary rows of ``data [count, visible]`` by CD-k or PCD (``config.persistent``)."""
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(np.asarray(data, dtype=np.float32))
    rbm = RBM(visible=x.shape[1], hidden=config.hidden)
    with torch.no_grad():
        rbm.weight.normal_(0.0, 0.01, generator=gen)
        mean = x.mean(dim=0).clamp(1e-3, 1 - 1e-3)
        rbm.visible_bias.copy_(torch.log(mean / (1 - mean)))  # a_i = logit of the pixel's mean: P(v) right at start
    params = (rbm.weight, rbm.visible_bias, rbm.hidden_bias)
    velocity = [torch.zeros_like(p) for p in params]
    chains = torch.bernoulli(mean.expand(config.batch, -1).contiguous(), generator=gen)
    history = RBMHistory()
    with torch.no_grad():
        for _ in range(config.epochs):
            for idx in torch.split(torch.randperm(len(x), generator=gen), config.batch):
                v0 = x[idx]
                ph0 = rbm.hidden_probability(v0)  # P(h | v) on the data
                v = chains[: len(v0)] if config.persistent else v0
                for _ in range(config.k):  # k steps of block Gibbs sampling
                    h = torch.bernoulli(rbm.hidden_probability(v), generator=gen)
                    v = torch.bernoulli(rbm.visible_probability(h), generator=gen)
                if config.persistent:
                    chains[: len(v0)] = v
                phk = rbm.hidden_probability(v)
                n = len(v0)
                grads = (
                    (v0.T @ ph0 - v.T @ phk) / n - config.weight_decay * rbm.weight,  # <v h>_data - <v h>_model
                    (v0 - v).mean(dim=0),  # <v>_data - <v>_model
                    (ph0 - phk).mean(dim=0),  # <h>_data - <h>_model
                )
                for p, vel, g in zip(params, velocity, grads, strict=True):
                    vel.mul_(config.momentum).add_(g, alpha=config.lr)
                    p.add_(vel)  # gradient ascent on log-likelihood
            history.reconstruction_error.append(reconstruction_error(rbm, x))
    return rbm, history


def complete_images(
    rbm: RBM,
    images: np.ndarray,
    known: np.ndarray,
    *,
    sweeps: int = 200,
    burn_in: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Fill in the unknown pixels of ``images [B, V]`` (``known [V]``: 1 = known) by clamped Gibbs sampling.

    Runs ``sweeps`` sweeps of ``rbm.sweep`` (the served step, fed seeded noise) from the known
    pixels with the unknown ones at 0, and returns the mean of the samples after ``burn_in``:
    the estimated ``P(v_i = 1 | known pixels)``, ``[B, V]`` (known pixels: their values).
    """
    if not 0 <= burn_in < sweeps:
        raise ValueError(f"complete_images: need 0 <= burn_in < sweeps, got {burn_in}, {sweeps}")
    gen = torch.Generator().manual_seed(seed)
    batch = images.shape[0]
    values = torch.from_numpy(np.asarray(images, np.float32) * known)
    mask = torch.from_numpy(np.broadcast_to(np.asarray(known, np.float32), images.shape).copy())
    t = torch.full((batch,), temperature)
    v = torch.zeros(batch, rbm.visible)
    total = torch.zeros_like(v)
    with torch.no_grad():
        for sweep in range(sweeps):
            v, _, _ = rbm.sweep(v, mask, values, torch.rand(batch, rbm.noise_units, generator=gen), t)
            if sweep >= burn_in:
                total += v
    marginal: np.ndarray = (total / (sweeps - burn_in)).numpy()
    return marginal
