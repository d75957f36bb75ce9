"""The straightforward torch implementation of each normlab layer that ``torch.nn`` lacks.

``normlab bench layers`` times every layer of the registry against a twin: the
``torch.nn`` layer of the same name where there is one, else the plain tensor code a user
would write for the same formula (the way timm, torchvision or torchrl write it), here.
Each reference is built from *our* module: it takes a deep copy of its parameters and
buffers (same names, same order, same values) and evaluates the formula with ``torch``
operations, so both sides start from the same state.

==========================  ===============================================================
normlab class               reference formula (``x``: the input, ``(N, C, *)``)
==========================  ===============================================================
``FrozenBatchNorm2d``       ``x * s + (bias - running_mean * s)``,
                            ``s = weight / sqrt(running_var + eps)`` (torchvision)
``BatchRenorm{1,2,3}d``     ``(x - mu_B) / sigma_B * r + d``, ``r = clip(sigma_B / sigma,
                            1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``
                            without gradient (Ioffe 2017, as torchrl writes it)
``GhostBatchNorm{1,2}d``    batch norm of each chunk of ``virtual_batch_size`` samples
``FilterResponseNorm2d``    ``max(weight * x / sqrt(mean_HW(x^2) + eps) + bias, tau)``
                            (``eps + |eps_learned|`` with a learnable epsilon)
``EvoNorm2dS0``             ``x * sigmoid(v * x) / sqrt(var_group(x) + eps) * weight + bias``
``EvoNorm2dB0``             ``x / max(sqrt(var_batch + eps), v * x + sqrt(var_inst + eps))
                            * weight + bias``
``DynamicTanh``             ``weight * tanh(alpha * x) + bias``
``StdConv2d``               ``conv2d(x, (W - mean W) / sqrt(var W + eps))`` per output
                            channel over its fan-in (timm)
==========================  ===============================================================

A registry entry may bring its own: a builder with a ``reference`` attribute (a callable
``reference(module) -> nn.Module``) takes precedence over this table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Formula = Callable[[nn.Module, Tensor], Tensor]


class Reference(nn.Module):
    """``formula(state, x)`` over a deep copy ``state`` of a normlab module's parameters and
    buffers: the plain-torch twin of a layer ``torch.nn`` does not have.

    Args:
        source: our module; its parameters and buffers are copied (same names and order).
        formula: ``formula(state, x) -> y`` in plain torch operations.
        name: what the twin is called in tables (the formula's origin).
    """

    def __init__(self, source: nn.Module, formula: Formula, name: str) -> None:
        super().__init__()
        self.state = copy.deepcopy(source)
        self.formula = formula
        self.name = name

    def forward(self, input: Tensor) -> Tensor:
        return self.formula(self.state, input)

    def extra_repr(self) -> str:
        return self.name


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(1, -1, *([1] * (ndim - 2)))


def _frozen_batch_norm(m: nn.Module, x: Tensor) -> Tensor:
    scale = m.weight * (m.running_var + m.eps).rsqrt()
    shift = m.bias - m.running_mean * scale
    return x * _per_channel(scale, x.dim()) + _per_channel(shift, x.dim())


def _batch_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _batch_renorm(m: nn.Module, x: Tensor) -> Tensor:
    dims = _batch_dims(x)
    mean = x.mean(dims)
    std = (x.var(dims, unbiased=False) + m.eps).sqrt()
    with torch.no_grad():
        running_std = (m.running_var + m.eps).sqrt()
        r = (std / running_std).clamp(1 / m.rmax, m.rmax)
        d = ((mean - m.running_mean) / running_std).clamp(-m.dmax, m.dmax)
        m.running_mean += m.momentum * (mean - m.running_mean)
        m.running_var += m.momentum * (x.var(dims) - m.running_var)  # unbiased
    xhat = (x - _per_channel(mean, x.dim())) / _per_channel(std, x.dim())
    xhat = xhat * _per_channel(r, x.dim()) + _per_channel(d, x.dim())
    if m.weight is None:
        return xhat
    return xhat * _per_channel(m.weight, x.dim()) + _per_channel(m.bias, x.dim())


def _ghost_batch_norm(m: nn.Module, x: Tensor) -> Tensor:
    chunks = x.split(m.virtual_batch_size)
    return torch.cat(
        [
            F.batch_norm(
                chunk, m.running_mean, m.running_var, m.weight, m.bias, True, m.momentum, m.eps
            )
            for chunk in chunks
        ]
    )


def _filter_response_norm(m: nn.Module, x: Tensor) -> Tensor:
    nu2 = x.pow(2).mean(list(range(2, x.dim())), keepdim=True)
    learned = getattr(m, "eps_learned", None)  # timm's learnable epsilon: eps + |eps_l|
    eps = m.eps if learned is None else m.eps + learned.abs()
    y = x * (nu2 + eps).rsqrt()
    y = y * _per_channel(m.weight, x.dim()) + _per_channel(m.bias, x.dim())
    return torch.maximum(y, _per_channel(m.tau, x.dim()))


def _group_std(x: Tensor, groups: int, eps: float) -> Tensor:
    grouped = x.reshape(x.shape[0], groups, -1)
    std = (grouped.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return std.expand_as(grouped).reshape(x.shape)


def _evonorm_s0(m: nn.Module, x: Tensor) -> Tensor:
    v = _per_channel(m.v, x.dim())
    y = x * torch.sigmoid(v * x) / _group_std(x, m.groups, m.eps)
    return y * _per_channel(m.weight, x.dim()) + _per_channel(m.bias, x.dim())


def _evonorm_b0(m: nn.Module, x: Tensor) -> Tensor:
    dims, n = _batch_dims(x), x.numel() // x.shape[1]
    var = x.var(dims, unbiased=False, keepdim=True)
    with torch.no_grad():
        m.running_var += m.momentum * (var.reshape(-1) * n / (n - 1) - m.running_var)
    instance_std = (x.var(list(range(2, x.dim())), unbiased=False, keepdim=True) + m.eps).sqrt()
    denominator = torch.maximum((var + m.eps).sqrt(), _per_channel(m.v, x.dim()) * x + instance_std)
    return x / denominator * _per_channel(m.weight, x.dim()) + _per_channel(m.bias, x.dim())


def _dynamic_tanh(m: nn.Module, x: Tensor) -> Tensor:
    return m.weight * torch.tanh(m.alpha * x) + m.bias


def _std_conv(m: nn.Module, x: Tensor) -> Tensor:
    w = m.weight
    flat = w.reshape(w.shape[0], -1)
    standardized = (flat - flat.mean(1, keepdim=True)) / (
        flat.var(1, unbiased=False, keepdim=True) + m.eps
    ).sqrt()
    return F.conv2d(
        x, standardized.reshape_as(w), m.bias, m.stride, m.padding, m.dilation, m.groups
    )


# normlab class name -> (formula, where the formula's usual torch code comes from)
FORMULAS: dict[str, tuple[Formula, str]] = {
    "FrozenBatchNorm2d": (_frozen_batch_norm, "torchvision-style frozen batch norm"),
    **{
        f"BatchRenorm{d}d": (_batch_renorm, "batch renorm in torch ops (torchrl-style)")
        for d in (1, 2, 3)
    },
    **{
        f"GhostBatchNorm{d}d": (_ghost_batch_norm, "F.batch_norm per virtual batch") for d in (1, 2)
    },
    "FilterResponseNorm2d": (_filter_response_norm, "FRN + TLU in torch ops"),
    "EvoNorm2dS0": (_evonorm_s0, "EvoNorm-S0 in torch ops (timm-style)"),
    "EvoNorm2dB0": (_evonorm_b0, "EvoNorm-B0 in torch ops (timm-style)"),
    "DynamicTanh": (_dynamic_tanh, "weight * tanh(alpha * x) + bias"),
    "StdConv2d": (_std_conv, "conv2d of the standardized weight (timm-style)"),
}


def reference_for(module: nn.Module) -> nn.Module | None:
    """The plain-torch twin of ``module`` from :data:`FORMULAS`, or None if none is known.

    A wrapper of one layer (the registry's ``AsImage``, ``ChannelsLast``) gets a copy of
    itself around the reference of the layer it wraps.
    """
    entry = FORMULAS.get(type(module).__name__)
    if entry is not None:
        formula, name = entry
        return Reference(module, formula, name)
    children = list(module.named_children())
    if len(children) != 1:
        return None
    child_name, child = children[0]
    inner = reference_for(child)
    if inner is None:
        return None
    wrapper = copy.deepcopy(module)
    setattr(wrapper, child_name, inner)
    return wrapper
