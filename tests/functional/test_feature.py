"""Layer, group, RMS and local-response norm against torch.nn.functional (the oracle) and
closed forms.

Values and gradients in float64 and float32, random shapes and arguments (hypothesis),
gradcheck and gradgradcheck, every error with torch's exception type and message, and the
numerics: half precision, inputs far from zero, constant rows, ``eps=None``, empty inputs,
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import normlab.functional as N
from normlab.functional import DtypeError, ShapeError
from normlab.testing.tolerance import (
    NormalizationSums,
    assert_close_sum,
    first_order_sums,
    normalization_sums,
    sum_tolerance,
    unit_roundoff,
)


def _rand(*shape: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype) * scale


Call = Callable[[Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]

# (id, input shape, parameter shape or None, call(module, x, weight, bias))
CASES: list[tuple[str, tuple[int, ...], tuple[int, ...] | None, Call]] = [
    ("layer last dim", (4, 3, 5), (5,), lambda m, x, w, b: m.layer_norm(x, [5], w, b)),
    ("layer two dims", (4, 3, 5), (3, 5), lambda m, x, w, b: m.layer_norm(x, (3, 5), w, b)),
    ("layer no affine", (6, 7), None, lambda m, x, w, b: m.layer_norm(x, [7])),
    ("layer weight only", (6, 7), (7,), lambda m, x, w, b: m.layer_norm(x, [7], w)),
    ("layer bias only", (6, 7), (7,), lambda m, x, w, b: m.layer_norm(x, [7], None, b)),
    ("layer 1-d input", (9,), (9,), lambda m, x, w, b: m.layer_norm(x, [9], w, b, 1e-3)),
    ("layer size", (2, 3, 4), (3, 4), lambda m, x, w, b: m.layer_norm(x, torch.Size([3, 4]), w, b)),
    ("group", (4, 6, 3, 3), (6,), lambda m, x, w, b: m.group_norm(x, 3, w, b)),
    ("group 1 group", (3, 4, 5), (4,), lambda m, x, w, b: m.group_norm(x, 1, w, b)),
    ("group C groups", (3, 4, 5), (4,), lambda m, x, w, b: m.group_norm(x, 4, w, b, 1e-3)),
    ("group no spatial", (5, 6), (6,), lambda m, x, w, b: m.group_norm(x, 2, w, b)),
    ("group 3-d", (2, 4, 2, 3, 3), None, lambda m, x, w, b: m.group_norm(x, 2)),
    ("group weight only", (3, 4, 5), (4,), lambda m, x, w, b: m.group_norm(x, 2, w)),
    ("rms last dim", (4, 3, 5), (5,), lambda m, x, w, b: m.rms_norm(x, [5], w)),
    ("rms two dims", (4, 3, 5), (3, 5), lambda m, x, w, b: m.rms_norm(x, [3, 5], w, 1e-3)),
    ("rms no weight", (6, 7), None, lambda m, x, w, b: m.rms_norm(x, [7])),
    ("lrn default", (3, 6, 4, 4), None, lambda m, x, w, b: m.local_response_norm(x, 3)),
    ("lrn strong", (3, 6, 4, 4), None, lambda m, x, w, b: m.local_response_norm(x, 3, 0.5)),
    ("lrn 1-d", (3, 5, 7), None, lambda m, x, w, b: m.local_response_norm(x, 2, 1.0, 0.5, 2.0)),
    ("lrn 3-d", (2, 6, 2, 3, 2), None, lambda m, x, w, b: m.local_response_norm(x, 4, 0.7)),
    ("lrn wide", (2, 3, 4), None, lambda m, x, w, b: m.local_response_norm(x, 9, 0.7, 1.0)),
]


def _inputs(
    shape: tuple[int, ...], param: tuple[int, ...] | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    x = _rand(*shape, dtype=dtype, scale=1.5) + 0.5
    if param is None:
        return x, None, None
    return x, 1 + 0.5 * _rand(*param, dtype=dtype), 0.5 * _rand(*param, dtype=dtype)


def _compare(
    call: Call,
    x: torch.Tensor,
    w: torch.Tensor | None,
    b: torch.Tensor | None,
    normalized: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> None:
    """Output and every gradient of ours equal torch's, within the rounding bound of the
    sums each one is (terms and magnitudes from torch's float64 Jacobian). ``normalized``
    maps ``g`` to the magnitudes of a normalization's terms (output, then the gradient of
    ``x``, then ``w``'s, from ``normalization_sums``), which cancel in the Jacobian; every
    value then counts all of ``x``'s elements as its terms."""
    leaves = [t for t in (x, w, b) if t is not None]
    ours_in = [t.detach().clone().requires_grad_(True) for t in leaves]
    ref_in = [t.detach().clone().requires_grad_(True) for t in leaves]

    def unpack(ts: list[torch.Tensor]) -> list[torch.Tensor | None]:
        it = iter(ts)
        return [next(it) if t is not None else None for t in (x, w, b)]

    ours = call(N, *unpack(ours_in))
    ref = call(F, *unpack(ref_in))
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    upstream = torch.randn_like(ref)
    sums = first_order_sums(
        lambda *ts: _unit_weight_call(call, *unpack(list(ts))), leaves, upstream
    )
    terms, output_sum, grad_sums = sums.terms, sums.output, list(sums.grads)
    if normalized is not None:
        terms = max(terms, x.numel())
        extra = normalized(upstream)
        output_sum = output_sum + extra[0]
        grad_sums = [a + e for a, e in zip(grad_sums, extra[1:], strict=False)] + grad_sums[
            len(extra) - 1 :
        ]
    assert_close_sum(ours, ref, terms=terms, abs_sum=output_sum)
    used = [i for i, t in enumerate(ref_in) if _depends(ref, t)]
    ours_grads = torch.autograd.grad(ours, [ours_in[i] for i in used], upstream)
    ref_grads = torch.autograd.grad(ref, [ref_in[i] for i in used], upstream)
    for i, a, r in zip(used, ours_grads, ref_grads, strict=True):
        assert a.dtype == r.dtype
        assert_close_sum(a, r, terms=terms, abs_sum=grad_sums[i])


def _reshaped(
    sums: NormalizationSums, x: torch.Tensor, w: torch.Tensor | None, per_channel: bool = False
) -> list[torch.Tensor]:
    """``normalization_sums`` in ``x``'s shape, and the weight's terms summed over every
    element that shares a weight (into ``w``'s shape: ``x``'s last dimensions, or its
    channels, dimension 1, when ``per_channel``)."""
    output, grad_input = sums.output.reshape(x.shape), sums.grad_input.reshape(x.shape)
    if w is None:
        return [output, grad_input]
    terms = sums.weight_terms.reshape(x.shape)
    if per_channel:
        grad_weight = terms.transpose(0, 1).reshape(w.shape[0], -1).sum(1)
    else:
        grad_weight = terms.reshape(-1, *w.shape).sum(0)
    return [output, grad_input, grad_weight]


def _unit_weight_call(
    call: Call, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None
) -> torch.Tensor:
    """torch's call, a weight of ones standing in for a missing one beside a bias (torch's
    backward through a bias without a weight fails; the values are the same)."""
    if w is None and b is not None:
        w = torch.ones_like(b)
    return call(F, x, w, b)


def _depends(out: torch.Tensor, leaf: torch.Tensor) -> bool:
    (grad,) = torch.autograd.grad(out.sum(), leaf, retain_graph=True, allow_unused=True)
    return grad is not None


@pytest.mark.parametrize("name,shape,param,call", CASES, ids=[c[0] for c in CASES])
def test_float64_equals_torch(name: str, shape: tuple, param: tuple | None, call: Call) -> None:
    torch.manual_seed(0)
    _compare(call, *_inputs(shape, param, torch.float64))


@pytest.mark.parametrize("name,shape,param,call", CASES, ids=[c[0] for c in CASES])
def test_float32_equals_torch(name: str, shape: tuple, param: tuple | None, call: Call) -> None:
    torch.manual_seed(1)
    _compare(call, *_inputs(shape, param, torch.float32))


@pytest.mark.parametrize("name,shape,param,call", CASES[::3], ids=[c[0] for c in CASES[::3]])
def test_non_contiguous_input(name: str, shape: tuple, param: tuple | None, call: Call) -> None:
    torch.manual_seed(2)
    x, w, b = _inputs(shape, param, torch.float64)
    x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same values, other strides
    assert not x.is_contiguous() or x.dim() == 1
    _compare(call, x, w, b)


@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, True), (False, True, False)], ids=str
)
@pytest.mark.parametrize("fn", ["layer", "group", "rms"])
def test_partial_requires_grad(fn: str, needs: tuple[bool, bool, bool]) -> None:
    """Gradients only for the tensors that ask (each branch of the closed-form backward)."""
    torch.manual_seed(3)
    shape, param, call = {
        "layer": ((4, 6), (6,), lambda m, x, w, b: m.layer_norm(x, [6], w, b)),
        "group": ((3, 6, 4), (6,), lambda m, x, w, b: m.group_norm(x, 2, w, b)),
        "rms": ((4, 6), (6,), lambda m, x, w, b: m.rms_norm(x, [6], w)),
    }[fn]
    tensors = _inputs(shape, param, torch.float64)
    ours = [t.clone().requires_grad_(need) for t, need in zip(tensors, needs, strict=True)]
    ref = [t.clone().requires_grad_(need) for t, need in zip(tensors, needs, strict=True)]
    out_ours, out_ref = call(N, *ours), call(F, *ref)
    if not out_ref.requires_grad:
        assert not out_ours.requires_grad
        return
    upstream = torch.randn_like(out_ref)
    out_ours.backward(upstream)
    out_ref.backward(upstream)
    sums = first_order_sums(lambda *ts: call(F, *ts), tensors, upstream)
    for a, r, abs_sum in zip(ours, ref, sums.grads, strict=True):
        assert (a.grad is None) == (r.grad is None)
        if r.grad is not None:
            assert_close_sum(a.grad, r.grad, terms=sums.terms, abs_sum=abs_sum)


def test_group_norm_bias_only() -> None:
    """torch's own backward fails for a bias without a weight ("tensor does not have a
    device"); ours equals torch's group norm without affine plus the bias."""
    torch.manual_seed(7)
    x, _, b = _inputs((3, 4, 5), (4,), torch.float64)
    ours_in = [x.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    ref_in = [x.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    ours = N.group_norm(ours_in[0], 2, None, ours_in[1])
    ref = F.group_norm(ref_in[0], 2) + ref_in[1].view(4, 1)
    upstream = torch.randn_like(ref)
    sums = first_order_sums(lambda x, b: F.group_norm(x, 2) + b.view(4, 1), [x, b], upstream)
    assert_close_sum(ours, ref, terms=sums.terms, abs_sum=sums.output)
    for a, r, abs_sum in zip(
        torch.autograd.grad(ours, ours_in, upstream),
        torch.autograd.grad(ref, ref_in, upstream),
        sums.grads,
        strict=True,
    ):
        assert_close_sum(a, r, terms=sums.terms, abs_sum=abs_sum)


# ---------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64, finite differences)
# ---------------------------------------------------------------------------------------------

GRADCHECK = [
    ("layer", lambda x, w, b: N.layer_norm(x, [4], w, b), (3, 2, 4), (4,)),
    ("layer 2 dims", lambda x, w, b: N.layer_norm(x, [2, 4], w, b), (3, 2, 4), (2, 4)),
    ("layer no affine", lambda x: N.layer_norm(x, [4]), (3, 4), None),
    ("group", lambda x, w, b: N.group_norm(x, 2, w, b), (3, 4, 3), (4,)),
    ("group no affine", lambda x: N.group_norm(x, 2), (2, 4, 3), None),
    ("rms", lambda x, w: N.rms_norm(x, [4], w), (3, 4), (4,)),
    ("rms no weight", lambda x: N.rms_norm(x, [2, 4], eps=1e-3), (3, 2, 4), None),
    ("lrn", lambda x: N.local_response_norm(x, 3, 0.5, 0.75, 1.0), (2, 5, 3), None),
]


@pytest.mark.parametrize("name,fn,shape,param", GRADCHECK, ids=[g[0] for g in GRADCHECK])
def test_gradcheck_and_gradgradcheck(
    name: str, fn: Callable, shape: tuple, param: tuple | None
) -> None:
    torch.manual_seed(4)
    args = [_rand(*shape).requires_grad_(True)]
    if param is not None:
        args.append((1 + 0.5 * _rand(*param)).requires_grad_(True))
        if fn.__code__.co_argcount == 3:
            args.append(_rand(*param).requires_grad_(True))
    assert gradcheck(fn, tuple(args))
    assert gradgradcheck(fn, tuple(args))


# ---------------------------------------------------------------------------------------------
# Errors: torch's exception types and messages
# ---------------------------------------------------------------------------------------------

X = torch.randn(2, 3, 4)
LONG = torch.ones(2, 3, 4, dtype=torch.long)

# (id, call(module), compare the message exactly? else a phrase both messages contain)
ERRORS: list[tuple[str, Callable[[Any], Any], bool | str]] = [
    ("layer shape", lambda m: m.layer_norm(X, [5]), True),
    ("layer shapes", lambda m: m.layer_norm(X, [3, 5]), True),
    ("layer too many", lambda m: m.layer_norm(X, [1, 2, 3, 4]), True),
    ("layer empty", lambda m: m.layer_norm(X, []), True),
    ("layer int shape", lambda m: m.layer_norm(X, 4), True),
    ("layer float shape", lambda m: m.layer_norm(X, [4.0]), True),
    ("layer weight", lambda m: m.layer_norm(X, [4], torch.ones(3)), True),
    ("layer bias", lambda m: m.layer_norm(X, [4], None, torch.ones(3)), True),
    ("layer weight 2d", lambda m: m.layer_norm(X, [3, 4], torch.ones(12)), True),
    ("layer long", lambda m: m.layer_norm(LONG, [4]), False),
    (
        "layer mixed",
        lambda m: m.layer_norm(X, [4], torch.ones(4, dtype=torch.float64)),
        "mixed dtype",
    ),
    (
        "layer half+bf16",
        lambda m: m.layer_norm(X.half(), [4], torch.ones(4).bfloat16()),
        "mixed dtype",
    ),
    ("group 1-d", lambda m: m.group_norm(torch.randn(3), 1), True),
    ("group divisible", lambda m: m.group_norm(X, 2), True),
    ("group one value", lambda m: m.group_norm(torch.randn(1, 3), 3), True),
    ("group one value 3d", lambda m: m.group_norm(torch.randn(1, 3, 1), 3), True),
    ("group negative", lambda m: m.group_norm(X, -1), True),
    ("group float groups", lambda m: m.group_norm(X, 3.0), True),
    ("group weight", lambda m: m.group_norm(X, 3, torch.ones(2)), True),
    ("group weight 2d", lambda m: m.group_norm(X, 3, torch.ones(3, 1)), True),
    (
        "group bias",
        lambda m: m.group_norm(X, 3, None, torch.ones(2)),
        "Expected bias to be a vector",
    ),
    ("group long", lambda m: m.group_norm(LONG, 3), False),
    (
        "group mixed",
        lambda m: m.group_norm(X, 3, torch.ones(3, dtype=torch.float64)),
        "mixed dtype",
    ),
    ("rms shape", lambda m: m.rms_norm(X, [5]), "Given normalized_shape=[5], expected input with"),
    ("rms too many", lambda m: m.rms_norm(X, [1, 2, 3, 4]), False),
    ("rms empty", lambda m: m.rms_norm(X, []), True),
    ("rms int shape", lambda m: m.rms_norm(X, 4), True),
    ("rms weight", lambda m: m.rms_norm(X, [4], torch.ones(3)), True),
    ("rms long", lambda m: m.rms_norm(LONG, [4]), False),
    ("lrn 2-d", lambda m: m.local_response_norm(torch.randn(2, 3), 2), True),
    ("lrn size 0", lambda m: m.local_response_norm(X, 0), False),
    ("lrn size -1", lambda m: m.local_response_norm(X, -1), False),
    ("lrn float size", lambda m: m.local_response_norm(X, 2.0), False),
]


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).splitlines()[0].split())


@pytest.mark.parametrize("name,call,exact", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_match_torch(name: str, call: Callable, exact: bool | str) -> None:
    with pytest.raises(Exception) as torch_error:
        call(F)
    with pytest.raises(type(torch_error.value)) as our_error:  # same type (or a subclass)
        call(N)
    # and one the CLI reports in one line (house rule): a ValueError or a TypeError
    assert isinstance(our_error.value, ValueError | TypeError)
    if exact is True:
        assert _first_line(our_error.value) == _first_line(torch_error.value)
    elif isinstance(exact, str):
        assert exact in _first_line(our_error.value)
        assert exact in _first_line(torch_error.value)


def test_error_classes() -> None:
    assert issubclass(ShapeError, RuntimeError) and issubclass(ShapeError, ValueError)
    assert issubclass(DtypeError, NotImplementedError) and issubclass(DtypeError, TypeError)
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        N.layer_norm([1.0, 2.0], [2])  # type: ignore[arg-type]


def test_group_norm_zero_groups_is_a_clear_error() -> None:
    """torch divides by zero (ZeroDivisionError); ours names the problem."""
    with pytest.raises(ZeroDivisionError):
        F.group_norm(X, 0)
    with pytest.raises(ValueError, match="Expected num groups to be greater than 0, got 0"):
        N.group_norm(X, 0)


def test_negative_eps_is_accepted_as_torch_does() -> None:
    x = _rand(3, 8) * 3
    torch.testing.assert_close(N.layer_norm(x, [8], eps=-1e-3), F.layer_norm(x, [8], eps=-1e-3))
    torch.testing.assert_close(N.rms_norm(x, [8], eps=-1e-3), F.rms_norm(x, [8], eps=-1e-3))


# ---------------------------------------------------------------------------------------------
# Property tests: random shapes and arguments against torch in float64
# ---------------------------------------------------------------------------------------------

small = st.integers(min_value=1, max_value=4)
eps_values = st.sampled_from([1e-5, 1e-3, 0.1])


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(small, max_size=2),
    normalized=st.lists(small, min_size=1, max_size=3),
    affine=st.sampled_from(["none", "weight", "bias", "both"]),
    eps=eps_values,
    seed=st.integers(0, 2**16),
)
def test_layer_norm_property(
    batch: list, normalized: list, affine: str, eps: float, seed: int
) -> None:
    torch.manual_seed(seed)
    x = _rand(*batch, *normalized, scale=2.0)
    w = 1 + _rand(*normalized) if affine in ("weight", "both") else None
    b = _rand(*normalized) if affine in ("bias", "both") else None
    n = math.prod(normalized)
    weight = None if w is None else w.reshape(1, n)
    grad_sum = lambda g: _reshaped(  # noqa: E731
        normalization_sums(x.reshape(-1, n), g.reshape(-1, n), eps, weight=weight), x, w
    )
    _compare(lambda m, x, w, b: m.layer_norm(x, normalized, w, b, eps), x, w, b, grad_sum)


@settings(max_examples=25, deadline=None)
@given(
    n=small,
    groups=small,
    per_group=small,
    spatial=st.lists(small, max_size=3),
    affine=st.booleans(),
    eps=eps_values,
    seed=st.integers(0, 2**16),
)
def test_group_norm_property(
    n: int, groups: int, per_group: int, spatial: list, affine: bool, eps: float, seed: int
) -> None:
    torch.manual_seed(seed)
    c = groups * per_group
    x = _rand(n, c, *spatial, scale=2.0)
    w, b = (1 + _rand(c), _rand(c)) if affine else (None, None)
    if n * per_group * math.prod(spatial) == 1:  # torch: one value per group is an error
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            N.group_norm(x, groups, w, b, eps)
        return
    view = (n * groups, -1)
    channel_weight = None if w is None else w.view(1, c, *[1] * len(spatial)).expand_as(x)
    weight = None if channel_weight is None else channel_weight.reshape(view)
    grad_sum = lambda g: _reshaped(  # noqa: E731
        normalization_sums(x.reshape(view), g.reshape(view), eps, weight=weight), x, w, True
    )
    _compare(lambda m, x, w, b: m.group_norm(x, groups, w, b, eps), x, w, b, grad_sum)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(small, max_size=2),
    normalized=st.lists(small, min_size=1, max_size=3),
    weight=st.booleans(),
    eps=st.sampled_from([None, 1e-6, 1e-2]),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_property(
    batch: list, normalized: list, weight: bool, eps: Any, seed: int
) -> None:
    torch.manual_seed(seed)
    x = _rand(*batch, *normalized, scale=2.0)
    w = 1 + _rand(*normalized) if weight else None
    n = math.prod(normalized)
    weight = None if w is None else w.reshape(1, n)
    variance_eps = torch.finfo(x.dtype).eps if eps is None else eps
    grad_sum = lambda g: _reshaped(  # noqa: E731
        normalization_sums(
            x.reshape(-1, n), g.reshape(-1, n), variance_eps, centered=False, weight=weight
        ),
        x,
        w,
    )
    _compare(lambda m, x, w, b: m.rms_norm(x, normalized, w, eps), x, w, None, grad_sum)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(small, min_size=3, max_size=5),
    size=st.integers(1, 6),
    alpha=st.sampled_from([1e-4, 0.1, 1.0]),
    beta=st.sampled_from([0.5, 0.75, 1.0]),
    k=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_local_response_norm_property(
    shape: list, size: int, alpha: float, beta: float, k: float, seed: int
) -> None:
    torch.manual_seed(seed)
    x = _rand(*shape, scale=2.0)
    call = lambda m, x, w, b: m.local_response_norm(x, size, alpha, beta, k)  # noqa: E731
    _compare(call, x, None, None)


# ---------------------------------------------------------------------------------------------
# Numerics and closed forms
# ---------------------------------------------------------------------------------------------


def test_layer_norm_closed_form() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    expected = (x - 2.5) / math.sqrt(1.25 + 1e-5)
    magnitudes = normalization_sums(x, torch.zeros_like(x), 1e-5).output
    assert_close_sum(N.layer_norm(x, [4]), expected, terms=4, abs_sum=magnitudes)


def test_local_response_norm_size_one_closed_form() -> None:
    x = _rand(2, 3, 4)
    expected = x / (2.0 + 0.3 * x * x) ** 0.6
    torch.testing.assert_close(N.local_response_norm(x, 1, 0.3, 0.6, 2.0), expected)


@pytest.mark.parametrize(
    "dtype,eps",
    [
        (torch.float64, torch.finfo(torch.float64).eps),
        (torch.float32, torch.finfo(torch.float32).eps),
        (torch.float16, torch.finfo(torch.float32).eps),  # computed in float32, as torch does
        (torch.bfloat16, torch.finfo(torch.float32).eps),
    ],
    ids=str,
)
def test_rms_norm_default_eps(dtype: torch.dtype, eps: float) -> None:
    """``eps=None``: an input whose mean square is of the order of eps shows which eps."""
    value = math.sqrt(eps)  # mean square == eps: y = value / sqrt(2 eps) = 1 / sqrt(2)
    x = torch.full((2, 4), value, dtype=torch.float64).to(dtype)
    expected = x.double() / torch.sqrt(x.double().square() + eps)
    got = N.rms_norm(x, [4])
    assert got.dtype == dtype
    # a sum of 4 squares, then the result rounded to ``dtype`` (a wrong eps misses by ~0.3)
    assert_close_sum(got, expected, terms=4, abs_sum=expected.abs(), dtype=dtype)
    assert_close_sum(got, F.rms_norm(x, [4]), terms=4, abs_sum=expected.abs(), dtype=dtype)


HALF_CALLS: list[tuple[str, Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]]] = [
    ("layer", lambda m, x, w: m.layer_norm(x, [64], w, w)),
    ("group", lambda m, x, w: m.group_norm(x.view(4, 8, 8), 2, w[:8], w[:8])),
    ("rms", lambda m, x, w: m.rms_norm(x, [64], w)),
    ("lrn", lambda m, x, w: m.local_response_norm(x.view(4, 8, 8), 3, 1e-6)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("param_dtype", ["input", "float32"])
@pytest.mark.parametrize("name,call", HALF_CALLS, ids=[h[0] for h in HALF_CALLS])
def test_half_precision_statistics_in_float32(
    name: str, call: Callable, dtype: torch.dtype, param_dtype: str
) -> None:
    """Values of size 300: a sum of 64 squares (6e6) overflows float16 (max 65504)."""
    torch.manual_seed(5)
    x = (torch.randn(4, 64) * 300).to(dtype).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(64)).to(dtype if param_dtype == "input" else torch.float32)
    ours = call(N, x, w)
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    truth = call(F, x.detach().double(), w.double())  # the same rounded values, in float64
    ours_error = (ours.double() - truth).abs().max().item()
    torch_error = (call(F, x.detach(), w).double() - truth).abs().max().item()
    assert ours_error <= 1.5 * torch_error + 1e-3 * truth.abs().max().item()
    ours.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()


FAR_CALLS = [
    ("layer", lambda m, x: m.layer_norm(x, [64])),
    ("group", lambda m, x: m.group_norm(x.view(4, 8, 8), 2)),
]


@pytest.mark.parametrize("name,call", FAR_CALLS, ids=[f[0] for f in FAR_CALLS])
def test_far_from_zero_as_accurate_as_torch(name: str, call: Callable) -> None:
    """Mean 1e4, std 1e-2 in float32: at least as accurate as torch.nn against float64.

    Subtracting the mean rounded to float32 (half an ulp of 1e4 is 5e-4, i.e. 0.05 std)
    leaves torch.nn ~0.1 off; the shifted centring keeps ours within 1e-4. The one-pass
    ``E[x^2] - E[x]^2`` gets the variance (1e-4) from the difference of two numbers of 1e8
    and is off by orders of magnitude more.
    """
    torch.manual_seed(6)
    x = (1e4 + 1e-2 * torch.randn(4, 64, dtype=torch.float64)).float()
    truth = call(F, x.double())  # the same float32 values, normalised in float64
    ours_error = (call(N, x).double() - truth).abs().max().item()
    torch_error = (call(F, x).double() - truth).abs().max().item()
    assert ours_error <= torch_error
    assert ours_error < 1e-4
    # the test has teeth: the one-pass formula fails it
    rows = x.view(4, -1) if name == "layer" else x.view(4, 2, -1)
    naive_var = rows.square().mean(-1, keepdim=True) - rows.mean(-1, keepdim=True).square()
    naive = (rows - rows.mean(-1, keepdim=True)) / torch.sqrt(naive_var.clamp_min(0) + 1e-5)
    assert (naive.reshape(truth.shape).double() - truth).abs().max().item() > 0.5


def test_an_outlying_first_value_keeps_the_variance_accurate() -> None:
    """The tensor code's shift is each row's first value (the kernels' the mean of its first
    16); when that value is an outlier the centring must still be exact (two passes). The
    one-pass formula ``E[d^2] - E[d]^2`` on the shifted ``d = x - x[0]`` loses ~D float32
    ulps of the variance and is 0.05 off here."""
    torch.manual_seed(8)
    x = torch.randn(2, 4096, dtype=torch.float64)
    x[:, 0] = 300.0
    x = x.float()
    truth = F.layer_norm(x.double(), [4096])  # the same float32 values, in float64
    ours = [N.layer_norm(x, [4096]), N.group_norm(x.view(2, 2, 2048), 1).view(2, 4096)]
    for got in ours:
        assert (got.double() - truth).abs().max().item() < 1e-4
    d = x - x[:, :1]  # the test has teeth: the one-pass shifted formula fails it
    var = d.square().mean(-1, keepdim=True) - d.mean(-1, keepdim=True).square()
    one_pass = (d - d.mean(-1, keepdim=True)) * torch.rsqrt(var + 1e-5)
    assert (one_pass.double() - truth).abs().max().item() > 1e-2


@pytest.mark.parametrize("centre", [0.0, 1e4])
def test_an_outlying_head_keeps_the_variance_accurate(centre: float) -> None:
    """The kernels shift each row by the mean of its first 16 values and sum ``x - shift``
    and its squares in one pass; the variance is then ``q / D - offset^2``, whose rounding
    errors grow with ``offset^2 / var``. Here the head sits 64 away in a row of std ~1.4
    (``offset^2 / var ~ 2000``): the sums must be taken again around the mean.

    Bound: around the mean, the sum of squares is float32 sums of 32 terms (then double),
    so ``var`` and ``rstd`` are off by a relative ``sum_tolerance(float32, 32, 1)`` at most,
    and ``xhat`` by that times ``|xhat|`` plus its own two roundings. Without the second pass
    the error is ~1e-3, ten times the bound.
    """
    torch.manual_seed(10)
    width = 1 << 16
    x = torch.randn(2, width, dtype=torch.float64)
    x[:, :16] = 64.0
    x = (centre + x).float()
    truth = F.layer_norm(x.double(), [width])  # the same float32 values, in float64
    relative = sum_tolerance(torch.float32, 32, 1.0) / 2 + 2 * unit_roundoff(torch.float32)
    bound = relative * truth.abs().max().item()
    ours = [N.layer_norm(x, [width]), N.group_norm(x.view(2, 2, -1), 1).view(2, width)]
    for got in ours:
        assert (got.double() - truth).abs().max().item() <= bound


@pytest.mark.parametrize("fn", ["layer", "group"])
def test_backward_twice_through_a_retained_graph(fn: str) -> None:
    """The backward writes into its own buffer, never into the saved ``xhat``."""
    torch.manual_seed(9)
    x = _rand(3, 4, 5).requires_grad_(True)
    w, b = (1 + _rand(4, 5)).requires_grad_(True), _rand(4, 5).requires_grad_(True)
    y = {
        "layer": lambda: N.layer_norm(x, [4, 5], w, b),
        "group": lambda: N.group_norm(x, 2, w[:, 0], b[:, 0]),
    }[fn]()
    upstream = torch.randn_like(y)
    first = torch.autograd.grad(y, (x, w, b), upstream, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(y, (x, w, b), upstream, allow_unused=True)
    for a, c in zip(first, second, strict=True):
        assert (a is None) == (c is None)
        if a is not None:
            assert torch.equal(a, c)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, w, b: m.layer_norm(x, [8], w, b),
        lambda m, x, w, b: m.layer_norm(x, [8], w),
        lambda m, x, w, b: m.group_norm(x.transpose(1, 2), 4, w, b),
        lambda m, x, w, b: m.group_norm(x.reshape(6, 8), 2, None, b),
    ],
    ids=["layer", "layer weight only", "group", "group 2-d bias only"],
)
def test_without_autograd_the_same_values(call: Call) -> None:
    """No grad needed: no autograd Function, the output in ``xhat``'s memory; same numbers."""
    torch.manual_seed(10)
    x, w, b = (_rand(*shape, dtype=torch.float32) for shape in ((2, 3, 8), (8,), (8,)))
    with torch.no_grad():
        plain = call(N, x, w, b)
    recorded = call(N, x.clone().requires_grad_(True), w, b)
    assert not plain.requires_grad and recorded.requires_grad
    assert torch.equal(plain, recorded.detach())


def _saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "param_shape,call",
    [
        ((6, 10), lambda m, x, w, b: m.layer_norm(x, [6, 10], w, b)),
        ((6,), lambda m, x, w, b: m.group_norm(x, 3, w, b)),
    ],
    ids=["layer", "group"],
)
def test_saves_no_more_for_backward_than_torch(
    param_shape: tuple[int, ...], call: Call, dtype: torch.dtype
) -> None:
    """``xhat`` (in the input's dtype), ``rstd`` and ``weight``: no more than torch's
    ``input``, ``mean``, ``rstd`` and ``weight``."""
    x = torch.randn(16, 6, 10, dtype=dtype, requires_grad=True)
    w = torch.ones(param_shape, dtype=dtype, requires_grad=True)
    b = torch.zeros(param_shape, dtype=dtype, requires_grad=True)
    ours = _saved_bytes(lambda: call(N, x, w, b))
    theirs = _saved_bytes(lambda: call(F, x, w, b))
    assert x.numel() * x.element_size() <= ours <= theirs


def test_constant_rows_give_finite_output_and_gradients() -> None:
    x = torch.full((3, 4, 5), 7.0, dtype=torch.float64, requires_grad=True)
    w, b = torch.full((5,), 2.0, dtype=torch.float64), torch.arange(5.0, dtype=torch.float64)
    for ours, ref in [
        (N.layer_norm(x, [5], w, b), F.layer_norm(x, [5], w, b)),
        (N.group_norm(x, 2), F.group_norm(x, 2)),
        (N.rms_norm(x * 0, [5]), F.rms_norm(x * 0, [5])),
    ]:
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref)
        (grad,) = torch.autograd.grad(ours.sum(), x)
        assert torch.isfinite(grad).all()
    torch.testing.assert_close(N.layer_norm(x, [5], w, b), b.expand(3, 4, 5))


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.layer_norm(torch.randn(0, 4), [4]),
        lambda m: m.layer_norm(torch.randn(3, 0), [0]),
        lambda m: m.group_norm(torch.randn(0, 3, 4), 3),
        lambda m: m.group_norm(torch.randn(2, 3, 0), 3),
        lambda m: m.rms_norm(torch.randn(0, 4), [4]),
    ],
    ids=["layer N=0", "layer D=0", "group N=0", "group spatial 0", "rms N=0"],
)
def test_empty_inputs_like_torch(call: Callable) -> None:
    ours, ref = call(N), call(F)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype


def test_local_response_norm_empty_returns_the_input_and_ints_like_torch() -> None:
    empty = torch.randn(0, 3, 4)
    assert N.local_response_norm(empty, 2) is empty
    ints = torch.arange(24).view(2, 3, 4)
    ours, ref = N.local_response_norm(ints, 2, 0.1), F.local_response_norm(ints, 2, 0.1)
    assert ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref)


def test_compiles_without_graph_breaks() -> None:
    """torch.compile(fullgraph=True) traces all four without a graph break (the plain
    formula, or normlab's operators on the CPU) and matches eager."""
    torch._dynamo.reset()

    def all_four(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = N.layer_norm(x, [8], w, b) + N.rms_norm(x, [8], w)
        y = N.group_norm(y, 2, w[:4], b[:4])
        return N.local_response_norm(y, 3, 0.5)

    x = torch.randn(2, 4, 8, requires_grad=True)
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    compiled = torch.compile(all_four, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, b)
    expected = all_four(x, w, b)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got.sum(), (x, w, b))
    expected_grads = torch.autograd.grad(expected.sum(), (x, w, b))
    for a, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e)


def test_regex_helper_normalises_torch_whitespace() -> None:
    """torch's LRN message has a run of spaces inside; the comparison collapses it."""
    with pytest.raises(ValueError) as error:
        F.local_response_norm(torch.randn(2, 3), 2)
    assert re.search(r"dimensionality\s{2,}input", str(error.value))
    assert (
        _first_line(error.value) == "Expected 3D or higher dimensionality input (got 2 dimensions)"
    )
