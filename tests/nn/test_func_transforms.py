"""Every normlab layer under ``torch.func``, next to its ``torch.nn`` twin, in float64.

Ensembles (``stack_module_state`` + ``functional_call`` + ``vmap``, running statistics
updated per model), per-sample gradients (``vmap(grad)``), ``jacrev`` and ``jvp``, and
``vmap`` over a batch of inputs: the same numbers as torch.nn's layer given the same
state. Under a transform normlab runs its plain formula, on every code path (the
kernels' operators have no batching rule), so the tests take the ``code_path`` fixture:
whichever path is on, the transform must not reach it.

Tolerances (:mod:`normlab.testing.tolerance`): every value compared here (an output, a
gradient, a Jacobian entry, a running statistic) is built from sums over at most the
``T`` values of the input, each bounded by ``B = z^2 * (1 + max|expected|)`` with ``z``
the largest standardised input ``max|x| / std(x)`` (the products of ``xhat`` with a
gradient of that size), so two correct implementations differ by at most
``sum_tolerance(float64, T, T * B)``; a wrong formula misses by a relative O(1).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vmap

import normlab.nn as N
from normlab.testing.tolerance import assert_close_sum

DT = torch.float64
MODELS = 3  # ensemble size


@dataclass(frozen=True)
class Twin:
    """A normlab layer, its torch.nn twin (same constructor arguments) and an input shape."""

    name: str
    ours: Callable[[], nn.Module]
    theirs: Callable[[], nn.Module]
    shape: tuple[int, ...]

    def pair(self) -> tuple[nn.Module, nn.Module]:
        """Both layers in float64 with the same random state (parameters and statistics)."""
        ours, theirs = self.ours().to(DT), self.theirs().to(DT)
        _randomize(ours)
        theirs.load_state_dict(ours.state_dict())
        return ours, theirs


def _randomize(module: nn.Module) -> None:
    """Parameters around 1 / 0 and running statistics away from their initial values."""
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or name.endswith("weight"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.copy_(torch.randn_like(tensor) * 0.5)


def _stats(**kwargs: object) -> dict[str, object]:
    return {"affine": True, "track_running_stats": True, **kwargs}


TWINS = [
    Twin("BatchNorm1d", lambda: N.BatchNorm1d(3), lambda: nn.BatchNorm1d(3), (4, 3, 6)),
    Twin("BatchNorm2d", lambda: N.BatchNorm2d(3), lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)),
    Twin("BatchNorm3d", lambda: N.BatchNorm3d(2), lambda: nn.BatchNorm3d(2), (3, 2, 2, 2, 3)),
    Twin(
        "InstanceNorm1d",
        lambda: N.InstanceNorm1d(3, **_stats()),
        lambda: nn.InstanceNorm1d(3, **_stats()),
        (4, 3, 6),
    ),
    Twin(
        "InstanceNorm2d",
        lambda: N.InstanceNorm2d(3, **_stats()),
        lambda: nn.InstanceNorm2d(3, **_stats()),
        (4, 3, 3, 3),
    ),
    Twin(
        "InstanceNorm3d",
        lambda: N.InstanceNorm3d(2, **_stats()),
        lambda: nn.InstanceNorm3d(2, **_stats()),
        (3, 2, 2, 2, 3),
    ),
    Twin("LayerNorm", lambda: N.LayerNorm([3, 5]), lambda: nn.LayerNorm([3, 5]), (4, 3, 5)),
    Twin("GroupNorm", lambda: N.GroupNorm(2, 4), lambda: nn.GroupNorm(2, 4), (4, 4, 3, 3)),
    Twin("RMSNorm", lambda: N.RMSNorm([5]), lambda: nn.RMSNorm([5]), (4, 3, 5)),
    Twin(
        "LocalResponseNorm",
        lambda: N.LocalResponseNorm(3, alpha=0.5),
        lambda: nn.LocalResponseNorm(3, alpha=0.5),
        (4, 5, 3, 3),
    ),
    # one process, no process group: SyncBatchNorm is batch norm, as torch.nn's is
    Twin("SyncBatchNorm", lambda: N.SyncBatchNorm(3), lambda: nn.SyncBatchNorm(3), (4, 3, 3, 3)),
]
STATEFUL = [twin for twin in TWINS if twin.name != "LocalResponseNorm"]
WITH_PARAMETERS = STATEFUL
ids = [twin.name for twin in TWINS]


def _assert_same(ours: Tensor, theirs: Tensor, x: Tensor) -> None:
    """``ours`` equals ``theirs`` to the rounding bound of the module docstring."""
    terms = x.numel()
    z = (x.abs().max() / x.std()).item()
    bound = z * z * (1.0 + theirs.abs().max().item())
    assert_close_sum(ours, theirs, terms=terms, abs_sum=terms * bound, dtype=DT)


def _input(twin: Twin) -> Tensor:
    return torch.randn(twin.shape, dtype=DT) * 2 + 0.5


def _ensemble(twin: Twin, which: str, x: Tensor, train: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """``MODELS`` layers with the same seeded random states, run on ``x`` under ``vmap``;
    the output ``(MODELS, *x.shape)`` and the stacked buffers after the call."""
    torch.manual_seed(1234)
    models = []
    for _ in range(MODELS):
        ours, theirs = twin.pair()
        models.append((ours if which == "ours" else theirs).train(train))
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def run(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(skeleton, (p, b), (x,))

    return vmap(run, in_dims=(0, 0, None))(params, buffers, x), buffers


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("twin", STATEFUL, ids=[t.name for t in STATEFUL])
def test_ensembles_of_stacked_modules_match_torch(code_path: str, twin: Twin, train: bool) -> None:
    """``vmap`` over modules stacked by ``stack_module_state``: each model's output and
    running statistics (updated per model in training) are torch.nn's."""
    x = _input(twin)
    y_ours, buffers_ours = _ensemble(twin, "ours", x, train)
    y_theirs, buffers_theirs = _ensemble(twin, "theirs", x, train)
    _assert_same(y_ours, y_theirs, x)
    assert buffers_ours.keys() == buffers_theirs.keys()
    for name, theirs in buffers_theirs.items():
        if name == "num_batches_tracked":
            assert torch.equal(buffers_ours[name], theirs)
        else:
            _assert_same(buffers_ours[name], theirs, x)
    if train and "running_mean" in buffers_theirs:  # the models' statistics moved apart
        assert not torch.equal(buffers_ours["running_mean"][0], buffers_ours["running_mean"][1])


def _per_sample_case(module: nn.Module) -> nn.Module:
    """Layers with running statistics in evaluation (one sample cannot update the batch's
    buffers in place under ``vmap``: torch.func refuses it for torch.nn's layers too), the
    others in training."""
    return module.train(not list(module.buffers()))


@pytest.mark.parametrize("twin", WITH_PARAMETERS, ids=[t.name for t in WITH_PARAMETERS])
def test_per_sample_gradients_match_torch(code_path: str, twin: Twin) -> None:
    """``vmap(grad)`` over the samples: one gradient of the parameters per sample."""
    x = _input(twin)
    cotangent = torch.randn(twin.shape[1:], dtype=DT)
    grads = {}
    for which, module in zip(("ours", "theirs"), twin.pair(), strict=True):
        module = _per_sample_case(module)
        params = {k: v.detach() for k, v in module.named_parameters()}

        def loss(p: dict[str, Tensor], sample: Tensor, module: nn.Module = module) -> Tensor:
            out = functional_call(module, p, (sample.unsqueeze(0),))
            return (out.squeeze(0) * cotangent).sum()

        grads[which] = vmap(grad(loss), in_dims=(None, 0))(params, x)
    assert grads["ours"].keys() == grads["theirs"].keys() and grads["theirs"]
    for name, theirs in grads["theirs"].items():
        assert theirs.shape[0] == x.shape[0]
        _assert_same(grads["ours"][name], theirs, x)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("twin", TWINS, ids=ids)
def test_jacrev_matches_torch(code_path: str, twin: Twin, train: bool) -> None:
    """The full Jacobian of the output in the input, the buffers passed to the function
    (as torch.func wants of a module that updates them); they move as torch.nn's do."""
    x = _input(twin)
    results = {}
    for which, module in zip(("ours", "theirs"), twin.pair(), strict=True):
        module.train(train)
        buffers = {k: v.clone() for k, v in module.named_buffers()}

        def run(x: Tensor, b: dict[str, Tensor], module: nn.Module = module) -> Tensor:
            return functional_call(module, b, (x,))

        results[which] = (jacrev(run)(x, buffers), buffers)
    jacobian, buffers = results["ours"]
    assert jacobian.shape == (*x.shape, *x.shape)
    _assert_same(jacobian, results["theirs"][0], x)
    for name, theirs in results["theirs"][1].items():
        _assert_same(buffers[name].double(), theirs.double(), x)


@pytest.mark.parametrize("twin", TWINS, ids=ids)
def test_jvp_matches_torch(code_path: str, twin: Twin) -> None:
    """Forward mode: the output and its directional derivative, in evaluation and in
    training without running statistics (torch.func refuses to update captured buffers,
    for torch.nn's layers as for ours)."""
    x, direction = _input(twin), torch.randn(twin.shape, dtype=DT)
    for train in (False, True):
        results = []
        modules = twin.pair()
        for module in modules:
            module.train(train)
            if train and getattr(module, "track_running_stats", False):
                module.track_running_stats = False
            results.append(jvp(module, (x,), (direction,)))
        (y_ours, t_ours), (y_theirs, t_theirs) = results
        _assert_same(y_ours, y_theirs, x)
        _assert_same(t_ours, t_theirs, x)
        for ours, theirs in zip(modules[0].buffers(), modules[1].buffers(), strict=True):
            _assert_same(ours.double(), theirs.double(), x)  # instance norm's still move


@pytest.mark.parametrize("twin", TWINS, ids=ids)
def test_vmap_over_batches_of_inputs_matches_torch(code_path: str, twin: Twin) -> None:
    """``vmap`` of one layer over a leading dimension of inputs: each slice normalised on
    its own, as torch.nn's layer does."""
    xs = torch.stack([_input(twin) for _ in range(MODELS)])
    ours, theirs = (module.eval() for module in twin.pair())
    _assert_same(vmap(ours)(xs), vmap(theirs)(xs), xs)
    if not list(ours.buffers()):  # no running statistics: training mode is the same call
        ours.train()
        theirs.train()
        _assert_same(vmap(ours)(xs), vmap(theirs)(xs), xs)


# Layers torch.nn lacks: the oracle is the same layer run eagerly, one model or one sample
# at a time (its eager path is normlab's fast path, the transforms run the plain formula).
BEYOND_TORCH = {
    "BatchRenorm2d": (lambda: N.BatchRenorm2d(3), (4, 3, 3, 3)),
    "GhostBatchNorm2d": (lambda: N.GhostBatchNorm2d(3, virtual_batch_size=2), (4, 3, 3, 3)),
    "FrozenBatchNorm2d": (lambda: N.FrozenBatchNorm2d(3), (4, 3, 3, 3)),
    "FilterResponseNorm2d": (lambda: N.FilterResponseNorm2d(3), (4, 3, 3, 3)),
    "EvoNorm2dB0": (lambda: N.EvoNorm2dB0(4), (4, 4, 3, 3)),
    "EvoNorm2dS0": (lambda: N.EvoNorm2dS0(4, groups=2), (4, 4, 3, 3)),
    "DynamicTanh": (lambda: N.DynamicTanh([5]), (4, 3, 5)),
    "StdConv2d": (lambda: N.StdConv2d(3, 4, 3), (4, 3, 5, 5)),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(BEYOND_TORCH))
def test_layers_beyond_torch_in_ensembles_match_their_eager_runs(
    code_path: str, name: str, train: bool
) -> None:
    make, shape = BEYOND_TORCH[name]
    x = torch.randn(shape, dtype=DT) * 2 + 0.5
    models = []
    for _ in range(MODELS):
        module = make().to(DT).train(train)
        _randomize(module)
        models.append(module)
    eager = [copy.deepcopy(module) for module in models]
    expected = torch.stack([module(x) for module in eager])
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def run(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(skeleton, (p, b), (x,))

    _assert_same(vmap(run, in_dims=(0, 0, None))(params, buffers, x), expected.detach(), x)
    for key, stacked in buffers.items():
        one_by_one = torch.stack([dict(module.named_buffers())[key] for module in eager])
        _assert_same(stacked.double(), one_by_one.double(), x)


@pytest.mark.parametrize("name", sorted(BEYOND_TORCH))
def test_layers_beyond_torch_jacrev_matches_autograd(code_path: str, name: str) -> None:
    """``jacrev`` in the input equals autograd's Jacobian of the eager layer (training)."""
    make, shape = BEYOND_TORCH[name]
    x = torch.randn(shape, dtype=DT) * 2 + 0.5
    module = make().to(DT).train()
    _randomize(module)
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    jacobian = jacrev(lambda x, b: functional_call(module, b, (x,)))(x, buffers)
    eager = copy.deepcopy(module)
    expected = torch.autograd.functional.jacobian(lambda x: eager(x), x)
    _assert_same(jacobian, expected, x)
