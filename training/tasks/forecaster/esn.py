"""Echo state networks (Jaeger 2001): a fixed random reservoir and a linear readout.

Only the readout learns: :class:`EchoStateNetwork` solves it once by ridge regression
(:func:`ridge_readout`); :class:`AdaptiveESN` keeps the same reservoir and updates its readout
*per stream* by recursive least squares inside the step, so the server's per-session state
carries the readout and the inverse correlation matrix (docs/zoo.md, "Sessions that adapt
online"). Both nets run one step per call (``forward`` takes ``[B, 1, F]``), and a free run feeds
the prediction ``y_t`` back as ``u_{t+1}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training.nets.step import StepNet
from training.tasks.forecaster.recipe import check_rls


def random_reservoir(
    units: int, inputs: int, *, spectral_radius: float, input_scaling: float, bias_scaling: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(W [N, N], W_in [N, 1 + F])`` drawn from ``seed``; ``W``'s largest |eigenvalue| is ``spectral_radius``."""
    if units < 1 or inputs < 1:
        raise ValueError(f"a reservoir needs >= 1 unit and >= 1 input, got {units} and {inputs}")
    if not spectral_radius > 0.0:
        raise ValueError(f"spectral_radius must be > 0, got {spectral_radius}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((units, units))
    w *= spectral_radius / float(np.max(np.abs(np.linalg.eigvals(w))))
    w_in = rng.uniform(-1.0, 1.0, (units, 1 + inputs))
    w_in[:, 0] *= bias_scaling
    w_in[:, 1:] *= input_scaling
    return w, w_in


def ridge_readout(features: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """``W_out = Ỹᵀ Z (Zᵀ Z + λ I)⁻¹`` in float64: ``[outputs, D]`` from features ``[T, D]``, targets ``[T, outputs]``."""
    z = features.astype(np.float64)
    gram = z.T @ z + ridge * np.eye(z.shape[1])
    return np.linalg.solve(gram, z.T @ targets.astype(np.float64)).T


class EchoStateNetwork(StepNet):
    """A leaky-integrator reservoir (Jaeger et al. 2007) and a linear readout; zero until :meth:`fit`.

    With ``u_t`` the observation, normalised as ``ũ_t = (u_t − μ) / σ`` (μ, σ: the training part's)::

        r_t = (1 − a) r_{t−1} + a tanh(W r_{t−1} + W_in [1; ũ_t])        (fixed, random)
        ỹ_t = W_out [1; ũ_t; r_t]        y_t = μ + σ ỹ_t                   (ridge regression)

    ``y_t`` predicts ``u_{t+1}``. ``W`` is a dense Gaussian matrix rescaled to the spectral radius
    ``ρ`` (below 1 for the echo state property: the state forgets its start); ``W_in`` is uniform
    in ``[−1, 1]``, its bias column scaled by ``bias_scaling`` and its input columns by
    ``input_scaling``; ``a`` is the leak rate (1: no leak). The readout minimises
    ``‖Z W_outᵀ − Ỹ‖² + λ‖W_out‖²`` over the teacher-forced features ``Z`` (rows ``[1; ũ_t; r_t]``
    after a washout), solved once in float64.
    """

    w: torch.Tensor
    w_in: torch.Tensor
    w_out: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        inputs: int = 1,
        units: int,
        spectral_radius: float,
        leak: float,
        input_scaling: float,
        bias_scaling: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < leak <= 1.0:
            raise ValueError(f"leak must be in (0, 1], got {leak}")
        self.inputs, self.units, self.leak = inputs, units, leak
        w, w_in = random_reservoir(
            units,
            inputs,
            spectral_radius=spectral_radius,
            input_scaling=input_scaling,
            bias_scaling=bias_scaling,
            seed=seed,
        )
        self.register_buffer("w", torch.from_numpy(w).float())
        self.register_buffer("w_in", torch.from_numpy(w_in).float())
        self.register_buffer("w_out", torch.zeros(inputs, self.features))
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("std", torch.ones(inputs))

    @property
    def features(self) -> int:
        """``D``: the readout's inputs ``[1; ũ_t; r_t]``."""
        return 1 + self.inputs + self.units

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch, self.units, device=device, dtype=self.w.dtype),)

    def normalise(self, u: torch.Tensor) -> torch.Tensor:
        return (u - self.mean) / self.std

    def reservoir_step(self, u_norm: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``r_t = (1 − a) r_{t−1} + a tanh(W r_{t−1} + W_in [1; ũ_t])`` for ``ũ_t [B, F]``, ``r [B, N]``."""
        drive = r @ self.w.T + self.w_in[:, 0] + u_norm @ self.w_in[:, 1:].T
        return (1.0 - self.leak) * r + self.leak * torch.tanh(drive)

    def readout_features(self, u_norm: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``z_t = [1; ũ_t; r_t]``, ``[B, D]``."""
        return torch.cat([torch.ones_like(u_norm[:, :1]), u_norm, r], dim=1)

    def forward(self, u: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: observation ``u [B, 1, F]`` and state ``r [B, N]`` → prediction ``y [B, 1, F]``, ``r'``."""
        u_norm = self.normalise(u[:, 0])
        r = self.reservoir_step(u_norm, r)
        y_norm = self.readout_features(u_norm, r) @ self.w_out.T
        return (self.mean + self.std * y_norm)[:, None], r

    @torch.no_grad()
    def teacher_forced_features(self, series: np.ndarray) -> np.ndarray:
        """``z_t`` for every step of ``series [T, F]`` (raw units) from the zero state, in float64."""
        net64 = _float64_copy(self)
        u = net64.normalise(torch.from_numpy(np.asarray(series, np.float64)))
        r = torch.zeros(1, self.units, dtype=torch.float64)
        rows = []
        for t in range(u.shape[0]):
            r = net64.reservoir_step(u[t : t + 1], r)
            rows.append(net64.readout_features(u[t : t + 1], r))
        return torch.cat(rows).numpy()

    def fit(self, series: np.ndarray, *, washout: int, ridge: float) -> np.ndarray:
        """Sets μ, σ from ``series [T, F]`` and the readout by ridge regression; returns the float64 ``W_out``.

        Every step after ``washout`` is one training pair: features ``z_t``, target ``ũ_{t+1}``.
        """
        series = np.asarray(series, np.float64).reshape(len(series), self.inputs)
        if len(series) <= washout + 1:
            raise ValueError(f"a series of {len(series)} steps leaves nothing after a washout of {washout}")
        self.mean.copy_(torch.from_numpy(series.mean(axis=0)))
        self.std.copy_(torch.from_numpy(series.std(axis=0)))
        z = self.teacher_forced_features(series)[washout:-1]
        targets = (series[washout + 1 :] - series.mean(axis=0)) / series.std(axis=0)
        w_out = ridge_readout(z, targets, ridge)
        self.w_out.copy_(torch.from_numpy(w_out))
        return w_out


def _float64_copy(net: EchoStateNetwork) -> EchoStateNetwork:
    """The same net in float64, for collecting features and fitting without float32 rounding."""
    copy = EchoStateNetwork.__new__(EchoStateNetwork)
    torch.nn.Module.__init__(copy)
    copy.inputs, copy.units, copy.leak = net.inputs, net.units, net.leak
    for name, buffer in net.named_buffers():
        copy.register_buffer(name, buffer.double())
    return copy


class AdaptiveESN(StepNet):
    r"""An ESN whose readout each stream learns online, by recursive least squares inside the step.

    At step t the new observation ``u_t`` is the target of the prediction made at step t−1 from
    the features ``z_{t−1} = [1; ũ_{t−1}; r_{t−1}]``. With forgetting factor ``λ`` (old errors
    weigh ``λ^age``, so the readout follows a signal that drifts)::

        k = P z_{t−1} / (λ + z_{t−1}ᵀ P z_{t−1})                 (gain)
        e = ũ_t − w · z_{t−1}                                     (a-priori error of the last prediction)
        w ← w + k e                                               (readout)
        P ← (1 − ε) (P − k z_{t−1}ᵀ P) / λ + ε p_∞ I, symmetrised  (inverse correlation matrix)

    and then the reservoir steps and predicts as the fixed ESN does, with the updated ``w``.
    With ``ε = 0`` this is textbook exponentially weighted RLS. Its ``P`` grows as ``λ^−t`` in
    every direction the reservoir does not excite (wind-up), and in float32 it then diverges
    (measured on the drifting series: docs/zoo.md). The renewal term ``ε p_∞ I`` bounds ``P`` at
    about ``p_∞ ε / (ε − (1/λ − 1))`` while leaving the excited directions, where ``P`` is small,
    to RLS; it needs ``ε > 1/λ − 1``.

    The state is ``r``, ``z`` (the last features), ``w`` and ``P``. A fresh session's state is
    zeros, so the state holds *departures*: ``w = w₀ + Δw`` (``w₀``: the offline ridge readout)
    and ``P = p₀ I + ΔP`` (a small ``p₀``: confidence in ``w₀``). ``z = 0`` gives the first update
    a zero gain, so the readout learns nothing from the step before the first observation.
    """

    w0: torch.Tensor
    p0: torch.Tensor
    p_floor: torch.Tensor

    def __init__(
        self, esn: EchoStateNetwork, *, forgetting: float, p_start: float, renewal: float, p_renewed: float
    ) -> None:
        super().__init__()
        if esn.inputs != 1:
            raise ValueError("the adaptive forecaster predicts one scalar series")
        check_rls(forgetting=forgetting, p_start=p_start, renewal=renewal, p_renewed=p_renewed)
        self.esn = esn
        self.forgetting, self.renewal = forgetting, renewal
        self.register_buffer("w0", esn.w_out[0].clone())
        self.register_buffer("p0", torch.eye(esn.features) * p_start)
        self.register_buffer("p_floor", torch.eye(esn.features) * (renewal * p_renewed))

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        n, d = self.esn.units, self.esn.features
        shapes = ((batch, n), (batch, d), (batch, d), (batch, d, d))
        return tuple(torch.zeros(s, device=device, dtype=self.w0.dtype) for s in shapes)

    def forward(
        self, u: torch.Tensor, r: torch.Tensor, z: torch.Tensor, dw: torch.Tensor, dp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: ``u [B, 1, 1]``, state ``(r, z, Δw, ΔP)`` → prediction ``y [B, 1, 1]`` and the new state."""
        esn, lam, eps = self.esn, self.forgetting, self.renewal
        u_norm = esn.normalise(u[:, 0])
        w, p = self.w0 + dw, self.p0 + dp
        pz = torch.einsum("bij,bj->bi", p, z)
        gain = pz / (lam + (z * pz).sum(dim=1, keepdim=True))
        error = u_norm[:, 0] - (w * z).sum(dim=1)
        w = w + gain * error[:, None]
        p = (1.0 - eps) * (p - gain[:, :, None] * pz[:, None, :]) / lam + self.p_floor
        p = 0.5 * (p + p.transpose(1, 2))
        r = esn.reservoir_step(u_norm, r)
        z = esn.readout_features(u_norm, r)
        y_norm = (w * z).sum(dim=1, keepdim=True)
        return (esn.mean + esn.std * y_norm)[:, None], r, z, w - self.w0, p - self.p0


def state_bytes(net: EchoStateNetwork | AdaptiveESN) -> int:
    """float32 bytes of one session's state."""
    return 4 * sum(math.prod(t.shape[1:]) for t in net.initial_state(1))
