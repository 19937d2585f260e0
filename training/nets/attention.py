r"""Additive (Bahdanau) attention, with several heads.

A decoder at step ``t`` holds a query ``s`` (its state before the step, ``[B, Q]``); the encoder
left ``L`` annotations ``h_1 .. h_L`` (``[B, L, D]``), some of them padding. Attention turns the
query into a weighted average of the annotations (Bahdanau, Cho and Bengio 2015, eq. 5-6; the
equations are :class:`AdditiveAttention`'s). ``U_k h_i`` does not depend on the query, so a
decoder computes it once per input (:meth:`AdditiveAttention.project_keys`) and hands it to every
step; the exporter uses that to put the projected keys in the init graph's context.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MASKED_SCORE = -1e9
"""The score given to padded positions: ``exp`` of it underflows to exactly 0 beside any real
score, so padding gets weight 0, and it stays finite (``-inf`` would turn an all-padding row
into NaN, and ONNX Runtime and PyTorch agree on finite values)."""


class AdditiveAttention(nn.Module):
    r"""Bahdanau attention of a query over a padded sequence of annotations, with ``heads`` heads.

    .. math::

        e_i = v^\top \tanh(W s + U h_i)          \qquad \text{score of position } i \\
        \alpha_i = \frac{\exp e_i}{\sum_{j \in \text{real}} \exp e_j}
                                                 \qquad \text{weights; padded positions get } 0 \\
        c = \sum_i \alpha_i h_i                  \qquad \text{context}

    With ``heads = K`` every head ``k`` has its own ``W_k``, ``U_k``, ``v_k`` (its own idea of
    what to look for), computes its own weights ``alpha^{(k)}`` and context ``c^{(k)}``, and the
    contexts are concatenated: ``c = [c^{(1)}; ...; c^{(K)}]``, ``[B, K * D]``. ``K = 1`` is
    Bahdanau's attention exactly.

    Args:
        query_size: width of the decoder's query ``s`` (``Q``).
        key_size: width of each annotation ``h_i`` (``D``).
        attention_size: width of each head's hidden scoring layer (``A``, the rows of ``W_k``
            and ``U_k``).
        heads: number of heads ``K``; the context is ``K * D`` wide.

    Attributes:
        context_size: ``heads * key_size``, the width of the context :meth:`forward` returns.
    """

    def __init__(self, *, query_size: int, key_size: int, attention_size: int, heads: int = 1) -> None:
        super().__init__()
        for name, value in {
            "query_size": query_size,
            "key_size": key_size,
            "attention_size": attention_size,
            "heads": heads,
        }.items():
            if value < 1:
                raise ValueError(f"AdditiveAttention: {name} must be >= 1, got {value}")
        self.query_size, self.key_size = query_size, key_size
        self.attention_size, self.heads = attention_size, heads
        self.context_size = heads * key_size
        # All heads' W_k (and U_k) stacked as one matrix, so one product computes every head.
        self.query_projection = nn.Linear(query_size, heads * attention_size, bias=False)  # W_k
        self.key_projection = nn.Linear(key_size, heads * attention_size, bias=True)  # U_k (+ bias)
        self.score_vector = nn.Parameter(torch.empty(heads, attention_size))  # v_k
        nn.init.uniform_(self.score_vector, -1 / math.sqrt(attention_size), 1 / math.sqrt(attention_size))

    def project_keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """``U_k h_i`` for every head and position: ``[B, L, D] -> [B, L, K, A]``. Query-free, so once per input."""
        batch, length, _ = annotations.shape
        keys: torch.Tensor = self.key_projection(annotations)
        return keys.view(batch, length, self.heads, self.attention_size)

    def forward(
        self,
        query: torch.Tensor,
        annotations: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and weights of one decoder step.

        Args:
            query: ``s``, ``[B, Q]``.
            annotations: ``h``, ``[B, L, D]``.
            mask: ``[B, L]``, true (or 1) at real positions, false (0) at padding. Every row
                needs at least one real position.
            keys: :meth:`project_keys` of ``annotations`` when the caller kept it; computed
                here otherwise.

        Returns:
            ``(context [B, K * D], weights [B, K, L])``; each head's weights sum to 1 over
            the real positions and are 0 at padding.
        """
        if keys is None:
            keys = self.project_keys(annotations)
        batch = query.shape[0]
        queries = self.query_projection(query).view(batch, 1, self.heads, self.attention_size)  # W_k s
        hidden = torch.tanh(queries + keys)  # tanh(W_k s + U_k h_i): [B, L, K, A]
        scores = (hidden * self.score_vector).sum(dim=-1)  # e_i^(k) = v_k^T (...): [B, L, K]
        real = mask.to(torch.bool).unsqueeze(-1)
        scores = torch.where(real, scores, torch.full_like(scores, MASKED_SCORE))
        weights = torch.softmax(scores, dim=1).transpose(1, 2)  # alpha^(k)_i: [B, K, L]
        contexts = torch.bmm(weights, annotations)  # c^(k) = sum_i alpha_i^(k) h_i: [B, K, D]
        return contexts.reshape(batch, self.context_size), weights
