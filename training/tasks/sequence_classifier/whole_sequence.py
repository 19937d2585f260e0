"""A bidirectional GRU classifier over a whole, padded sequence: one call answers one sequence.

A bidirectional layer needs ``x_T`` before it can say anything about ``x_1``, so it cannot
stream. It is served as a whole-sequence call instead, and to let calls from different sessions
share a batch whatever their lengths, one "step" of the graph is one whole sequence padded to
``max_frames``, with its true length beside it: per-step inputs ``frames [max_frames, F]``
(zero-padded) and ``length []`` (int64), per-step output ``logits [classes]``, and no state.
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets.cells import GRUCell
from training.nets.step import StepNet


class WholeSequenceClassifier(StepNet):
    r"""Bidirectional GRU + linear readout over padded sequences.

    The padding never reaches the answer: with ``m_t = [t < length]``, each direction updates
    ``h \leftarrow m_t \cdot \mathrm{GRU}(x_t, h) + (1 - m_t) \cdot h``, so the forward pass stops at
    the last real frame and the backward pass starts there (its state stays at zero through the
    padding), which is exactly :class:`training.nets.cells.Bidirectional` run on the unpadded
    sequence; the tests check that. The readout sees both final states and both directions'
    outputs averaged over the real frames:
    ``[\overrightarrow{h}_T ; \overleftarrow{h}_1 ; \overline{\overrightarrow{h}} ; \overline{\overleftarrow{h}}]``.

    Args:
        input_size: features per frame.
        hidden_size: units of each direction's GRU.
        classes: width of the logits.
        max_frames: the padded length: the longest sequence one call takes.
        dropout: on the pooled features, training only.
        input_mean, input_std: ``[input_size]``; the net reads ``(x - mean) / std`` (inside the graph).
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(
        self,
        *,
        input_size: int,
        hidden_size: int,
        classes: int,
        max_frames: int,
        dropout: float = 0.0,
        input_mean: torch.Tensor | None = None,
        input_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if max_frames < 1 or classes < 2:
            raise ValueError(
                f"WholeSequenceClassifier: needs max_frames >= 1 and classes >= 2, got {max_frames}, {classes}"
            )
        self.input_size, self.hidden_size, self.classes, self.max_frames = input_size, hidden_size, classes, max_frames
        self.forward_cell = GRUCell(input_size=input_size, hidden_size=hidden_size)
        self.backward_cell = GRUCell(input_size=input_size, hidden_size=hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(4 * hidden_size, classes)
        shape = (input_size,)
        self.register_buffer(
            "input_mean", torch.zeros(shape) if input_mean is None else input_mean.reshape(shape).float()
        )
        self.register_buffer("input_std", torch.ones(shape) if input_std is None else input_std.reshape(shape).float())

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        return ()  # stateless: every call is a whole sequence

    def _direction(
        self, cell: GRUCell, x: torch.Tensor, mask: torch.Tensor, steps: range
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs ``cell`` over the real frames in ``steps`` order; returns (final state, sum of its outputs)."""
        h = x.new_zeros((x.shape[0], self.hidden_size))
        total = x.new_zeros((x.shape[0], self.hidden_size))
        for t in steps:
            m = mask[:, t : t + 1]
            new, _ = cell(x[:, t], (h,))
            h = m * new + (1 - m) * h  # padding leaves the state as it was
            total = total + m * h
        return h, total

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x [B, max_frames, F]`` padded, ``lengths [B]`` -> pooled features ``[B, 4H]``."""
        x = (x - self.input_mean) / self.input_std
        frames = x.shape[1]
        mask = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        h_forward, sum_forward = self._direction(self.forward_cell, x, mask, range(frames))
        h_backward, sum_backward = self._direction(self.backward_cell, x, mask, range(frames - 1, -1, -1))
        count = lengths.to(x.dtype).clamp(min=1)[:, None]
        return torch.cat([h_forward, h_backward, sum_forward / count, sum_backward / count], dim=-1)

    def classify(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of padded sequences (the training entry point)."""
        logits: torch.Tensor = self.readout(self.dropout(self.features(x, lengths)))
        return logits

    def forward(self, frames: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor]:
        """The step contract: ``frames [B, T, max_frames, F]``, ``length [B, T]`` -> ``(logits [B, T, classes],)``: T independent sequences per row."""
        calls = [self.classify(frames[:, t], length[:, t]) for t in range(frames.shape[1])]
        return (torch.stack(calls, dim=1),)
