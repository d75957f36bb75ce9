"""The course tutorial's batch norm, with its names, corrected.

The course tutorial (tutorial 12, "Batch Normalization", a notebook) builds batch
norm from scratch as ``batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum)``
plus a ``BatchNorm(num_features, num_dims)`` module, puts it into LeNet
(``BNLeNetScratch``), compares with ``torch.nn`` (``BNLeNet``) and prints the learned
gamma and beta (``print_bn_parameters``). This module keeps those names and the plain
teaching maths, so a reader can follow along, and fixes the defects of the original:

1. **Train/eval decided by grad mode.** The original normalised with the moving
   statistics whenever ``torch.is_grad_enabled()`` was false, so ``model.eval()`` did
   nothing and a training forward under ``torch.no_grad()`` silently used the moving
   statistics. Fix: an explicit ``training`` argument; ``BatchNorm`` passes
   ``self.training`` (``model.train()`` / ``model.eval()``).
2. **Moving averages kept every step's autograd graph alive.** ``moving_mean = (1 -
   momentum) * moving_mean + momentum * mean`` with a ``mean`` that requires grad chains
   each step's graph (and the activation-sized ``(X - mean) ** 2`` it saved) onto the
   next: memory grew with every training step (the growth on LeNet is in
   ``docs/results/tutorial.md``). Fix: the moving averages are computed under
   ``torch.no_grad()`` and copied into the buffers in place, so memory stays flat.
3. **Moving statistics were plain attributes**: missing from ``state_dict`` (a saved model
   lost them), not moved by ``model.to(device)`` (the forward moved them by hand on every
   call). Fix: ``register_buffer``, so they are saved, loaded and moved with the model.
4. **Biased moving variance.** The moving variance averaged the biased batch variance;
   ``torch.nn`` stores the unbiased one, ``var * m / (m - 1)`` for ``m`` values per
   channel. Fix: the unbiased variance goes into the moving average (the batch itself is
   still normalised with the biased one, as in the paper and in ``torch.nn``).
5. **The training loop** printed the loss of each epoch's *last batch* as "the" loss and
   moved the model to a global ``device``. Fix: :func:`train_and_evaluate` prints the
   mean loss over the epoch's examples, takes the device as an argument, and returns the
   test accuracy.
6. **No input checks.** Any input that was not 2D was treated as 4D, and a batch of one
   gave a zero variance. Fix: ``ValueError`` naming the expected shapes (no ``assert``),
   and the error ``torch.nn`` gives for one value per channel in training.

The maths here is deliberately the readable one. The fast, numerically careful version is
:func:`normlab.functional.batch_norm` (closed-form backward) and
:class:`normlab.nn.BatchNorm2d`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import Tensor, nn

from normlab.models.lenet import LeNet

__all__ = [
    "BNLeNet",
    "BNLeNetScratch",
    "BNParameters",
    "BatchNorm",
    "batch_norm",
    "bn_parameters",
    "format_bn_parameters",
    "print_bn_parameters",
    "train_and_evaluate",
]

_VALID_DIMS = (2, 4)  # (N, C) after a linear layer, (N, C, H, W) after a convolution


def _check_dims(num_dims: int, what: str) -> None:
    if num_dims not in _VALID_DIMS:
        raise ValueError(
            f"{what}: batch norm here takes 2D (N, C) or 4D (N, C, H, W) input, got "
            f"{num_dims}D; use num_dims=2 after nn.Linear and num_dims=4 after nn.Conv2d"
        )


def batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float = 1e-5,
    momentum: float = 0.1,
    training: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Batch norm, the tutorial's way: returns ``(Y, moving_mean, moving_var)``.

    Training (statistics of this batch, per channel, over the batch and the pixels)::

        mean = mean(X)                       var = mean((X - mean)^2)     (biased)
        Y    = gamma * (X - mean) / sqrt(var + eps) + beta
        moving_mean <- (1 - momentum) * moving_mean + momentum * mean
        moving_var  <- (1 - momentum) * moving_var  + momentum * var * m / (m - 1)

    with ``m`` values per channel (``m / (m - 1)`` makes the stored variance unbiased, as
    in ``torch.nn``). Evaluation uses the moving statistics and returns them unchanged.
    The new moving statistics carry no autograd graph.

    Args:
        X: ``(N, C)`` or ``(N, C, H, W)``.
        gamma, beta: scale and shift, shaped ``(1, C)`` or ``(1, C, 1, 1)``.
        moving_mean, moving_var: moving statistics, same shape as ``gamma``.
        eps: added to the variance. Default: 1e-5.
        momentum: weight of this batch in the moving statistics. Default: 0.1.
        training: batch statistics (and updated moving ones) if ``True``, else the moving
            statistics. Decided by this argument only, never by grad mode. Default: ``True``.

    Returns:
        ``Y`` (same shape as ``X``) and the new ``moving_mean``, ``moving_var``.

    Raises:
        ValueError: input not 2D/4D, statistics of the wrong size, one value per channel
            in training, ``eps <= 0``.

    Example:
        >>> X = torch.randn(16, 3, 8, 8)
        >>> ones, zeros = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
        >>> Y, mm, mv = batch_norm(X, ones, zeros, zeros, ones, training=True)
        >>> mm.requires_grad
        False
    """
    _check_dims(X.dim(), "batch_norm")
    channels = X.shape[1]
    for name, stat in (("moving_mean", moving_mean), ("moving_var", moving_var)):
        if stat.numel() != channels:
            raise ValueError(
                f"batch_norm: {name} has {stat.numel()} elements but X has {channels} "
                "channels; create it with the shape of gamma"
            )
    if eps <= 0:
        raise ValueError(f"batch_norm: eps must be positive, got {eps}")
    if not training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var

    dims = (0,) if X.dim() == 2 else (0, 2, 3)  # per channel: over the batch (and pixels)
    m = X.numel() // channels  # values per channel
    if m < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {X.size()}"
        )
    mean = X.mean(dim=dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: normalises this batch
    X_hat = (X - mean) / torch.sqrt(var + eps)
    with torch.no_grad():  # bookkeeping, not part of the model's computation
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var * m / (m - 1)
    return gamma * X_hat + beta, moving_mean, moving_var


class BatchNorm(nn.Module):
    """The tutorial's batch norm layer, with moving statistics as buffers.

    Normalises each channel with the batch statistics in training mode and with the moving
    statistics in evaluation mode (``model.train()`` / ``model.eval()``); see
    :func:`batch_norm` for the formulas.

    Args:
        num_features: C, the number of channels (after a conv) or features (after a linear).
        num_dims: 4 for ``(N, C, H, W)`` input, 2 for ``(N, C)``.
        eps: added to the variance. Default: 1e-5.
        momentum: weight of each batch in the moving statistics. Default: 0.1.

    Shape:
        input ``(N, C, H, W)`` (``num_dims=4``) or ``(N, C)`` (``num_dims=2``); output the same.

    Attributes:
        gamma, beta: learnable scale (init 1) and shift (init 0), ``(1, C, 1, 1)`` or ``(1, C)``.
        moving_mean, moving_var: buffers (in ``state_dict``, moved by ``.to()``), init 0 and 1.

    Example:
        >>> bn = BatchNorm(6, num_dims=4)
        >>> Y = bn(torch.randn(8, 6, 12, 12))
        >>> sorted(bn.state_dict())
        ['beta', 'gamma', 'moving_mean', 'moving_var']
    """

    moving_mean: Tensor
    moving_var: Tensor

    def __init__(
        self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        _check_dims(num_dims, "BatchNorm")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"BatchNorm: num_features must be a positive integer, got {num_features!r}"
            )
        self.num_features, self.num_dims, self.eps, self.momentum = (
            num_features,
            num_dims,
            eps,
            momentum,
        )
        shape = (1, num_features, 1, 1) if num_dims == 4 else (1, num_features)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: Tensor) -> Tensor:
        if X.dim() != self.num_dims:
            raise ValueError(
                f"expected {self.num_dims}D input (got {X.dim()}D input); this layer was "
                f"built with num_dims={self.num_dims}"
            )
        Y, moving_mean, moving_var = batch_norm(
            X,
            self.gamma,
            self.beta,
            self.moving_mean,
            self.moving_var,
            eps=self.eps,
            momentum=self.momentum,
            training=self.training,
        )
        if self.training:
            self.moving_mean.copy_(moving_mean)  # in place: the buffer stays the buffer
            self.moving_var.copy_(moving_var)
        return Y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )


def _scratch_norm(num_features: int, dims: int) -> nn.Module:
    """LeNet's norm factory for the tutorial's layer: 4D after convs, 2D after linears."""
    return BatchNorm(num_features, num_dims=4 if dims > 0 else 2)


class BNLeNetScratch(LeNet):
    """The tutorial's LeNet with its own :class:`BatchNorm` before each sigmoid.

    Args:
        num_classes: outputs of the last layer. Default: 10.

    Shape:
        input ``(N, 1, 28, 28)``, output ``(N, num_classes)``.

    Example:
        >>> BNLeNetScratch()(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes=num_classes, norm=_scratch_norm)


class BNLeNet(LeNet):
    """The tutorial's LeNet with ``torch.nn.BatchNorm2d``/``BatchNorm1d`` (the reference).

    Args:
        num_classes: outputs of the last layer. Default: 10.

    Shape:
        input ``(N, 1, 28, 28)``, output ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes=num_classes, norm="torch-batch")


@dataclass(frozen=True)
class BNParameters:
    """Summary of one normalization layer's learned scale (gamma) and shift (beta)."""

    name: str
    kind: str
    num_features: int
    gamma: Tensor  # (C,), detached
    beta: Tensor | None  # (C,) or None without a shift


def bn_parameters(model: nn.Module) -> list[BNParameters]:
    """The gamma/beta of every normalization layer in ``model``, in module order.

    A layer counts if it is a tutorial :class:`BatchNorm` (``gamma``/``beta``) or has a
    one-dimensional ``weight`` parameter and a ``bias`` attribute, as every affine norm
    layer of ``torch.nn`` and ``normlab.nn`` does (conv and linear weights are 2D or more).
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, BatchNorm):
            gamma, beta = module.gamma, module.beta
        else:
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
                continue
            if not hasattr(module, "bias"):
                continue
            gamma, beta = weight, module.bias
        rows.append(
            BNParameters(
                name=name or "(model)",
                kind=type(module).__name__,
                num_features=gamma.numel(),
                gamma=gamma.detach().reshape(-1).cpu(),
                beta=None if beta is None else beta.detach().reshape(-1).cpu(),
            )
        )
    return rows


def _summary(values: Tensor | None) -> str:
    if values is None:
        return f"{'-':>32}"
    v = values.double()
    std = v.std().item() if v.numel() > 1 else 0.0
    return f"{v.mean().item():>8.4f} {std:>7.4f} {v.min().item():>7.3f} {v.max().item():>7.3f}"


def format_bn_parameters(rows: list[BNParameters]) -> str:
    """A text table: one line per layer with mean, std, min and max of gamma and of beta."""
    if not rows:
        return "no normalization layers with learnable gamma/beta"
    width = max(len("layer"), *(len(r.name) for r in rows))
    kind_width = max(len("kind"), *(len(r.kind) for r in rows))
    stats = f"{'mean':>8} {'std':>7} {'min':>7} {'max':>7}"
    lines = [
        f"{'':{width}}  {'':{kind_width}}  {'':>5}  {'gamma':^32}  {'beta':^32}",
        f"{'layer':{width}}  {'kind':{kind_width}}  {'C':>5}  {stats}  {stats}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:{width}}  {r.kind:{kind_width}}  {r.num_features:>5}  "
            f"{_summary(r.gamma)}  {_summary(r.beta)}"
        )
    return "\n".join(lines)


def print_bn_parameters(model: nn.Module, file: TextIO | None = None) -> None:
    """Print a table of the learned gamma and beta of each normalization layer.

    Works for the tutorial's :class:`BatchNorm` and for any layer with a per-channel
    ``weight``/``bias`` (``torch.nn`` or ``normlab.nn`` norm layers).

    Args:
        model: any module, e.g. a trained :class:`BNLeNetScratch` or :class:`BNLeNet`.
        file: where to print. Default: ``sys.stdout``.

    Example:
        >>> print_bn_parameters(BNLeNetScratch())  # doctest: +SKIP
    """
    print(format_bn_parameters(bn_parameters(model)), file=file or sys.stdout)


def train_and_evaluate(
    model: nn.Module,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    test_loader: Iterable[tuple[Tensor, Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    num_epochs: int = 5,
    device: torch.device | str = "cpu",
    file: TextIO | None = None,
) -> float:
    """The tutorial's loop: train for ``num_epochs``, then return the test accuracy in %.

    Each epoch prints the *mean* loss over its examples (the original printed its last
    batch's loss). ``model.train()`` while training and ``model.eval()`` under
    ``torch.no_grad()`` while testing, so batch norm uses batch statistics, then its
    running statistics. The loaders yield ``(images, labels)`` batches: a
    ``torch.utils.data.DataLoader`` or ``normlab.data.batches(...)`` both work.

    Example:
        >>> accuracy = train_and_evaluate(model, train, test, nn.CrossEntropyLoss(),
        ...                               torch.optim.SGD(model.parameters(), lr=0.03,
        ...                                               momentum=0.9))  # doctest: +SKIP
    """
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    out = file or sys.stdout
    model.to(device)
    for epoch in range(num_epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * labels.size(0)
            seen += labels.size(0)
        if seen == 0:
            raise ValueError("train_loader yielded no examples")
        print(f"Epoch [{epoch + 1}/{num_epochs}], Loss: {total_loss / seen:.4f}", file=out)

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            predicted = model(images).argmax(dim=1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    if total == 0:
        raise ValueError("test_loader yielded no examples")
    accuracy = 100 * correct / total
    print(f"Accuracy: {accuracy:.2f}%", file=out)
    return accuracy
