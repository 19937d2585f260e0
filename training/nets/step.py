"""The base class of every network written to the step contract."""

from __future__ import annotations

import torch
from torch import nn


class StepNet(nn.Module):
    """Base class of recurrent nets that follow the step contract.

    ``forward(x, *state)`` takes a chunk ``x`` of shape ``[batch, time, ...]`` and the state
    before it (each tensor ``[batch, ...]``) and returns ``(y, *state_after)`` where ``y`` is
    ``[batch, time, ...]``. Running a sequence in one call or chunk by chunk, carrying the
    returned state, must give the same outputs: that is what lets the server batch sessions
    and accept chunks of any length.
    """

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """The state a new stream starts from (the server's ``init: zeros``)."""
        raise NotImplementedError
