"""Show, Attend and Tell (Xu et al. 2015) at the scale of digit scenes: a CNN encoder, an LSTM decoder.

Served as two graphs (the attention-decoder contract, ``service/drivers/attention.py``):
:class:`CaptionerInit`, ``image -> h0, c0, annotations, mask`` (the CNN's last feature map is the
annotation grid; ``h0, c0 = tanh(W mean_i a_i)``, the paper's MLP on the mean annotation; an
image has no padding, so the mask is all ones), and :class:`CaptionerStep`, one word per call
(``word, h, c, annotations, mask -> logits, attention, h', c'``). :class:`CaptionerDecoder` has a
step's equations. Training adds the doubly stochastic regulariser
(:func:`doubly_stochastic_penalty`); with ``hard=True`` it samples one location per word for the
REINFORCE-style gradient (``train.py``), and the served graph uses the expectation.
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets.attention import AdditiveAttention


class ConvEncoder(nn.Module):
    """Three conv + ReLU + 2×2 max-pool blocks: ``[B, 1, H, W] -> [B, L = (H/8)(W/8), D]``.

    With ``coordinates``, each annotation also carries its location's row and column (in
    [-1, 1]). A convolution is translation-equivariant: ``a_i`` says *what* is at location
    ``i`` but not *where* ``i`` is, and a caption's "to the left of", "above" and reading
    order are all about where. Without them the attention can only find position from the
    zero padding at the canvas's edges.
    """

    where: torch.Tensor

    def __init__(self, channels: tuple[int, int, int], *, coordinates: bool = False, canvas: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.body = nn.Sequential(*layers)
        side = canvas // 2 ** len(channels)
        axis = torch.linspace(-1.0, 1.0, side)
        rows, columns = torch.meshgrid(axis, axis, indexing="ij")
        where = torch.stack([rows.flatten(), columns.flatten()], dim=-1)  # [L, 2], row-major
        self.register_buffer("where", where.unsqueeze(0), persistent=False)
        self.coordinates = coordinates
        self.features = previous + (2 if coordinates else 0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grid: torch.Tensor = self.body(image.unsqueeze(1))  # [B, D, h, w]
        annotations = grid.flatten(2).transpose(1, 2)  # [B, L, D], row-major over the grid
        if not self.coordinates:
            return annotations
        return torch.cat([annotations, self.where.expand(annotations.shape[0], -1, -1)], dim=-1)


class CaptionerInit(nn.Module):
    """The init graph: the image's annotations, their mask and the decoder's initial state."""

    def __init__(self, encoder: ConvEncoder, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.init_h = nn.Linear(encoder.features, hidden)
        self.init_c = nn.Linear(encoder.features, hidden)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        annotations = self.encoder(image)
        mean = annotations.mean(dim=1)
        mask = torch.ones_like(annotations[..., 0])
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), annotations, mask


class CaptionerDecoder(nn.Module):
    """One word at a time: attention, gate, LSTM cell, deep output, with the paper's equations::

        alpha_t = softmax_i(v^T tanh(W_a a_i + W_h h_{t-1}))       soft additive attention
        beta_t  = sigmoid(w_b h_{t-1})                             the gating scalar
        z_t     = beta_t * sum_i alpha_ti a_i                      the context vector
        h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_t-1))
        logits  = L_o(E y_{t-1} + L_h h_t + L_z z_t)               the deep output layer

    With ``hard=True`` the training pass instead *samples* one location per word,
    ``s_t ~ Categorical(alpha_t)``, ``z_t = a_{s_t}``, and returns ``sum_t log alpha_{t,s_t}``.
    """

    def __init__(self, vocab_size: int, features: int, embed: int, hidden: int, attention: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.attend = AdditiveAttention(query_size=hidden, key_size=features, attention_size=attention, heads=heads)
        width = self.attend.context_size
        self.gate = nn.Linear(hidden, 1)
        self.cell = nn.LSTMCell(embed + width, hidden)
        self.out_h = nn.Linear(hidden, embed)
        self.out_z = nn.Linear(width, embed)
        self.out = nn.Linear(embed, vocab_size)

    def step(
        self,
        word: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        annotations: torch.Tensor,
        mask: torch.Tensor,
        *,
        sample: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``word [B]`` → logits [B, V], the attention weights [B, L] (the heads' mean), h', c' and
        log alpha of the sampled location [B] (zeros unless ``sample``: hard attention, one head,
        draws its location from that generator)."""
        e = self.embed(word)
        context, weights = self.attend(h, annotations, mask)  # [B, K*D], [B, K, L]
        alpha = weights.mean(dim=1)
        logprob = torch.zeros_like(alpha[:, 0])
        if sample is not None:
            chosen = torch.multinomial(alpha, 1, generator=sample)  # s_t ~ Categorical(alpha_t): [B, 1]
            logprob = torch.log(alpha.gather(1, chosen).squeeze(1).clamp_min(1e-12))
            context = annotations.gather(1, chosen.unsqueeze(-1).expand(-1, 1, annotations.shape[2])).squeeze(1)
        z = torch.sigmoid(self.gate(h)) * context
        h, c = self.cell(torch.cat([e, z], dim=-1), (h, c))
        logits = self.out(e + self.out_h(h) + self.out_z(z))
        return logits, alpha, h, c, logprob

    def forward(
        self,
        words: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        annotations: torch.Tensor,
        mask: torch.Tensor,
        *,
        sample: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing over ``words [B, T]``: logits [B, T, V], alphas [B, T, L], sum_t log alpha_s [B, T]."""
        all_logits, alphas, logprobs = [], [], []
        for t in range(words.shape[1]):
            logits, alpha, h, c, logprob = self.step(words[:, t], h, c, annotations, mask, sample=sample)
            all_logits.append(logits)
            alphas.append(alpha)
            logprobs.append(logprob)
        return torch.stack(all_logits, 1), torch.stack(alphas, 1), torch.stack(logprobs, 1)


class CaptionerStep(nn.Module):
    """The step graph's signature around ``CaptionerDecoder.step``: time axis of 1 in and out."""

    def __init__(self, decoder: CaptionerDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self, word: torch.Tensor, h: torch.Tensor, c: torch.Tensor, annotations: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, alpha, h, c, _ = self.decoder.step(word[:, 0], h, c, annotations, mask)
        return logits.unsqueeze(1), alpha.unsqueeze(1), h, c


class Captioner(nn.Module):
    """The whole captioner, for training; ``init_graph`` and ``step_graph`` are what is exported."""

    def __init__(
        self,
        *,
        vocab_size: int,
        channels: tuple[int, int, int] = (32, 64, 64),
        embed: int = 32,
        hidden: int = 128,
        attention: int = 64,
        heads: int = 1,
        coordinates: bool = False,
        canvas: int = 64,
    ) -> None:
        super().__init__()
        encoder = ConvEncoder(channels, coordinates=coordinates, canvas=canvas)
        self.init_graph = CaptionerInit(encoder, hidden)
        self.decoder = CaptionerDecoder(vocab_size, encoder.features, embed, hidden, attention, heads)
        self.step_graph = CaptionerStep(self.decoder)

    def forward(
        self, image: torch.Tensor, words: torch.Tensor, *, sample: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c, annotations, mask = self.init_graph(image)
        decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self.decoder(
            words, h, c, annotations, mask, sample=sample
        )
        return decoded


def doubly_stochastic_penalty(alphas: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_i (1 - sum_t alpha_ti)^2`` over the caption's real words (``caption_mask [B, T]``)."""
    attended = (alphas * caption_mask.unsqueeze(-1)).sum(dim=1)  # [B, L]
    return ((1.0 - attended) ** 2).sum(dim=1).mean()
