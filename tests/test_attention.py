"""Additive attention against its equations, written out position by position.

Tolerance: 1e-10 in float64 — both sides compute the same sums in a different order, which in
float64 differs by ~1e-15; the margin covers the softmax's exp.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.nets.attention import AdditiveAttention

TOLERANCE = 1e-10
BATCH, LENGTH, QUERY, KEY, HIDDEN = 3, 6, 5, 4, 7


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(BATCH, QUERY, generator=generator, dtype=torch.float64)
    annotations = torch.randn(BATCH, LENGTH, KEY, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([LENGTH, 3, 1])
    mask = torch.arange(LENGTH).unsqueeze(0) < lengths.unsqueeze(1)
    return query, annotations, mask


def _attention(heads: int) -> AdditiveAttention:
    torch.manual_seed(1)
    return AdditiveAttention(query_size=QUERY, key_size=KEY, attention_size=HIDDEN, heads=heads).double()


def _by_the_equations(
    attention: AdditiveAttention, query: torch.Tensor, annotations: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """e_i = v^T tanh(W s + U h_i); alpha = softmax over real i; c = sum alpha_i h_i; per head, looped."""
    a = attention.attention_size
    w = attention.query_projection.weight
    u, u_bias = attention.key_projection.weight, attention.key_projection.bias
    contexts, weights = [], []
    for b in range(query.shape[0]):
        row_contexts, row_weights = [], []
        for k in range(attention.heads):
            w_k, u_k, bias_k = w[k * a : (k + 1) * a], u[k * a : (k + 1) * a], u_bias[k * a : (k + 1) * a]
            real = [i for i in range(annotations.shape[1]) if mask[b, i]]
            scores = {
                i: float(attention.score_vector[k] @ torch.tanh(w_k @ query[b] + u_k @ annotations[b, i] + bias_k))
                for i in real
            }
            total = sum(math.exp(e) for e in scores.values())
            alpha = torch.tensor(
                [math.exp(scores[i]) / total if i in scores else 0.0 for i in range(annotations.shape[1])],
                dtype=torch.float64,
            )
            row_weights.append(alpha)
            row_contexts.append(alpha @ annotations[b])
        contexts.append(torch.cat(row_contexts))
        weights.append(torch.stack(row_weights))
    return torch.stack(contexts), torch.stack(weights)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_the_bahdanau_equations(heads: int) -> None:
    attention = _attention(heads)
    query, annotations, mask = _inputs()
    with torch.no_grad():
        context, weights = attention(query, annotations, mask)
        expected_context, expected_weights = _by_the_equations(attention, query, annotations, mask)
    assert context.shape == (BATCH, heads * KEY) and weights.shape == (BATCH, heads, LENGTH)
    torch.testing.assert_close(weights, expected_weights, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(context, expected_context, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("heads", [1, 4])
def test_weights_sum_to_one_and_padding_gets_none(heads: int) -> None:
    query, annotations, mask = _inputs(seed=2)
    with torch.no_grad():
        _, weights = _attention(heads)(query, annotations, mask)
    torch.testing.assert_close(
        weights.sum(dim=-1), torch.ones(BATCH, heads, dtype=torch.float64), atol=TOLERANCE, rtol=0
    )
    assert torch.all(weights[~mask.unsqueeze(1).expand_as(weights)] == 0)
    assert torch.all(weights[mask.unsqueeze(1).expand_as(weights)] > 0)


def test_what_is_in_the_padding_does_not_change_the_context() -> None:
    attention = _attention(heads=4)
    query, annotations, mask = _inputs(seed=3)
    garbage = annotations.clone()
    garbage[~mask] = 1e6
    with torch.no_grad():
        context, weights = attention(query, annotations, mask)
        context_garbage, weights_garbage = attention(query, garbage, mask)
    torch.testing.assert_close(context_garbage, context, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(weights_garbage, weights, atol=TOLERANCE, rtol=0)


def test_keys_projected_once_give_the_same_step() -> None:
    attention = _attention(heads=4)
    query, annotations, mask = _inputs(seed=4)
    with torch.no_grad():
        keys = attention.project_keys(annotations)
        assert keys.shape == (BATCH, LENGTH, 4, HIDDEN)
        torch.testing.assert_close(attention(query, annotations, mask, keys), attention(query, annotations, mask))


def test_a_float_mask_works_like_a_boolean_one() -> None:
    attention = _attention(heads=1)
    query, annotations, mask = _inputs(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(
            attention(query, annotations, mask.to(torch.float32)), attention(query, annotations, mask)
        )


def test_gradients_reach_every_parameter_and_the_annotations() -> None:
    attention = _attention(heads=4)
    query, annotations, mask = _inputs(seed=6)
    annotations.requires_grad_(True)
    context, _ = attention(query, annotations, mask)
    context.sum().backward()
    for name, parameter in attention.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert annotations.grad is not None
    assert torch.all(annotations.grad[~mask] == 0), "padding must get no gradient"


@pytest.mark.parametrize("field", ["query_size", "key_size", "attention_size", "heads"])
def test_sizes_below_one_are_refused(field: str) -> None:
    sizes = {"query_size": 2, "key_size": 2, "attention_size": 2, "heads": 1, field: 0}
    with pytest.raises(ValueError, match=field):
        AdditiveAttention(**sizes)
