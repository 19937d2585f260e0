"""A character-level language model: embedding -> stacked LSTM -> linear head."""

from __future__ import annotations

import torch
from torch import nn

from training.nets.step import StepNet


class CharLSTM(StepNet):
    r"""Predicts the next character from the characters so far.

    Each character id is looked up in an embedding table, ``x_t = E[char_t]``, and fed to a
    stack of ``layers`` LSTM layers. Layer ``l`` reads the output of the layer below (layer 0
    reads ``x_t``) and updates its hidden state ``h`` and cell state ``c``:

    .. math::

        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi})   && \text{input gate}\\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})   && \text{forget gate}\\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})    && \text{candidate cell}\\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho})   && \text{output gate}\\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t                        && \text{keep some, write some}\\
        h_t &= o_t \odot \tanh(c_t)                                     && \text{what the layer shows}

    The cell ``c`` is the memory: it changes only by the gated sum above, which is why
    gradients survive many steps (the forget gate, not a repeated matrix product, scales
    them). The top layer's ``h_t`` goes through a linear head to ``V`` logits, and
    ``softmax(logits)`` is the distribution of the next character.

    The state is batch-leading, ``h, c: [batch, layers, hidden]``, because the server keeps
    one row per session; ``nn.LSTM`` wants ``[layers, batch, hidden]``, so ``forward``
    transposes on the way in and out.

    Args:
        vocab_size: number of distinct characters ``V``.
        embed: width of the character embedding.
        hidden: LSTM units per layer ``H``.
        layers: number of stacked LSTM layers ``L``.
        dropout: probability of zeroing an activation between LSTM layers and before the
            head, in training only (``eval()`` turns it off, and the export is in eval mode).
    """

    def __init__(self, *, vocab_size: int, embed: int, hidden: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("embed", embed), ("hidden", hidden), ("layers", layers)):
            if value < 1:
                raise ValueError(f"CharLSTM: {name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CharLSTM: dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.hidden, self.layers = vocab_size, hidden, layers
        self.embed = nn.Embedding(vocab_size, embed)
        # nn.LSTM applies its dropout to the outputs of every layer but the last;
        # with one layer it would do nothing (and warn), so pass 0 then.
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        self._open_forget_gates()

    def _open_forget_gates(self) -> None:
        """Start with f_t near sigmoid(1) ~ 0.73 instead of 0.5, so the cell remembers from the start.

        A common LSTM initialisation (Jozefowicz et al., 2015). PyTorch orders each bias as
        [input, forget, cell, output] gates; only ``b_if`` is changed, so a zero state still
        evolves exactly as ``nn.LSTM`` defines it.
        """
        with torch.no_grad():
            for layer in range(self.layers):
                bias: torch.Tensor = getattr(self.lstm, f"bias_ih_l{layer}")
                bias[self.hidden : 2 * self.hidden].fill_(1.0)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros, exactly what ``nn.LSTM`` uses when no state is given."""
        shape = (batch, self.layers, self.hidden)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(
        self, char_id: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk of steps.

        Args:
            char_id: ``[B, T]`` int64 character ids.
            h, c: ``[B, L, H]`` state before the chunk.

        Returns:
            ``logits [B, T, V]`` for the character after each input, and ``h_out, c_out``
            ``[B, L, H]``: the state after the last step of the chunk.
        """
        x = self.embed(char_id)  # x_t = E[char_t]
        # i, f, g, o, c_t, h_t of every layer and step (the equations above) run in nn.LSTM.
        y, (h_n, c_n) = self.lstm(x, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
        logits = self.head(self.drop(y))  # scores of the next character, from the top layer's h_t
        return logits, h_n.transpose(0, 1), c_n.transpose(0, 1)
