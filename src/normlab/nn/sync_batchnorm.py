"""``SyncBatchNorm`` and ``convert_sync_batchnorm``: batch norm over every process, on any device.

``torch.nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be
on GPU"), so it cannot train on gloo. This one runs wherever ``torch.distributed`` does
(gloo on CPU, NCCL on GPU): the maths is :mod:`normlab.functional.sync` (one
``all_gather`` of per-rank count/mean/M2 combined with Chan's formula; one ``all_reduce``
of two per-channel gradient sums). The bookkeeping (momentum, ``num_batches_tracked``,
train/eval) is :class:`normlab.nn.batchnorm._BatchNorm`'s, shared with ``BatchNorm2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from normlab.functional.sync_batchnorm import SyncBatchNormFunction
from normlab.nn._base import document
from normlab.nn.batchnorm import _BatchNorm


@document(affine="``True``", track="``True``")
class SyncBatchNorm(_BatchNorm):
    r"""Batch normalization whose statistics span every process of a group.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma + \beta

    In training, mean and (biased) variance are per channel over the batch and spatial
    dimensions of the inputs of *all* ranks of ``process_group`` together, as if their
    batches were concatenated; ranks may hold different batch sizes, including 0. The
    running variance stores the unbiased global variance. Every rank of the group must call
    the layer the same number of times. The layer is plain batch norm (no communication)
    when ``torch.distributed`` is not initialised, when the group has one rank, and in
    evaluation mode, where the running statistics are used.

    {momentum_note}

    Args:
        {args}
        process_group: the ``torch.distributed`` group to synchronise over (positional,
            after ``track_running_stats``, as in ``torch.nn``). Default: the whole world.

    Shape:
        - Input: :math:`(N, C, *)`, at least 2D.
        - Output: same shape as the input.

    Example:
        >>> model = convert_sync_batchnorm(LeNet())   # before wrapping in DDP
        >>> model = torch.nn.parallel.DistributedDataParallel(model)
        >>> m = SyncBatchNorm(16)
        >>> y = m(torch.randn(8, 16, 5, 5))  # not distributed: plain batch norm
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def _sync_group(self) -> Any | None:
        """The group to synchronise over now, or None for plain batch norm.

        None when not training (eval never communicates), or when ``torch.distributed`` is
        not initialised, or when the group has a single rank.
        """
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        group = self._sync_group()
        if group is None:  # plain batch norm
            return super().forward(input)
        self._check_input(input)
        factor = self._exponential_average_factor()
        running_mean, running_var = self._running_stats()
        output: Tensor = SyncBatchNormFunction.apply(
            input, self.weight, self.bias, running_mean, running_var, self.eps, factor, group
        )
        return output

    @classmethod
    def convert_sync_batchnorm(
        cls, module: nn.Module, process_group: Any | None = None
    ) -> nn.Module:
        """Replace every batch norm in ``module`` by a :class:`SyncBatchNorm`; see
        :func:`convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module, process_group)


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm | _BatchNorm)


def convert_sync_batchnorm(module: nn.Module, process_group: Any | None = None) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` (torch.nn's or normlab's) by a :class:`SyncBatchNorm`.

    Call it before wrapping the model in ``DistributedDataParallel``. The new layers take
    over the old ones' parameter objects (so ``requires_grad`` and optimizer references
    stay valid), buffers (running statistics, ``num_batches_tracked``), hyper-parameters
    (``eps``, ``momentum``, ``affine``, ``track_running_stats``, ``bias``) and
    ``training`` flag. Other modules, including instance norms, are left as they are.

    Args:
        module: a model, or a single batch norm layer.
        process_group: the group the new layers synchronise over. Default: the world.

    Returns:
        ``module`` with its batch norms replaced in place, or a new ``SyncBatchNorm`` when
        ``module`` itself is a batch norm.

    Example:
        >>> model = convert_sync_batchnorm(LeNet(norm="torch-batch"))
        >>> sum(isinstance(m, SyncBatchNorm) for m in model.modules())
        4
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_sync_batchnorm expects an nn.Module, got {type(module).__name__}")
    output = module
    if _is_batch_norm(module):
        reference = module.running_mean if module.running_mean is not None else module.weight
        factory: dict[str, Any] = {}
        if isinstance(reference, Tensor):
            factory = {"device": reference.device, "dtype": reference.dtype}
        output = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            bias=module.bias is not None,
            **factory,
        )
        if module.affine:
            output.weight = module.weight
            output.bias = module.bias
        output.running_mean = module.running_mean
        output.running_var = module.running_var
        output.num_batches_tracked = module.num_batches_tracked
        output.training = module.training
        if hasattr(module, "qconfig"):
            output.qconfig = module.qconfig
    for name, child in module.named_children():
        output.add_module(name, convert_sync_batchnorm(child, process_group))
    return output
