"""A character encoder-decoder with additive attention (Cho et al. 2014; Bahdanau et al. 2015).

The encoder reads the source characters with two GRUs, one each way, so each annotation
describes its character in the context of the whole input; the decoder emits one output token
per step from the previous token, its state and the attention's context (``training.nets.attention``).
Training feeds the true previous token (teacher forcing); serving feeds the chosen one. The
exported graphs are the two halves: :meth:`Seq2Seq.encode` (the init graph: characters and mask
to annotations, projected keys and ``s_0``) and :meth:`Seq2Seq.step` (the step graph).
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets.attention import AdditiveAttention
from training.nets.cells import GRUCell


def reverse_within_length(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [B, L, F]`` with each row's first ``length`` positions reversed; padding stays put.

    Its own inverse. Written as a gather with computed indices, so it exports to ONNX.
    """
    length = mask.to(torch.long).sum(dim=1, keepdim=True)  # [B, 1]
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, L]
    index = torch.where(positions < length, length - 1 - positions, positions)  # [B, L]
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class Seq2Seq(nn.Module):
    r"""Bidirectional GRU encoder, GRU decoder with ``heads``-head additive attention.

    **Encoder.** The source characters ``x_1 .. x_L`` (padded to a fixed ``L``, with a mask) are
    embedded and read by two GRUs; the annotation of position ``i`` is both readings side by
    side, ``h_i = [→h_i ; ←h_i]`` (``D = 2 H_enc``). The backward GRU reads each sequence reversed
    *within its length*, so padding never runs through the real characters.

    **Initial decoder state** (Bahdanau, appendix A.2.2): ``s_0 = tanh(W_s ←h_1)``, the backward
    reading of the whole input.

    **Decoder step** ``t`` (one output token), from the previous token ``y_{t-1}`` and ``s_{t-1}``:

    .. math::

        c_t, \alpha_t = \mathrm{attention}(s_{t-1}, h, \text{mask}) \\
        s_t = \mathrm{GRU}([E y_{t-1} ; c_t], s_{t-1}) \\
        \text{logits}_t = W_o [s_t ; c_t ; E y_{t-1}] + b_o

    Args:
        source_vocab: input characters (id 0 is padding).
        target_vocab: output tokens (including the start and end tokens).
        embed: width of the character embeddings (source and target).
        encoder_hidden: units of each encoder direction (``D = 2 * encoder_hidden``).
        decoder_hidden: units of the decoder GRU (``s``).
        attention: width of each head's scoring layer.
        heads: attention heads.
    """

    def __init__(
        self,
        *,
        source_vocab: int,
        target_vocab: int,
        embed: int,
        encoder_hidden: int,
        decoder_hidden: int,
        attention: int,
        heads: int = 1,
    ) -> None:
        super().__init__()
        self.source_embedding = nn.Embedding(source_vocab, embed, padding_idx=0)
        self.target_embedding = nn.Embedding(target_vocab, embed)
        self.forward_gru = nn.GRU(embed, encoder_hidden, batch_first=True)
        self.backward_gru = nn.GRU(embed, encoder_hidden, batch_first=True)
        self.annotation_size = 2 * encoder_hidden
        self.decoder_hidden = decoder_hidden
        self.initial = nn.Linear(encoder_hidden, decoder_hidden)  # W_s
        self.attention = AdditiveAttention(
            query_size=decoder_hidden, key_size=self.annotation_size, attention_size=attention, heads=heads
        )
        self.cell = GRUCell(input_size=embed + self.attention.context_size, hidden_size=decoder_hidden)
        self.output = nn.Linear(decoder_hidden + self.attention.context_size + embed, target_vocab)  # W_o

    @property
    def keys_size(self) -> int:
        """Width of the projected keys per position, as the step graph takes them flattened."""
        return self.attention.heads * self.attention.attention_size

    def encode(self, chars: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``chars [B, L]``, ``mask [B, L]`` -> ``(s_0 [B, H_dec], annotations [B, L, D], keys [B, L, K*A])``."""
        embedded = self.source_embedding(chars)
        forward, _ = self.forward_gru(embedded)  # →h_i
        backward_reversed, _ = self.backward_gru(reverse_within_length(embedded, mask))
        backward = reverse_within_length(backward_reversed, mask)  # ←h_i
        annotations = torch.cat([forward, backward], dim=-1) * mask.to(embedded.dtype).unsqueeze(-1)
        s0 = torch.tanh(self.initial(backward[:, 0]))  # s_0 = tanh(W_s ←h_1)
        keys = self.attention.project_keys(annotations).flatten(2)
        return s0, annotations, keys

    def step(
        self,
        previous: torch.Tensor,
        state: torch.Tensor,
        annotations: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step: ``previous [B]`` token ids, ``state [B, H]`` -> ``(logits [B, V], weights [B, K, L], s_t)``."""
        batch, length, _ = annotations.shape
        keys_by_head = keys.view(batch, length, self.attention.heads, self.attention.attention_size)
        context, weights = self.attention(state, annotations, mask, keys_by_head)  # c_t, α_t from s_{t-1}
        embedded = self.target_embedding(previous)  # E y_{t-1}
        state, _ = self.cell(torch.cat([embedded, context], dim=-1), (state,))  # s_t
        logits = self.output(torch.cat([state, context, embedded], dim=-1))
        return logits, weights, state

    def forward(self, chars: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor]:
        """Teacher forcing: ``chars [B, L]`` (0 = padding) and ``previous [B, T]`` (the start
        token, then the target shifted by one) -> ``(logits [B, T, V],)``.

        A 1-tuple, like a step net's ``(outputs, *state)`` with no state, so
        ``training.loops.train_step`` trains it (``previous`` goes where a state would).
        """
        mask = chars != 0
        state, annotations, keys = self.encode(chars, mask)
        logits = []
        for t in range(previous.shape[1]):
            step_logits, _, state = self.step(previous[:, t], state, annotations, keys, mask)
            logits.append(step_logits)
        return (torch.stack(logits, dim=1),)
