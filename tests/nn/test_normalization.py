"""normlab.nn LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm against torch.nn's.

Constructor signatures, parameters (names, shapes, dtypes, devices, initial values),
``reset_parameters``, ``extra_repr``, ``state_dict`` both ways, errors with torch's messages,
and forward/backward parity on random configurations (hypothesis, float64).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab.nn
from normlab.testing.tolerance import assert_close_sum, first_order_sums, normalization_sums

CLASSES = ["LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm"]

# (class, args, kwargs): each constructor option off its default at least once
CONSTRUCTIONS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("LayerNorm", (5,), {}),
    ("LayerNorm", ([3, 4],), {"eps": 1e-3}),
    ("LayerNorm", (torch.Size([2, 3]),), {"elementwise_affine": False}),
    ("LayerNorm", ((4,),), {"bias": False}),
    ("LayerNorm", (4, 1e-6, True, False), {}),
    ("GroupNorm", (2, 6), {}),
    ("GroupNorm", (3, 6), {"eps": 1e-3, "affine": False}),
    ("GroupNorm", (1, 4), {"bias": False}),
    ("RMSNorm", (5,), {}),
    ("RMSNorm", ([2, 3],), {"eps": 1e-6}),
    ("RMSNorm", (4,), {"elementwise_affine": False}),
    ("LocalResponseNorm", (2,), {}),
    ("LocalResponseNorm", (3, 0.5, 0.5, 2.0), {}),
]
IDS = [f"{c}{a}{k}" for c, a, k in CONSTRUCTIONS]


def _both(name: str, *args: Any, **kwargs: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    return getattr(normlab.nn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)


@pytest.mark.parametrize("name", CLASSES)
def test_constructor_signature_equals_torch(name: str) -> None:
    ours = inspect.signature(getattr(normlab.nn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
    assert getattr(normlab.nn, name).__constants__ == getattr(torch.nn, name).__constants__


@pytest.mark.parametrize("name,args,kwargs", CONSTRUCTIONS, ids=IDS)
def test_parameters_repr_and_attributes_equal_torch(name: str, args: tuple, kwargs: dict) -> None:
    ours, theirs = _both(name, *args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert ours.extra_repr() == theirs.extra_repr()
    ours_params = {k: (tuple(v.shape), v.dtype) for k, v in ours.named_parameters()}
    their_params = {k: (tuple(v.shape), v.dtype) for k, v in theirs.named_parameters()}
    assert ours_params == their_params
    for key in ("weight", "bias"):  # registered as None where torch registers None
        assert hasattr(ours, key) == hasattr(theirs, key)
        assert (getattr(ours, key, None) is None) == (getattr(theirs, key, None) is None)
    for attribute in theirs.__constants__:
        assert getattr(ours, attribute) == getattr(theirs, attribute)
    assert list(ours.named_buffers()) == list(theirs.named_buffers()) == []
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for key in sd_theirs:
        assert torch.equal(sd_ours[key], sd_theirs[key])  # ones and zeros


@pytest.mark.parametrize("name,args,kwargs", CONSTRUCTIONS[:11], ids=IDS[:11])
def test_device_and_dtype(name: str, args: tuple, kwargs: dict) -> None:
    ours, theirs = _both(name, *args, **kwargs, dtype=torch.float64, device="meta")
    assert [(k, v.dtype, v.device.type) for k, v in ours.named_parameters()] == [
        (k, v.dtype, v.device.type) for k, v in theirs.named_parameters()
    ]
    assert all(p.dtype == torch.float64 and p.is_meta for p in ours.parameters())


@pytest.mark.parametrize("name,args,kwargs", CONSTRUCTIONS[:11], ids=IDS[:11])
def test_state_dict_both_ways_and_reset(name: str, args: tuple, kwargs: dict) -> None:
    ours, theirs = _both(name, *args, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    back = getattr(torch.nn, name)(*args, **kwargs)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
        assert torch.equal(back.state_dict()[key], value)
    ours.reset_parameters()
    theirs.reset_parameters()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)


def test_load_state_dict_rejects_a_wrong_shape_like_torch() -> None:
    ours, theirs = _both("LayerNorm", 4)
    wrong = {"weight": torch.ones(5), "bias": torch.zeros(5)}
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        theirs.load_state_dict(wrong)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        ours.load_state_dict(wrong)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _messages(call: Any) -> tuple[BaseException, BaseException]:
    with pytest.raises(Exception) as theirs:
        call(torch.nn)
    with pytest.raises(type(theirs.value)) as ours:
        call(normlab.nn)
    assert isinstance(ours.value, ValueError | TypeError)
    return ours.value, theirs.value


@pytest.mark.parametrize(
    "call",
    [
        lambda nn: nn.GroupNorm(2, 3),
        lambda nn: nn.GroupNorm(4, 6),
        lambda nn: nn.LayerNorm(4)(torch.randn(2, 5)),
        lambda nn: nn.LayerNorm([2, 4])(torch.randn(3, 4)),
        lambda nn: nn.GroupNorm(2, 4)(torch.randn(4)),
        lambda nn: nn.GroupNorm(3, 3)(torch.randn(1, 3)),
        lambda nn: nn.GroupNorm(2, 4)(torch.randn(2, 6, 3)),
        lambda nn: nn.RMSNorm([3])(torch.ones(2, 3, dtype=torch.long)),
        lambda nn: nn.LocalResponseNorm(2)(torch.randn(3, 4)),
        lambda nn: nn.LayerNorm(-1),
    ],
    ids=[
        "groups don't divide",
        "groups don't divide 2",
        "layer shape",
        "layer shapes",
        "group 1-d",
        "group one value",
        "group channels",
        "rms long",
        "lrn 2-d",
        "negative shape",
    ],
)
def test_errors_like_torch(call: Any) -> None:
    ours, theirs = _messages(call)
    if not isinstance(theirs, NotImplementedError):
        assert " ".join(str(ours).split()) == " ".join(str(theirs).split())


def test_group_norm_rejects_zero_groups_clearly() -> None:
    """torch raises ZeroDivisionError ("integer modulo by zero"); ours names the argument."""
    with pytest.raises(ZeroDivisionError):
        torch.nn.GroupNorm(0, 4)
    with pytest.raises(ValueError, match=r"^num_groups must be a positive integer, got 0$"):
        normlab.nn.GroupNorm(0, 4)


# ---------------------------------------------------------------------------------------------
# Behaviour: forward and backward against torch, train == eval
# ---------------------------------------------------------------------------------------------


def _cancelling_sums(
    name: str, module: Any, x: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``normalization_sums`` of a layer, group or RMS norm module in ``x``'s shape (output,
    input gradient) and its weight's (the weight's terms summed over what shares it)."""
    weight = None if getattr(module, "weight", None) is None else module.weight.detach()
    if name in ("LayerNorm", "RMSNorm"):
        n = math.prod(module.normalized_shape)
        rows, grads = x.reshape(-1, n), g.reshape(-1, n)
        w = None if weight is None else weight.reshape(1, n)
        eps = torch.finfo(x.dtype).eps if module.eps is None else module.eps
        sums = normalization_sums(rows, grads, eps, centered=name == "LayerNorm", weight=w)
        weight_sum = sums.weight_terms.sum(0).reshape(module.normalized_shape)
    elif name == "GroupNorm":
        view = (x.shape[0] * module.num_groups, -1)
        shape = (1, x.shape[1], *[1] * (x.dim() - 2))
        w = None if weight is None else weight.view(shape).expand_as(x).reshape(view)
        sums = normalization_sums(x.reshape(view), g.reshape(view), module.eps, weight=w)
        weight_sum = sums.weight_terms.reshape(x.shape).transpose(0, 1).reshape(x.shape[1], -1)
        weight_sum = weight_sum.sum(1)
    else:
        return None
    return sums.output.reshape(x.shape), sums.grad_input.reshape(x.shape), weight_sum


def _compare_modules(name: str, args: tuple, kwargs: dict, shape: tuple, seed: int) -> None:
    torch.manual_seed(seed)
    ours, theirs = _both(
        name, *args, **kwargs, **({} if name == "LocalResponseNorm" else {"dtype": torch.float64})
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.5 * torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    x = 2 * torch.randn(shape, dtype=torch.float64)
    x_ours, x_theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    upstream = torch.randn_like(y_theirs)
    names = [key for key, _ in theirs.named_parameters()]

    def oracle(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(theirs, dict(zip(names, params, strict=True)), (x,))

    parameters = [p.detach() for _, p in theirs.named_parameters()]
    sums = first_order_sums(oracle, [x, *parameters], upstream)
    terms, output_sum, grad_sums = sums.terms, sums.output, list(sums.grads)
    extra = _cancelling_sums(name, theirs, x, upstream)
    if extra is not None:  # the normalization's terms, which cancel in the Jacobian
        terms = max(terms, x.numel())
        output_sum = output_sum + extra[0]
        grad_sums[0] = grad_sums[0] + extra[1]
        if "weight" in names:
            grad_sums[names.index("weight") + 1] += extra[2]
    assert_close_sum(y_ours, y_theirs, terms=terms, abs_sum=output_sum)
    y_ours.backward(upstream)
    y_theirs.backward(upstream)
    assert_close_sum(x_ours.grad, x_theirs.grad, terms=terms, abs_sum=grad_sums[0])
    their_params = dict(theirs.named_parameters())
    by_name = dict(zip(names, grad_sums[1:], strict=True))
    for key, p in ours.named_parameters():
        assert_close_sum(p.grad, their_params[key].grad, terms=terms, abs_sum=by_name[key])
    ours.eval()
    # not a rounding tolerance: no running statistics, so evaluation is the same computation
    torch.testing.assert_close(ours(x), y_ours.detach(), atol=0, rtol=0)


small = st.integers(1, 4)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.lists(small, max_size=2),
    normalized=st.lists(small, min_size=1, max_size=2),
    affine=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_layer_norm_module_property(
    batch: list, normalized: list, affine: bool, bias: bool, seed: int
) -> None:
    kwargs = {"elementwise_affine": affine, "bias": bias}
    _compare_modules("LayerNorm", (normalized,), kwargs, (*batch, *normalized), seed)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 4),
    groups=small,
    per_group=small,
    spatial=st.lists(small, max_size=2),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_norm_module_property(
    n: int, groups: int, per_group: int, spatial: list, affine: bool, seed: int
) -> None:
    c = groups * per_group
    _compare_modules("GroupNorm", (groups, c), {"affine": affine}, (n, c, *spatial), seed)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.lists(small, max_size=2),
    normalized=st.lists(small, min_size=1, max_size=2),
    affine=st.booleans(),
    eps=st.sampled_from([None, 1e-3]),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_module_property(
    batch: list, normalized: list, affine: bool, eps: Any, seed: int
) -> None:
    kwargs = {"elementwise_affine": affine, "eps": eps}
    _compare_modules("RMSNorm", (normalized,), kwargs, (*batch, *normalized), seed)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(small, min_size=3, max_size=4),
    size=st.integers(1, 5),
    alpha=st.sampled_from([1e-4, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_local_response_norm_module_property(
    shape: list, size: int, alpha: float, seed: int
) -> None:
    _compare_modules("LocalResponseNorm", (size, alpha), {}, tuple(shape), seed)


def test_layers_train_in_a_network_like_torch() -> None:
    """Ten SGD steps of a small net with each layer: the same losses as with torch.nn's."""

    def net(lib: Any) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding=1),
            lib.GroupNorm(2, 4),
            lib.LocalResponseNorm(3, alpha=0.1),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 5 * 5, 8),
            lib.LayerNorm(8),
            torch.nn.ReLU(),
            lib.RMSNorm(8),
            torch.nn.Linear(8, 3),
        ).double()

    torch.manual_seed(8)
    ours, theirs = net(normlab.nn), net(torch.nn)
    ours.load_state_dict(theirs.state_dict())
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs)]
    x, target = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    for _ in range(10):
        losses = []
        for model, optimiser in zip((ours, theirs), optimisers, strict=True):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-12, abs=1e-12)
    assert losses[1] < 0.9 * torch.log(torch.tensor(3.0)).item()  # it learned something


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 6, 1, 1), (3, 4, 5, 2)])
def test_group_norm_backward_of_channels_last_tensors(code_path: str, shape: tuple) -> None:
    """A channels_last input and gradient (as a conv net in that format sends them): the
    same gradients as torch.nn's, within the rounding of the sums they take."""
    ours, theirs = normlab.nn.GroupNorm(2, shape[1]).double(), torch.nn.GroupNorm(2, shape[1])
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
    theirs.double().load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64).to(memory_format=torch.channels_last)
    g = torch.randn(shape, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_()
    mine = torch.autograd.grad(ours(x), [x, ours.weight, ours.bias], g)
    reference = torch.autograd.grad(theirs(x), [x, theirs.weight, theirs.bias], g)
    # every value sums at most max(group size, N * positions) terms, each bounded by
    # |g| (1 + |xhat|) |w| rstd; xhat of standard normal data stays below sqrt(group size)
    group, samples_positions = shape[1] // 2 * shape[2] * shape[3], shape[0] * shape[2] * shape[3]
    terms = max(group, samples_positions)
    rstd = 1 / x.detach().reshape(shape[0], 2, -1).std(-1, unbiased=False).min().item()
    term = g.abs().max().item() * (1 + group**0.5) * 2.0 * max(1.0, rstd)
    for a, b in zip(mine, reference, strict=True):
        assert_close_sum(a, b, terms=terms, abs_sum=terms * term)


@pytest.mark.parametrize(
    ("ours", "theirs", "shape"),
    [
        (lambda: normlab.nn.LayerNorm(6), lambda: torch.nn.LayerNorm(6), (4, 6)),
        (lambda: normlab.nn.GroupNorm(2, 6), lambda: torch.nn.GroupNorm(2, 6), (4, 6, 5)),
    ],
    ids=["layer", "group"],
)
def test_a_parametrized_weight_is_the_one_used(ours, theirs, shape) -> None:  # type: ignore[no-untyped-def]
    """A parametrization moves ``weight`` out of the parameter dict: the module must read
    the parametrized value (here doubled), as torch.nn's does."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return 2 * weight

    mine, reference = ours().double(), theirs().double()
    for module in (mine, reference):
        with torch.no_grad():
            module.bias.fill_(0.5)
        parametrize.register_parametrization(module, "weight", Double())
    x = torch.randn(shape, dtype=torch.float64)
    expected = reference(x)
    assert_close_sum(mine(x), expected, terms=x[0].numel(), abs_sum=expected.abs().max() + 1)
