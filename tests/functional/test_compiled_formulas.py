"""The closed-form autograd functions that ``torch.compile`` traces for group and layer
norm on small inputs (``_CompiledFormula`` of :mod:`normlab.functional.groupnorm` and
:mod:`normlab.functional.layernorm`) against torch.nn.functional in
float64 (the oracle), called directly (their maths, no compiler) and under
``torch.compile(fullgraph=True)``; and their float32 accuracy far from zero and with an
outlying first value, where the shift by each group's first value matters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normlab.functional as N
from normlab.functional import groupnorm, layernorm
from normlab.testing.tolerance import assert_close_sum, normalization_sums

# (input shape, groups, affine)
GROUP_CASES = [
    ((4, 6, 3, 3), 3, True),
    ((3, 4, 5), 1, True),
    ((3, 4, 5), 4, False),
    ((5, 6), 2, True),  # no spatial dimension: one value per channel
    ((5, 6), 3, False),
    ((2, 4, 2, 3, 3), 2, True),
]


def _inputs(
    shape: tuple[int, ...], param_shape: tuple[int, ...], affine: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``x ~ N(0.5, 2^2)``, ``weight ~ U(0.5, 1.5)`` (not ones: a swapped weight shows),
    ``bias ~ N(0, 1)`` of ``param_shape``, and an upstream gradient ``dy ~ N(0, 1)``."""
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
    w = (torch.rand(param_shape, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    b = torch.randn(param_shape, dtype=torch.float64).to(dtype) if affine else None
    return x, w, b, torch.randn(shape, dtype=torch.float64).to(dtype)


def _group_inputs(
    shape: tuple[int, ...], affine: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """:func:`_inputs` with per-channel parameters (group norm's)."""
    return _inputs(shape, (shape[1],), affine, dtype)


def _grads(
    fn: object, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, dy: torch.Tensor
) -> list[torch.Tensor]:
    """``[y, dx, dweight, dbias]`` (the last two where given) of ``y = fn(x, w, b)``."""
    inputs = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    args = iter(inputs)
    y = fn(next(args), *(None if t is None else next(args) for t in (w, b)))  # type: ignore[operator]
    return [y.detach(), *torch.autograd.grad(y, inputs, dy)]


def _assert_matches_oracle(
    ours: object,
    oracle: object,
    x: torch.Tensor,
    w: torch.Tensor | None,
    b: torch.Tensor | None,
    dy: torch.Tensor,
    bounds: list[tuple[int, torch.Tensor]],
) -> None:
    """``ours`` (output and gradients, in ``x``'s dtype) against ``oracle`` in float64,
    each within its ``(terms, abs_sum)`` rounding bound."""
    got = _grads(ours, x, w, b, dy)
    exact = _grads(oracle, *(None if t is None else t.double() for t in (x, w, b)), dy.double())
    assert all(a.dtype == x.dtype for a in got)
    for mine, want, (terms, abs_sum) in zip(got, exact, bounds, strict=True):
        assert_close_sum(mine, want, terms=terms, abs_sum=abs_sum, dtype=x.dtype)


def _group_bounds(
    x: torch.Tensor,
    groups: int,
    w: torch.Tensor | None,
    b: torch.Tensor | None,
    dy: torch.Tensor,
) -> list[tuple[int, torch.Tensor]]:
    """``(terms, sum |terms|)`` of ``[y, dx, dweight, dbias]`` (the last two where given),
    from :func:`normlab.testing.tolerance.normalization_sums` over the rows of each
    (sample, group): the gradient's cancellation included, which a Jacobian understates."""
    n, c = x.shape[:2]
    per_group = c // groups * x[0, 0].numel()
    rows, g = x.double().reshape(n * groups, -1), dy.double().reshape(n * groups, -1)
    positions = x[0, 0].numel()
    weight = None
    if w is not None:
        weight = w.double().view(1, c, 1).expand(n, c, positions).reshape(rows.shape)
    sums = normalization_sums(rows, g, 1e-5, weight=weight)
    output = sums.output.reshape(x.shape)
    if b is not None:
        output = output + b.double().abs().view(c, *([1] * (x.dim() - 2)))
    bounds = [(per_group, output), (per_group, sums.grad_input.reshape(x.shape))]
    per_channel = n * positions
    if w is not None:
        weight_sum = sums.weight_terms.reshape(n, c, positions).sum((0, 2))
        bounds.append((per_channel, weight_sum))
    if b is not None:
        bounds.append((per_channel, dy.double().abs().reshape(n, c, -1).sum((0, 2))))
    return bounds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,groups,affine", GROUP_CASES)
def test_group_norm_closed_form_matches_torch(
    shape: tuple[int, ...], groups: int, affine: bool, dtype: torch.dtype
) -> None:
    """Output and the three gradients of the closed form, within the rounding bounds of
    torch's float64 group norm (its Jacobian's sums of magnitudes)."""
    x, w, b, dy = _group_inputs(shape, affine, dtype)

    def closed_form(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None):
        return groupnorm._CompiledFormula.apply(x, groups, w, b, 1e-5)[0]

    def oracle(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None):
        return F.group_norm(x, groups, w, b, 1e-5)

    bounds = _group_bounds(x, groups, w, b, dy)
    _assert_matches_oracle(closed_form, oracle, x, w, b, dy, bounds)


def test_group_norm_compiles_to_the_closed_form_in_one_graph() -> None:
    """``torch.compile(fullgraph=True)`` of ``group_norm`` traces the closed form (no
    graph break) and gives torch's float64 numbers within their rounding bounds."""
    torch._dynamo.reset()
    x, w, b, dy = _group_inputs((4, 6, 3, 3), True, torch.float32)
    compiled = torch.compile(
        lambda x, w, b: N.group_norm(x, 3, w, b), fullgraph=True, backend="aot_eager"
    )
    ours = _grads(compiled, x, w, b, dy)
    exact = _grads(
        lambda x, w, b: F.group_norm(x, 3, w, b), x.double(), w.double(), b.double(), dy.double()
    )
    bounds = _group_bounds(x, 3, w, b, dy)
    for got, want, (terms, abs_sum) in zip(ours, exact, bounds, strict=True):
        assert_close_sum(got, want, terms=terms, abs_sum=abs_sum, dtype=torch.float32)


def test_group_norm_closed_form_far_from_zero_as_accurate_as_torch() -> None:
    """Mean 1e4, std 1e-2 in float32: output and ``dx`` at least as accurate against float64
    as torch.nn's float32 group norm (which subtracts the rounded mean: ~0.1 off)."""
    torch.manual_seed(6)
    x = (1e4 + 1e-2 * torch.randn(4, 8, 16, dtype=torch.float64)).float()
    dy = torch.randn(4, 8, 16)

    def closed_form(x: torch.Tensor, w: None, b: None) -> torch.Tensor:
        return groupnorm._CompiledFormula.apply(x, 2, None, None, 1e-5)[0]

    exact = _grads(lambda x, w, b: F.group_norm(x, 2), x.double(), None, None, dy.double())
    errors = {}
    for name, fn in (("ours", closed_form), ("torch", lambda x, w, b: F.group_norm(x, 2))):
        got = _grads(fn, x, None, None, dy)
        errors[name] = [
            (a.double() - e).abs().max().item() for a, e in zip(got, exact, strict=True)
        ]
    assert errors["ours"][0] <= errors["torch"][0] and errors["ours"][0] < 1e-4
    assert errors["ours"][1] <= errors["torch"][1]


def test_group_norm_closed_form_with_an_outlying_first_value() -> None:
    """Each group is shifted by its first value; an outlier there (300 in a group of std 1)
    must leave the float32 output and ``dx`` as accurate as centring on the exact mean:
    within a few float32 ulps of 300 (the size of the shift) times ``rstd``."""
    torch.manual_seed(8)
    x = torch.randn(2, 4, 512, dtype=torch.float64)
    x[:, 0, 0] = 300.0
    x[:, 2, 0] = -300.0
    x = x.float()
    dy = torch.randn(2, 4, 512)

    def closed_form(x: torch.Tensor, w: None, b: None) -> torch.Tensor:
        return groupnorm._CompiledFormula.apply(x, 2, None, None, 1e-5)[0]

    got = _grads(closed_form, x, None, None, dy)
    exact = _grads(lambda x, w, b: F.group_norm(x, 2), x.double(), None, None, dy.double())
    rstd = 1 / x.double().view(2, 2, -1).std(-1, correction=0).min().item()
    bound = 8 * torch.finfo(torch.float32).eps * 300 * rstd
    for a, e in zip(got, exact, strict=True):
        assert (a.double() - e).abs().max().item() < bound


# (input shape, normalized_shape, affine)
LAYER_CASES = [
    ((4, 3, 5), (5,), True),
    ((4, 3, 5), (3, 5), True),
    ((6, 7), (7,), False),
    ((9,), (9,), True),
    ((64, 2), (2,), True),  # two values per row: the gradient cancels
]


def _layer_bounds(
    x: torch.Tensor,
    shape: tuple[int, ...],
    w: torch.Tensor | None,
    b: torch.Tensor | None,
    dy: torch.Tensor,
) -> list[tuple[int, torch.Tensor]]:
    """``(terms, sum |terms|)`` of ``[y, dx, dweight, dbias]`` over rows of ``prod(shape)``
    values (:func:`normlab.testing.tolerance.normalization_sums`)."""
    width = math.prod(shape)
    rows, g = x.double().reshape(-1, width), dy.double().reshape(-1, width)
    weight = None if w is None else w.double().reshape(1, width)
    sums = normalization_sums(rows, g, 1e-5, weight=weight)
    output = sums.output + (0 if b is None else b.double().abs().reshape(1, width))
    bounds = [(width, output.reshape(x.shape)), (width, sums.grad_input.reshape(x.shape))]
    if w is not None:
        bounds.append((rows.shape[0], sums.weight_terms.sum(0).reshape(shape)))
    if b is not None:
        bounds.append((rows.shape[0], g.abs().sum(0).reshape(shape)))
    return bounds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,normalized,affine", LAYER_CASES)
def test_layer_norm_closed_form_matches_torch(
    shape: tuple[int, ...], normalized: tuple[int, ...], affine: bool, dtype: torch.dtype
) -> None:
    """Output and the three gradients of layer norm's closed form, within the rounding
    bounds of torch's float64 layer norm."""
    x, w, b, dy = _inputs(shape, tuple(normalized), affine, dtype)

    def closed_form(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None):
        return layernorm._CompiledFormula.apply(x, normalized, w, b, 1e-5)[0]

    def oracle(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None):
        return F.layer_norm(x, normalized, w, b, 1e-5)

    bounds = _layer_bounds(x, normalized, w, b, dy)
    _assert_matches_oracle(closed_form, oracle, x, w, b, dy, bounds)


def test_layer_norm_compiles_to_the_closed_form_in_one_graph() -> None:
    """``torch.compile(fullgraph=True)`` of ``layer_norm`` on a small input traces the
    closed form (no graph break) within torch's float64 rounding bounds."""
    torch._dynamo.reset()
    x = torch.randn(4, 3, 5) * 2 + 0.5
    w, b, dy = torch.rand(5) + 0.5, torch.randn(5), torch.randn(4, 3, 5)
    compiled = torch.compile(
        lambda x, w, b: N.layer_norm(x, [5], w, b), fullgraph=True, backend="aot_eager"
    )
    ours = _grads(compiled, x, w, b, dy)
    exact = _grads(
        lambda x, w, b: F.layer_norm(x, [5], w, b), x.double(), w.double(), b.double(), dy.double()
    )
    for got, want, (terms, abs_sum) in zip(
        ours, exact, _layer_bounds(x, (5,), w, b, dy), strict=True
    ):
        assert_close_sum(got, want, terms=terms, abs_sum=abs_sum, dtype=torch.float32)


def test_layer_norm_closed_form_far_from_zero_and_with_an_outlying_first_value() -> None:
    """Mean 1e4, std 1e-2 in float32: output and ``dx`` at least as accurate as torch.nn's;
    a first value of 300 in rows of std 1: within a few float32 ulps of 300 times ``rstd``."""
    torch.manual_seed(6)
    far = (1e4 + 1e-2 * torch.randn(4, 64, dtype=torch.float64)).float()
    outlying = torch.randn(2, 512, dtype=torch.float64)
    outlying[:, 0] = 300.0
    for x in (far, outlying.float()):
        dy = torch.randn(x.shape)

        def closed_form(x: torch.Tensor, w: None, b: None, width: int = x.shape[1]):
            return layernorm._CompiledFormula.apply(x, (width,), None, None, 1e-5)[0]

        def oracle(x: torch.Tensor, w: None, b: None, width: int = x.shape[1]):
            return F.layer_norm(x, [width])

        exact = _grads(oracle, x.double(), None, None, dy.double())
        ours = _grads(closed_form, x, None, None, dy)
        theirs = _grads(oracle, x, None, None, dy)
        for a, t, e in zip(ours, theirs, exact, strict=True):
            ours_error = (a.double() - e).abs().max().item()
            if x is far:
                assert ours_error <= (t.double() - e).abs().max().item()
            else:
                rstd = 1 / x.double().std(-1, correction=0).min().item()
                assert ours_error < 8 * torch.finfo(torch.float32).eps * 300 * rstd
