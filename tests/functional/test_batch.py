"""normlab.functional.batch_norm / instance_norm against torch.nn.functional (the oracle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.functional import batch_norm, batchnorm, instance_norm
from normlab.functional._fast import batchnorm as fast
from normlab.testing.tolerance import assert_close_sum, normalization_sums

SHAPES = [(6, 3), (4, 3, 5), (3, 4, 5, 6), (2, 3, 2, 3, 4)]


def _run(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor] | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    dy: torch.Tensor,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """One forward + backward; returns output, gradients and updated running statistics."""
    x = x.clone().requires_grad_()
    w = None if weight is None else weight.clone().requires_grad_()
    b = None if bias is None else bias.clone().requires_grad_()
    rm, rv = (None, None) if stats is None else (stats[0].clone(), stats[1].clone())
    y = fn(x, rm, rv, w, b, **kwargs)
    y.backward(dy)
    out = {"y": y.detach(), "dx": x.grad}
    if w is not None:
        out["dw"] = w.grad
    if b is not None:
        out["db"] = b.grad
    if rm is not None:
        out["running_mean"], out["running_var"] = rm, rv
    return out


def _assert_close(
    ours: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    args: tuple[Any, ...],
    *,
    training: bool = True,
    instance: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> None:
    """Every value within the rounding bound of its sums: ``n`` terms, the values normalized
    together (per channel ``N * prod(*)``; per sample and channel for instance norm), of
    the magnitudes ``normalization_sums`` gives; evaluation divides by fixed statistics."""
    assert ours.keys() == ref.keys()
    terms, sums = _reduction_sums(
        *args, training=training, instance=instance, momentum=momentum, eps=eps
    )
    for key in ref:
        assert_close_sum(ours[key], ref[key], terms=terms, abs_sum=sums[key])


def _reduction_sums(
    x: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor] | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    dy: torch.Tensor,
    *,
    training: bool,
    instance: bool,
    momentum: float,
    eps: float,
) -> tuple[int, dict[str, torch.Tensor]]:
    """(terms, sum |terms| of each value ``_run`` returns) of batch or instance norm."""
    c, samples = x.shape[1], x.shape[0] if instance else 1
    to_rows = (lambda t: t.double().reshape(x.shape[0] * c, -1)) if instance else _per_channel
    rows, g = to_rows(x), to_rows(dy).abs()
    w = torch.ones(c, dtype=torch.float64) if weight is None else weight.double().abs()
    w = w.repeat(samples)[:, None]
    if training or stats is None:
        sums = normalization_sums(rows, g, eps, weight=w)
        output, grad_input, weight_terms = sums.output, sums.grad_input, sums.weight_terms
    else:
        sigma = (stats[1].double().repeat(samples)[:, None] + eps).sqrt()
        condition = (rows.abs() + stats[0].double().abs().repeat(samples)[:, None]) / sigma
        output, grad_input, weight_terms = w * condition, w * g / sigma, g * condition
    if bias is not None:
        output = output + bias.double().abs().repeat(samples)[:, None]
    result = {
        "y": _from_rows(output, x, instance),
        "dx": _from_rows(grad_input, x, instance),
        "dw": weight_terms.sum(1).reshape(samples, c).sum(0),
        "db": g.sum(1).reshape(samples, c).sum(0),
    }
    if stats is not None:
        n = rows.shape[1]
        centred = (rows - rows.mean(1, keepdim=True)).abs()
        variance = (centred * (centred + 2 * rows.abs().mean(1, keepdim=True))).mean(1)
        new_mean = rows.abs().mean(1).reshape(samples, c).mean(0)
        new_var = (variance * n / max(n - 1, 1)).reshape(samples, c).mean(0)
        rate = momentum if training else 0.0
        result["running_mean"] = (1 - rate) * stats[0].double().abs() + rate * new_mean
        result["running_var"] = (1 - rate) * stats[1].double().abs() + rate * new_var
    return x[0].numel() // c if instance else x.numel() // c, result


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *)`` to ``(C, N * prod(*))``: one row per channel, as batch norm reduces."""
    return t.double().transpose(0, 1).reshape(t.shape[1], -1)


def _from_rows(rows: torch.Tensor, like: torch.Tensor, instance: bool) -> torch.Tensor:
    """Rows back into ``like``'s shape (the inverse of the reshape ``_reduction_sums`` did)."""
    if instance:
        return rows.reshape(like.shape)
    shape = (like.shape[1], like.shape[0], *like.shape[2:])
    return rows.reshape(shape).transpose(0, 1)


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    return {
        "x": (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype),
        "dy": torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        "weight": (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype),
        "bias": torch.randn(c, generator=g, dtype=torch.float64).to(dtype),
        "stats": (
            torch.randn(c, generator=g, dtype=torch.float64).to(dtype),
            (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype),
        ),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("training", "affine", "tracked", "momentum"),
    [
        (True, True, True, 0.1),
        (True, True, True, 1.0),
        (True, False, True, 0.3),
        (True, True, False, 0.1),
        (True, False, False, 0.1),
        (False, True, True, 0.1),
        (False, False, True, 0.1),
    ],
)
def test_batch_norm_matches_torch(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    training: bool,
    affine: bool,
    tracked: bool,
    momentum: float,
) -> None:
    d = _inputs(shape, dtype)
    args = (
        d["x"],
        d["stats"] if tracked else None,
        d["weight"] if affine else None,
        d["bias"] if affine else None,
        d["dy"],
    )
    kw = {"training": training, "momentum": momentum, "eps": 1e-3}
    _assert_close(_run(batch_norm, *args, **kw), _run(F.batch_norm, *args, **kw), args, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize(
    ("use_input_stats", "affine", "tracked"),
    [(True, True, True), (True, False, False), (True, True, False), (False, True, True)],
)
def test_instance_norm_matches_torch(
    dtype: torch.dtype, shape: tuple[int, ...], use_input_stats: bool, affine: bool, tracked: bool
) -> None:
    d = _inputs(shape, dtype, seed=1)
    args = (
        d["x"],
        d["stats"] if tracked else None,
        d["weight"] if affine else None,
        d["bias"] if affine else None,
        d["dy"],
    )
    kw = {"use_input_stats": use_input_stats, "momentum": 0.2}
    ours, ref = _run(instance_norm, *args, **kw), _run(F.instance_norm, *args, **kw)
    _assert_close(ours, ref, args, training=use_input_stats, instance=True, momentum=0.2)


# ---------------------------------------------------------------------------------------------
# The closed-form backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (3, 2, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck_training(shape: tuple[int, ...], affine: bool) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = [x]
    if affine:
        inputs += [
            (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_(),
            torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True),
        ]

    def f(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, None, None, *params, training=True, eps=1e-3)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_gradcheck_eval_and_instance_norm() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def bn_eval(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, rm, rv, w, b, training=False)

    def inorm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, None, None, w, b)

    for f in (bn_eval, inorm):
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_fast_and_differentiable_backward_agree() -> None:
    """The in-place backward and the create_graph one compute the same closed form."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 4, 4, generator=g, requires_grad=True)
    w = (torch.rand(3, generator=g) + 0.5).requires_grad_()
    b = torch.randn(3, generator=g, requires_grad=True)
    dy = torch.randn(6, 3, 4, 4, generator=g)
    y = batch_norm(x, None, None, w, b, training=True)
    fast = torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
    graph = torch.autograd.grad(y, (x, w, b), dy, create_graph=True)
    assert graph[0].grad_fn is not None and graph[1].grad_fn is not None  # dx, dweight
    terms, sums = _reduction_sums(
        x.detach(),
        None,
        w.detach(),
        b.detach(),
        dy,
        training=True,
        instance=False,
        momentum=0.1,
        eps=1e-5,
    )
    for a, c, key in zip(fast, graph, ("dx", "dw", "db"), strict=True):
        assert_close_sum(a, c.detach(), terms=terms, abs_sum=sums[key])


def test_saves_only_input_and_per_channel_statistics(code_path: str) -> None:
    """The Function saves the input itself (no copy), the centre (the mean, or with the
    kernels the rounded first mean), invstd and weight: nothing else."""
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = batch_norm(x, None, None, w, None, training=True)
    large = [t for t in saved if t.numel() > 4]
    assert len(large) == 1 and large[0].data_ptr() == x.data_ptr()
    assert sorted(t.numel() for t in saved) == [4, 4, 4, x.numel()]
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 4, 5, 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_compiled_path_formulas_match_torch(shape: tuple[int, ...], affine: bool) -> None:
    """The formula and its closed-form backward (what ``torch.compile`` and ``torch.func``
    run, and a double backward differentiates), called here directly."""
    d = _inputs(shape, torch.float64, seed=7)
    w, b = (d["weight"], d["bias"]) if affine else (None, None)
    out, mean, var = batchnorm.train_forward(d["x"], w, b, 1e-3)
    dx, dweight, dbias = batchnorm.train_backward(d["dy"], d["x"], w, 1e-3)
    ref = _run(F.batch_norm, d["x"], None, w, b, d["dy"], training=True, eps=1e-3)
    dims = [0, *range(2, len(shape))]
    args = (d["x"], None, w, b, d["dy"])
    terms, sums = _reduction_sums(*args, training=True, instance=False, momentum=0.1, eps=1e-3)
    rows = _per_channel(d["x"])
    centred = (rows - rows.mean(1, keepdim=True)).abs()
    mean_sum = rows.abs().mean(1)
    var_sum = (centred * (centred + 2 * rows.abs().mean(1, keepdim=True))).mean(1)
    assert_close_sum(mean, d["x"].mean(dims), terms=terms, abs_sum=mean_sum)
    assert_close_sum(var, d["x"].var(dims, correction=0), terms=terms, abs_sum=var_sum)
    for key, value in (("y", out), ("dx", dx), ("dw", dweight), ("db", dbias)):
        if key in ref:
            assert_close_sum(value, ref[key], terms=terms, abs_sum=sums[key])


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("training", [True, False])
def test_non_contiguous_inputs_match_torch(layout: str, training: bool) -> None:
    """Strided inputs take the general reductions (no row view): same numbers as torch."""
    d = _inputs((4, 3, 5, 6), torch.float64, seed=8)
    if layout == "channels_last":
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (d["x"], d["dy"]))
    else:
        x, dy = (t.transpose(2, 3) for t in (d["x"], d["dy"]))
    args = (x, d["stats"], d["weight"], d["bias"], dy)
    kw = {"training": training, "momentum": 0.2}
    _assert_close(_run(batch_norm, *args, **kw), _run(F.batch_norm, *args, **kw), args, **kw)


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 6, 12, 12), (16, 4, 8, 8), (256, 8)])
def test_far_from_zero_float32_as_accurate_as_torch(shape: tuple[int, ...]) -> None:
    """Mean 1e4, std 1e-2 in float32: errors against float64 no larger than torch's."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1e-2 + 1e4).float()
    dy = torch.randn(shape, generator=g)
    ref = _run(F.batch_norm, x.double(), None, None, None, dy.double(), training=True)
    errors = {}
    for name, fn in (("ours", batch_norm), ("torch", F.batch_norm)):
        out = _run(fn, x, None, None, None, dy, training=True)
        errors[name] = [(out[k].double() - ref[k]).abs().max().item() for k in ("y", "dx")]
    assert errors["ours"][0] <= errors["torch"][0] + 1e-6
    assert errors["ours"][1] <= 1.5 * errors["torch"][1] + 1e-6
    assert errors["ours"][0] < 1e-5  # ours is centred on the exact mean
    traced = batchnorm.train_forward(x, None, None, 1e-5)[0]  # what torch.compile runs
    assert (traced.double() - ref["y"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("shape", [(64, 6, 12, 12), (256, 8)])
def test_atypical_first_sample_keeps_float32_accuracy(shape: tuple[int, ...]) -> None:
    """Statistics shifted by a value of the batch must not depend on that value being typical:
    first sample 0, the rest around 100 (eager and the compiled path's formulas)."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(shape, generator=g, dtype=torch.float64) + 100.0
    x[0] = 0.0
    exact = F.batch_norm(x, None, None, training=True)
    dims = [0, *range(2, len(shape))]
    in_place_out, in_place_mean, _, in_place_var = fast.normalize_in_place(
        x.float(), None, None, 1e-5
    )
    formula = batchnorm.train_forward(x.float(), None, None, 1e-5)
    for out, mean, var in ((in_place_out, in_place_mean, in_place_var), formula):
        assert (out.double() - exact).abs().max().item() < 1e-5
        # not rounding bounds of the sums (those of |x| ~ 100 would allow any variance):
        # the claim that a shift by an atypical sample keeps float32's relative accuracy
        torch.testing.assert_close(var.double(), x.var(dims, correction=0), rtol=2e-6, atol=0)
        torch.testing.assert_close(mean.double(), x.mean(dims), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_half_precision_inputs_keep_float32_statistics(dtype: torch.dtype, training: bool) -> None:
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(16, 3, 6, 6, generator=g) * 3 + 2).to(dtype)
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    stats = (torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5)
    dy = torch.randn(16, 3, 6, 6, generator=g).to(dtype)
    ours = _run(batch_norm, x, stats, w, b, dy, training=training)
    exact = _run(
        F.batch_norm,
        x.double(),
        (stats[0].double(), stats[1].double()),
        w.double(),
        b.double(),
        dy.double(),
        training=training,
    )
    assert ours["y"].dtype == dtype and ours["dx"].dtype == dtype
    assert ours["dw"].dtype == torch.float32 and ours["running_var"].dtype == torch.float32
    resolution = torch.finfo(dtype).eps
    for key in ("y", "dx"):
        scale = exact[key].abs().max().item()
        assert (ours[key].double() - exact[key]).abs().max().item() <= 2 * resolution * scale
    # float32 statistics of the half input and gradient (which the oracle sees exactly)
    args = (x, stats, w, b, dy)
    terms, sums = _reduction_sums(*args, training=training, instance=False, momentum=0.1, eps=1e-5)
    for key in ("dw", "db", "running_mean", "running_var"):
        assert_close_sum(ours[key], exact[key], terms=terms, abs_sum=sums[key], dtype=torch.float32)


def test_constant_channel_gives_finite_output_and_gradients() -> None:
    x = torch.randn(8, 3, 5, 5)
    x[:, 1] = 3.0
    x.requires_grad_()
    b = torch.tensor([0.0, 0.7, 0.0])
    rm, rv = torch.zeros(3), torch.ones(3)
    y = batch_norm(x, rm, rv, None, b, training=True)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y[:, 1], torch.full_like(y[:, 1], 0.7))
    assert rv[1].item() == pytest.approx(0.9)  # variance 0 moves the running var towards 0


# ---------------------------------------------------------------------------------------------
# Errors: the same text as torch's
# ---------------------------------------------------------------------------------------------


def _message(fn: Callable[[], object]) -> str:
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


X = torch.randn(4, 3)
BAD_CALLS: list[tuple[str, Callable[..., object], tuple[Any, ...], dict[str, Any]]] = [
    ("one value", F.batch_norm, (torch.randn(1, 3), None, None), {"training": True}),
    ("one value 3d", F.batch_norm, (torch.randn(1, 3, 1), None, None), {"training": True}),
    ("eps train", F.batch_norm, (X, None, None), {"training": True, "eps": 0.0}),
    ("eps eval", F.batch_norm, (X, torch.zeros(3), torch.ones(3)), {"eps": -1.0}),
    ("rm size", F.batch_norm, (X, torch.zeros(2), torch.ones(3)), {"training": True}),
    ("rv size", F.batch_norm, (X, torch.zeros(3), torch.ones(4)), {"training": True}),
    ("w size", F.batch_norm, (X, None, None, torch.ones(2)), {"training": True}),
    ("b size", F.batch_norm, (X, None, None, None, torch.ones(5)), {"training": True}),
    ("eval no rm", F.batch_norm, (X, None, torch.ones(3)), {}),
    ("eval no rv", F.batch_norm, (X, torch.zeros(3), None), {}),
    ("spatial", F.instance_norm, (torch.randn(2, 3, 1),), {}),
    ("no spatial", F.instance_norm, (torch.randn(2, 3),), {}),
    ("no stats", F.instance_norm, (torch.randn(2, 3, 4),), {"use_input_stats": False}),
    ("in rm size", F.instance_norm, (torch.randn(2, 3, 4), torch.zeros(2), torch.ones(3)), {}),
]
OURS = {F.batch_norm: batch_norm, F.instance_norm: instance_norm}


@pytest.mark.parametrize(
    ("case", "torch_fn", "args", "kwargs"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_errors_read_like_torch(
    case: str, torch_fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    expected = _message(lambda: torch_fn(*args, **kwargs))
    with pytest.raises(ValueError) as info:
        OURS[torch_fn](*args, **kwargs)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((torch.randn(3), None, None), ValueError, "at least 2 dimensions"),
        ((torch.arange(6).view(3, 2), None, None), TypeError, "floating-point"),
        (([[1.0, 2.0]], None, None), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors_name_the_way_out(args: tuple[Any, ...], error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        batch_norm(*args, training=True)


# ---------------------------------------------------------------------------------------------
# Empty batches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_like_torch(training: bool) -> None:
    results = []
    for fn in (batch_norm, F.batch_norm):
        x = torch.randn(0, 3, 4, requires_grad=True)
        w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
        rm, rv = torch.zeros(3), torch.ones(3)
        y = fn(x, rm, rv, w, b, training=training)
        y.sum().backward()
        results.append((y.shape, w.grad, b.grad, rm, rv))
    ours, ref = results
    assert ours[0] == ref[0] == (0, 3, 4)
    for a, c in zip(ours[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, c)


# ---------------------------------------------------------------------------------------------
# Property tests: random shapes and arguments against torch in float64
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    training=st.booleans(),
    affine=st.booleans(),
    tracked=st.booleans(),
    momentum=st.floats(0.0, 1.0),
    eps=st.floats(1e-6, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_batch_norm_matches_torch(
    n: int,
    c: int,
    spatial: list[int],
    training: bool,
    affine: bool,
    tracked: bool,
    momentum: float,
    eps: float,
    seed: int,
) -> None:
    d = _inputs((n, c, *spatial), torch.float64, seed=seed)
    tracked = tracked or not training  # evaluation needs running statistics
    args = (
        d["x"],
        d["stats"] if tracked else None,
        d["weight"] if affine else None,
        d["bias"] if affine else None,
        d["dy"],
    )
    kw = {"training": training, "momentum": momentum, "eps": eps}
    _assert_close(_run(batch_norm, *args, **kw), _run(F.batch_norm, *args, **kw), args, **kw)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(2, 4), min_size=1, max_size=3),
    affine=st.booleans(),
    tracked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_instance_norm_matches_torch(
    n: int, c: int, spatial: list[int], affine: bool, tracked: bool, seed: int
) -> None:
    d = _inputs((n, c, *spatial), torch.float64, seed=seed)
    args = (
        d["x"],
        d["stats"] if tracked else None,
        d["weight"] if affine else None,
        d["bias"] if affine else None,
        d["dy"],
    )
    _assert_close(_run(instance_norm, *args), _run(F.instance_norm, *args), args, instance=True)
