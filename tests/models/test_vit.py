"""The small transformers: patches, attention against its formula, the norm's place, the
causal mask (a later row never reaches an earlier output), and batch norm's leak."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.models.vit import (
    NextRowTransformer,
    SelfAttention,
    TokenNorm,
    TransformerBlock,
    VisionTransformer,
    next_row_pairs,
    patchify,
)
from normlab.testing.tolerance import assert_close_sum

NORMS = ("layer", "rms", "dyt", "batch", "none")
PER_TOKEN_NORMS = ("layer", "rms", "dyt", "none")  # no statistics across tokens


def test_patchify_cuts_squares_row_by_row() -> None:
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 3 * 16)
    for t in range(6):
        row, col = divmod(t, 3)
        expected = images[:, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4].reshape(2, -1)
        assert torch.equal(patches[:, t], expected)
    with pytest.raises(ValueError, match="not a multiple of patch_size 5"):
        patchify(images, 5)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_vision_transformer_shapes(norm: str, placement: str) -> None:
    model = VisionTransformer(norm, placement, width=16, depth=2, heads=2, patch_size=4)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert len(model.encoder.blocks) == 2
    assert model.position.shape == (1, 49, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_its_formula(causal: bool) -> None:
    """softmax(Q K^T / sqrt(d) + M) V per head, then the output map, in float64."""
    n, t, d, heads = 2, 5, 8, 2
    attention = SelfAttention(d, heads, causal).double()
    x = torch.randn(n, t, d, dtype=torch.float64)
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(d, dim=-1)
    split = [z.view(n, t, heads, d // heads).transpose(1, 2) for z in (q, k, v)]
    scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), -math.inf)
    concat = (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(n, t, d)
    expected = concat @ attention.out.weight.T + attention.out.bias
    abs_sum = concat.abs() @ attention.out.weight.abs().T + attention.out.bias.abs()
    assert_close_sum(attention(x), expected, terms=d * t, abs_sum=abs_sum.detach())


def test_token_norm_batch_statistics_are_over_batch_and_tokens() -> None:
    norm = TokenNorm("batch", 4).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64) * 2 + 1
    flat = x.reshape(15, 4)
    centred = flat - flat.mean(0)
    var = centred.pow(2).mean(0)
    expected = (centred / torch.sqrt(var + norm.norm.eps)).reshape(3, 5, 4)
    assert_close_sum(norm(x), expected, terms=15, abs_sum=x.abs().max() * 4)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_layer_norm_placement(placement: str) -> None:
    """Post-LN's block output is the norm's (each token: mean 0, variance 1 at init);
    pre-LN's is the residual sum, whose tokens are not normalized."""
    block = TransformerBlock(8, 2, 16, "layer", placement, causal=False).double()
    x = 3 * torch.randn(2, 6, 8, dtype=torch.float64) + 2
    y = block(x)
    mean, var = y.mean(-1), y.var(-1, unbiased=False)
    normalized = bool(mean.abs().max() < 1e-6) and bool((var - 1).abs().max() < 1e-3)
    assert normalized == (placement == "post")


def _gradient_wrt_rows(model: torch.nn.Module, rows: torch.Tensor, t: int) -> torch.Tensor:
    rows = rows.clone().requires_grad_(True)
    model(rows)[:, t].sum().backward()
    assert rows.grad is not None
    return rows.grad


@pytest.mark.parametrize("norm", PER_TOKEN_NORMS)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_a_later_row_never_reaches_an_earlier_output(norm: str, placement: str) -> None:
    model = NextRowTransformer(norm, placement, width=16, depth=2, heads=2).double()
    rows = torch.randn(3, 10, 28, dtype=torch.float64)
    for t in (0, 4, 8):
        grad = _gradient_wrt_rows(model, rows, t)
        assert torch.count_nonzero(grad[:, t + 1 :]) == 0  # exactly: the mask is -inf
        assert bool((grad[:, : t + 1].abs().sum(-1) > 0).all())  # every earlier row counts


def test_batch_norm_over_time_leaks_later_rows() -> None:
    """Constructed case: in train mode a later row of one sequence changes an earlier
    output (through the batch statistics); with the running statistics it cannot."""
    model = NextRowTransformer("batch", "pre", width=16, depth=2, heads=2).double()
    rows = torch.randn(4, 10, 28, dtype=torch.float64)
    perturbed = rows.clone()
    perturbed[0, 9] += 5.0
    model.train()
    with torch.no_grad():
        change = (model(perturbed)[:, :9] - model(rows)[:, :9]).abs().max()
    assert change > 1e-3  # far above float64 rounding
    grad = _gradient_wrt_rows(model, rows, 0)
    assert torch.count_nonzero(grad[:, 1:]) > 0
    model.eval()
    assert torch.count_nonzero(_gradient_wrt_rows(model, rows, 0)[:, 1:]) == 0


def test_next_row_pairs_shift_by_one_row() -> None:
    images = torch.randn(2, 1, 28, 28)
    inputs, targets = next_row_pairs(images)
    assert inputs.shape == targets.shape == (2, 27, 28)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(targets[:, -1], images[:, 0, -1])


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="width \\(10\\) must be divisible by heads \\(4\\)"):
        VisionTransformer(width=10, heads=4)
    with pytest.raises(ValueError, match="placement must be one of pre, post"):
        VisionTransformer(placement="middle")
    with pytest.raises(ValueError, match="patch_size 5 must divide image_size 28"):
        VisionTransformer(patch_size=5)
    with pytest.raises(ValueError, match="unknown norm layer 'nope'"):
        VisionTransformer(norm="nope")
    with pytest.raises(ValueError, match="expected at most 28 rows, got 29"):
        NextRowTransformer(width=16, depth=1)(torch.randn(1, 29, 28))
