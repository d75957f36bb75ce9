"""The layers torch.nn lacks under torch.func, as the others: an ensemble of three models
stacked with stack_module_state under vmap (outputs and running statistics per model),
per-sample gradients with vmap(grad), and jacrev/jvp, each against a plain loop in float64.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vmap

import normlab.nn as ours
from normlab.testing.tolerance import assert_close_sum

F64 = torch.float64

# name -> (factory, input shape); inputs have a batch of 6 samples
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "FrozenBatchNorm2d": (lambda: ours.FrozenBatchNorm2d(3, dtype=F64), (6, 3, 4, 4)),
    "BatchRenorm2d": (lambda: ours.BatchRenorm2d(3, momentum=0.2, dtype=F64), (6, 3, 4, 4)),
    "BatchRenorm1d": (lambda: ours.BatchRenorm1d(3, rmax=1.2, dmax=0.1, dtype=F64), (6, 3)),
    "GhostBatchNorm1d": (lambda: ours.GhostBatchNorm1d(3, 4, dtype=F64), (6, 3, 5)),
    "GhostBatchNorm2d": (lambda: ours.GhostBatchNorm2d(3, 2, dtype=F64), (6, 3, 4, 4)),
    "StdConv2d": (lambda: ours.StdConv2d(3, 4, 3, dtype=F64), (6, 3, 5, 5)),
    "FilterResponseNorm2d": (
        lambda: ours.FilterResponseNorm2d(3, learnable_eps=True, dtype=F64),
        (6, 3, 4, 4),
    ),
    "EvoNorm2dB0": (lambda: ours.EvoNorm2dB0(3, dtype=F64), (6, 3, 4, 4)),
    "EvoNorm2dS0": (lambda: ours.EvoNorm2dS0(4, groups=2, dtype=F64), (6, 4, 4, 4)),
    "DynamicTanh": (lambda: ours.DynamicTanh(5, dtype=F64), (6, 2, 5)),
}
BATCH_DEPENDENT = {
    "BatchRenorm2d",
    "BatchRenorm1d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "EvoNorm2dB0",
}


def _model(name: str) -> nn.Module:
    """The layer with every parameter and float buffer off its initial value."""
    module = LAYERS[name][0]()
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                positive = key.endswith(("running_var", "weight")) and "conv" not in name.lower()
                noise = 0.3 * torch.randn_like(tensor)
                tensor.copy_(1 + noise if positive else noise)
    return module


def _close(actual: torch.Tensor, expected: torch.Tensor, terms: int = 200) -> None:
    assert_close_sum(actual, expected, terms=terms, abs_sum=expected.abs() * 10 + 10)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_ensemble_under_vmap_equals_a_loop(name: str, training: bool) -> None:
    models = [_model(name).train(training) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(LAYERS[name][1], dtype=F64)

    def call(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    stacked = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    for i, model in enumerate(models):
        _close(stacked[i], model(x))
        for key, buffer in model.named_buffers():
            if buffer.is_floating_point():
                _close(buffers[key][i], buffer)
            else:
                assert torch.equal(buffers[key][i], buffer), key


@pytest.mark.parametrize("name", sorted(set(LAYERS) - BATCH_DEPENDENT - {"FrozenBatchNorm2d"}))
def test_per_sample_gradients_equal_a_loop(name: str) -> None:
    """vmap(grad) over the samples of a batch-independent layer with parameters (a frozen
    batch norm has none): each sample's gradients as if it were a batch of one."""
    model = _model(name)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = torch.randn(LAYERS[name][1], dtype=F64)

    def loss(p: dict, sample: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (sample.unsqueeze(0),)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        model.zero_grad()
        model(x[i : i + 1]).square().sum().backward()
        for key, parameter in model.named_parameters():
            _close(per_sample[key][i], parameter.grad)


@pytest.mark.parametrize("name", list(LAYERS))
def test_jacrev_and_jvp_equal_autograd(name: str) -> None:
    model = _model(name).eval()
    x = torch.randn(LAYERS[name][1], dtype=F64)[:2]
    jacobian = jacrev(model)(x)
    flat = jacobian.reshape(model(x).numel(), x.numel())
    rows = []
    for k in range(flat.shape[0]):
        xk = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xk).flatten()[k], xk)
        rows.append(g.flatten())
    _close(flat, torch.stack(rows))
    tangent = torch.randn_like(x)
    _, out_tangent = jvp(model, (x,), (tangent,))
    _close(out_tangent.flatten(), flat @ tangent.flatten())


@pytest.mark.parametrize("name", list(LAYERS))
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_state(name: str) -> None:
    """As torch.nn's batch norm: no error, no warning, running statistics untouched."""
    model = _model(name).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn((0, *LAYERS[name][1][1:]), dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model(x)
        y.sum().backward()
    assert y.shape[0] == 0 and y.dtype == F64
    for key, value in model.state_dict().items():
        if key != "num_batches_tracked":
            assert torch.equal(value, before[key]), key
