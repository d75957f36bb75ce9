"""Oracles for the layers ``torch.nn`` lacks: each formula written directly in torch operations.

Every class here has the name, constructor, parameters, buffers and ``state_dict`` keys of
the normlab layer it checks, and computes the published formula the plainest way: each
statistic by its definition (``mean``, ``var``), gradients by autograd, no fused paths,
no shortcuts. :mod:`normlab.testing.parity` builds one next to the normlab layer, loads the
same ``state_dict`` and compares outputs, gradients and buffers step by step; the tests run
them in float64 as the exact answer.

=========================  ==========================================================
class                      formula (``x``: the input, ``(N, C, *)``)
=========================  ==========================================================
``FrozenBatchNorm2d``      ``torch.nn.functional.batch_norm(x, ..., training=False)``:
                           ``torch.nn.BatchNorm2d`` in evaluation mode
``BatchRenorm{1,2,3}d``     Ioffe (2017): ``(x - mu_B) / sigma_B * r + d``, ``r`` and
                           ``d`` clipped and detached; running statistics as batch
                           norm's; a warm-up moves the limits linearly
``GhostBatchNorm{1,2}d``   ``F.batch_norm`` of each ``x.split(V)`` chunk with the shared
                           affine; running statistics once per call from the chunks'
                           size-weighted mean and unbiased variance
``StdConv2d``              ``conv2d(x, batch_norm(W.view(1, O, -1)).view_as(W))``: the
                           weight standardized by ``torch.nn.functional.batch_norm``
``FilterResponseNorm2d``   Singh & Krishnan (2020): ``max(weight * x / sqrt(mean_HW(x^2)
                           + eps) + bias, tau)``, ``eps + |eps_learned|`` when learned
``EvoNorm2dB0``            Liu et al. (2020): ``x / max(sqrt(var_batch + eps), v * x +
                           sqrt(var_instance + eps)) * weight + bias``
``EvoNorm2dS0``            ``x * sigmoid(v * x) / sqrt(var_group + eps) * weight + bias``
``DynamicTanh``            Zhu et al. (2025): ``weight * tanh(alpha * x) + bias``
=========================  ==========================================================
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d``'s evaluation-mode computation over four buffers."""

    # FrozenBatchNorm2d's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _channel(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *[1] * (ndim - 2))


def _momentum(module: nn.Module) -> float:
    """Count the batch; this step's weight of the batch (cumulative for ``momentum=None``)."""
    module.num_batches_tracked += 1
    if module.momentum is None:
        return 1.0 / float(module.num_batches_tracked)
    return float(module.momentum)


class _Affine(nn.Module):
    """``weight``/``bias`` parameters (ones and zeros) when ``affine``, else ``None``."""

    def _affine(self, c: int, affine: bool, bias: bool, factory: dict[str, Any]) -> None:
        self.weight = nn.Parameter(torch.ones(c, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(c, **factory)) if affine and bias else None

    def _apply_affine(self, xhat: Tensor) -> Tensor:
        if self.weight is not None:
            xhat = xhat * _channel(self.weight, xhat.dim())
        if self.bias is not None:
            xhat = xhat + _channel(self.bias, xhat.dim())
        return xhat


class _BatchRenorm(_Affine):
    """Ioffe (2017), Algorithm 1, with ``torch.nn``'s running-statistics conventions."""

    # BatchRenorm1d's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.01,
        affine: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        warmup: Any = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.eps, self.momentum, self.rmax, self.dmax, self.warmup = (
            eps,
            momentum,
            rmax,
            dmax,
            warmup,
        )
        self._affine(num_features, affine, bias, factory)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def _limits(self) -> tuple[float, float]:
        """The warm-up: (1, 0) up to ``start``, then linear to (rmax, dmax)."""
        if self.warmup is None:
            return self.rmax, self.dmax
        step = int(self.num_batches_tracked) - 1
        w = self.warmup

        def ramp(end: int) -> float:
            if step <= w.start:
                return 0.0
            return 1.0 if step >= end else (step - w.start) / (end - w.start)

        return 1 + (self.rmax - 1) * ramp(w.rmax_at), self.dmax * ramp(w.dmax_at)

    def forward(self, x: Tensor) -> Tensor:
        ndim, dims = x.dim(), [0, *range(2, x.dim())]
        if not self.training:
            xhat = (x - _channel(self.running_mean, ndim)) / _channel(
                (self.running_var + self.eps).sqrt(), ndim
            )
            return self._apply_affine(xhat)
        factor = _momentum(self)
        rmax, dmax = self._limits()
        mean_b = x.mean(dims)
        var_b = x.var(dims, correction=0)
        sigma_b = (var_b + self.eps).sqrt()
        sigma = (self.running_var + self.eps).sqrt()
        r = (sigma_b / sigma).detach().clamp(1 / rmax, rmax)
        d = ((mean_b - self.running_mean) / sigma).detach().clamp(-dmax, dmax)
        xhat = (x - _channel(mean_b, ndim)) / _channel(sigma_b, ndim) * _channel(
            r, ndim
        ) + _channel(d, ndim)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(factor * mean_b)
            self.running_var.mul_(1 - factor).add_(factor * var_b * n / (n - 1))
        return self._apply_affine(xhat)


class BatchRenorm1d(_BatchRenorm):
    """Batch renorm of ``(N, C)`` or ``(N, C, L)``."""


class BatchRenorm2d(_BatchRenorm):
    """Batch renorm of ``(N, C, H, W)``."""


class BatchRenorm3d(_BatchRenorm):
    """Batch renorm of ``(N, C, D, H, W)``."""


class _GhostBatchNorm(_Affine):
    """Hoffer et al. (2017): ``torch.nn.functional.batch_norm`` per virtual batch."""

    # GhostBatchNorm1d's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.virtual_batch_size, self.eps, self.momentum = virtual_batch_size, eps, momentum
        self._affine(num_features, affine, bias, factory)
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and self.track_running_stats:
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            )
        chunks = x.split(self.virtual_batch_size)
        y = torch.cat(
            [
                F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                for c in chunks
            ]
        )
        if self.training and self.track_running_stats:
            factor = _momentum(self)
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                mean = sum(c.shape[0] * c.mean(dims) for c in chunks) / x.shape[0]
                var = sum(c.shape[0] * c.var(dims) for c in chunks) / x.shape[0]
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                self.running_var.mul_(1 - factor).add_(factor * var)
        return y


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost batch norm of ``(N, C)`` or ``(N, C, L)``."""


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost batch norm of ``(N, C, H, W)``."""


class StdConv2d(nn.Conv2d):
    """Weight standardization (Qiao et al. 2019) as batch norm of the weight seen as
    ``(1, O, fan_in)``: per output channel, biased variance, ``eps`` inside the root."""

    # StdConv2d's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        eps: float = 1e-6,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        o = self.weight.shape[0]
        flat = self.weight.reshape(1, o, -1)
        standardized = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps)
        return self._conv_forward(x, standardized.reshape_as(self.weight), self.bias)


class FilterResponseNorm2d(nn.Module):
    """FRN and TLU as the paper writes them."""

    # FilterResponseNorm2d's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.tau = nn.Parameter(torch.zeros(num_features, **factory))
        self.eps_learned = (
            nn.Parameter(torch.full((1,), 1e-4, **factory)) if learnable_eps else None
        )

    def forward(self, x: Tensor) -> Tensor:
        eps = self.eps if self.eps_learned is None else self.eps + self.eps_learned.abs()
        nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
        y = x / torch.sqrt(nu2 + eps)
        y = _channel(self.weight, 4) * y + _channel(self.bias, 4)
        return torch.max(y, _channel(self.tau, 4))


class _EvoNorm(nn.Module):
    def __init__(self, num_features: int, eps: float, factory: dict[str, Any]) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.v = nn.Parameter(torch.ones(num_features, **factory))


class EvoNorm2dB0(_EvoNorm):
    """EvoNorm-B0 as the paper writes it; running variance as batch norm's."""

    # EvoNorm2dB0's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(num_features, eps, factory)
        self.momentum = momentum
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                self.running_var.copy_(
                    (1 - self.momentum) * self.running_var
                    + self.momentum * var.reshape(-1) * n / (n - 1)
                )
        else:
            var = _channel(self.running_var, 4)
        instance = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + self.eps)
        denominator = torch.max(torch.sqrt(var + self.eps), _channel(self.v, 4) * x + instance)
        return x / denominator * _channel(self.weight, 4) + _channel(self.bias, 4)


class EvoNorm2dS0(_EvoNorm):
    """EvoNorm-S0 as the paper writes it."""

    # EvoNorm2dS0's signature again, on purpose: an oracle is independent of normlab.nn.
    def __init__(
        self,
        num_features: int,
        groups: int = 32,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, {"device": device, "dtype": dtype})
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, c // self.groups, h, w)
        std = torch.sqrt(grouped.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + self.eps)
        std = std.expand_as(grouped).reshape(n, c, h, w)
        y = x * torch.sigmoid(_channel(self.v, 4) * x) / std
        return y * _channel(self.weight, 4) + _channel(self.bias, 4)


class DynamicTanh(nn.Module):
    """Dynamic Tanh as the paper writes it."""

    def __init__(
        self,
        normalized_shape: Any,
        alpha_init_value: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.full((1,), alpha_init_value, **factory))
        self.weight = nn.Parameter(torch.ones(normalized_shape, **factory))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **factory))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias
