r"""Ways to get the gradient of a recurrent network over a long sequence.

Every function here runs a net written to the step contract (``model(x, *state) -> (y,
*state_after)``, ``x: [B, T, F]``) over one sequence, calls ``backward`` one or more times and
``on_update()`` after each (where the caller clips, steps the optimiser and zeroes the
gradients). ``loss_fn(y, target)`` must be a sum over the time axis, not a mean, so per-step and
whole-sequence evaluations agree; the truncated modes run the net a step or a window at a time,
so it must be causal (a ``Bidirectional`` layer is not).

* :func:`full_bptt`: one backward through the whole sequence, the exact :math:`\nabla L`;
* :func:`truncated_bptt`: Williams & Peng's BPTT(k1, k2), biased when ``k2`` is short;
* :func:`randomized_truncated_bptt`: Tallec & Ollivier's random truncation, reweighted to be unbiased;
* :func:`clip_by_norm`: :math:`g \leftarrow g \cdot \min(1, c / \lVert g \rVert)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

State = tuple[torch.Tensor, ...]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OnUpdate = Callable[[], None]


@dataclass(frozen=True)
class BPTTResult:
    """What one pass over a sequence did.

    Attributes:
        loss: :math:`\\sum_t \\ell_t` over the sequence (each step's loss counted once).
        state: the state after the last step, detached (carry it into the next sequence).
        updates: how many times ``backward`` and ``on_update`` ran.
    """

    loss: float
    state: State
    updates: int


def _run(model: nn.Module, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    y, *after = model(x, *state)
    return y, tuple(after)


def _detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def _nothing() -> None:
    return None


def full_bptt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    state: State,
    *,
    loss_fn: LossFn,
    on_update: OnUpdate = _nothing,
) -> BPTTResult:
    r"""The exact gradient: :math:`\nabla_\theta L = \sum_t \sum_{s \le t} \frac{\partial \ell_t}{\partial h_t} \frac{\partial h_t}{\partial h_s} \frac{\partial h_s}{\partial \theta}`."""
    y, after = _run(model, x, _detach(state))
    loss = loss_fn(y, target)
    torch.autograd.backward(loss)
    on_update()
    return BPTTResult(float(loss.detach()), _detach(after), 1)


def truncated_bptt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    state: State,
    *,
    loss_fn: LossFn,
    k1: int,
    k2: int,
    on_update: OnUpdate = _nothing,
) -> BPTTResult:
    r"""BPTT(k1, k2) (Williams & Peng 1990): an update every ``k1`` steps, gradients ``k2`` steps back.

    At an update after step ``n`` the gradient is that of :math:`\sum_{t=n-k_1+1}^{n} \ell_t` with
    the state at step :math:`n - k_2` held constant. The last block may be shorter than ``k1``.

    The steps of each window are run again from the stored state ``k2`` steps back, with the
    current weights: a kept autograd graph would be invalid once the optimizer has changed the
    weights in place. Cost: ``k2`` forward steps per ``k1``.

    Args:
        k1: steps between updates (>= 1).
        k2: steps the gradient flows back from the update (>= k1, so every loss is counted).
    """
    if k1 < 1:
        raise ValueError(f"truncated_bptt: k1 must be >= 1, got {k1}")
    if k2 < k1:
        raise ValueError(
            f"truncated_bptt: k2 must be >= k1 (else the oldest losses of a block get no gradient), got k1={k1}, k2={k2}"
        )
    steps = x.shape[1]
    stored: dict[int, State] = {0: _detach(state)}  # the state before step t, by t
    total, updates, done = 0.0, 0, 0
    while done < steps:
        end = min(done + k1, steps)
        begin = max(0, end - k2)
        run_state, outputs = stored[begin], []
        for t in range(begin, end):  # step by step, so every state in the window is stored for the next windows
            y_t, run_state = _run(model, x[:, t : t + 1], run_state)
            outputs.append(y_t)
            stored[t + 1] = _detach(run_state)
        y = torch.cat(outputs[done - begin :], dim=1)
        loss = loss_fn(y, target[:, done:end])  # Σ ℓ_t over this block's k1 steps
        torch.autograd.backward(loss)
        on_update()
        total, updates, done = total + float(loss.detach()), updates + 1, end
        stored = {t: s for t, s in stored.items() if t >= min(done + k1, steps) - k2 or t == done}
    return BPTTResult(total, stored[steps], updates)


def geometric_truncation(mean_steps: float) -> Callable[[int], float]:
    """A constant keep probability ``c = 1 - 1/mean_steps``: segment lengths are geometric with that mean."""
    if mean_steps < 1:
        raise ValueError(f"geometric_truncation: mean_steps must be >= 1, got {mean_steps}")
    keep = 1.0 - 1.0 / mean_steps
    return lambda steps_since_cut: keep


def _compensate(state: State, keep: float) -> State:
    """Forward: the state unchanged. Backward: the gradient divided by ``keep`` (h.detach() + (h − h.detach())/c)."""
    return tuple(s.detach() + (s - s.detach()) / keep for s in state)


def randomized_truncated_bptt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    state: State,
    *,
    loss_fn: LossFn,
    keep_probability: Callable[[int], float],
    generator: torch.Generator | None = None,
    cuts: Sequence[bool] | None = None,
    on_update: OnUpdate = _nothing,
) -> BPTTResult:
    r"""Anticipated reweighted truncated BPTT (Tallec & Ollivier 2017): unbiased random truncation.

    Between step ``t-1`` and step ``t`` the sequence is cut with probability :math:`1 - c_t`,
    where :math:`c_t` = ``keep_probability(steps since the last cut)``. At a cut, the losses of
    the segment since the previous cut are back-propagated (and ``on_update`` runs); the
    gradient does not cross the cut. Where there is no cut the gradient crossing it is
    multiplied by the compensation factor :math:`1/c_t`:

    .. math:: \delta_{t-1} = \frac{\partial \ell_{t-1}}{\partial h_{t-1}} + \frac{1 - \kappa_t}{c_t}\, \delta_t \frac{\partial h_t}{\partial h_{t-1}}, \quad \kappa_t \sim \mathrm{Bernoulli}(1 - c_t)

    A path from the use of :math:`\theta` at step ``s`` to :math:`\ell_t` survives with
    probability :math:`\prod_{u=s+1}^{t} c_u` and is then scaled by its inverse, so
    :math:`E[\hat g] = \nabla_\theta L`. The price is variance: a long segment multiplies
    gradients by large factors.

    Args:
        keep_probability: :math:`c` as a function of the steps since the last cut; in (0, 1].
        generator: the source of the random cuts.
        cuts: the cuts themselves, ``cuts[t - 1]`` for the boundary before step ``t`` (``T - 1`` of
            them), instead of drawing them (the tests enumerate every pattern).
    """
    steps = x.shape[1]
    if cuts is not None and len(cuts) != steps - 1:
        raise ValueError(
            f"randomized_truncated_bptt: cuts needs {steps - 1} entries (one per boundary), got {len(cuts)}"
        )
    state = _detach(state)
    total, updates, since_cut = 0.0, 0, 0
    segment_loss: torch.Tensor | None = None

    def finish_segment() -> None:
        nonlocal total, updates, segment_loss
        if segment_loss is not None:
            torch.autograd.backward(segment_loss)
            on_update()
            total, updates, segment_loss = total + float(segment_loss.detach()), updates + 1, None

    for t in range(steps):
        if t > 0:
            since_cut += 1
            keep = keep_probability(since_cut)
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"randomized_truncated_bptt: keep_probability must be in (0, 1], got {keep}")
            cut = cuts[t - 1] if cuts is not None else bool(torch.rand((), generator=generator) >= keep)
            if cut:  # κ_t = 1: back-propagate the segment, start a new one from the detached state
                finish_segment()
                state, since_cut = _detach(state), 0
            else:  # κ_t = 0: the gradient that crosses here is divided by c_t
                state = _compensate(state, keep)
        y, state = _run(model, x[:, t : t + 1], state)
        step_loss = loss_fn(y, target[:, t : t + 1])
        segment_loss = step_loss if segment_loss is None else segment_loss + step_loss
    finish_segment()
    return BPTTResult(total, _detach(state), updates)


def clip_by_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    r"""Scales all gradients together so their joint norm is at most ``max_norm`` (Pascanu et al. 2013).

    .. math:: \lVert g \rVert = \sqrt{\textstyle\sum_p \lVert g_p \rVert^2}, \quad g \leftarrow g \cdot \min(1, c / \lVert g \rVert)

    Returns:
        :math:`\lVert g \rVert` before clipping.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_by_norm: max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.sqrt(
        sum((g.detach().pow(2).sum() for g in grads), torch.zeros((), dtype=grads[0].dtype, device=grads[0].device))
    )  # ‖g‖
    scale = torch.clamp(max_norm / (norm + 1e-12), max=1.0)  # min(1, c/‖g‖)
    for g in grads:
        g.detach().mul_(scale)  # g ← g · min(1, c/‖g‖)
    return float(norm)
