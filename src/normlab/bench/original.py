"""The course tutorial's original batch norm and training pipeline, re-created as a baseline
and as a negative example.

normlab's own re-creation (not a copy) of what the course's readers ran: the same
algorithm, the same architecture, the same training loop and the same defects, kept on
purpose. ``normlab bench train`` measures normlab's training against it (a speed-up is
claimed against the real thing, not a straw man), and ``normlab audit`` grades
:class:`BatchNorm` as the example of a layer that fails (its report card is in
``docs/audit.md``). The corrected layer is :class:`normlab.tutorial.BatchNorm`.

The six defects of :func:`batch_norm_by_grad_mode` and :class:`BatchNorm`:

1. the batch statistics are used whenever gradients are enabled, and the moving
   averages whenever they are not: ``torch.is_grad_enabled()`` stands for "training";
2. so ``model.eval()`` is ignored under grad (evaluation with gradients enabled
   normalises with the batch and even updates the moving averages);
3. the moving averages are plain attributes: not in ``state_dict``, not moved by
   ``.to()`` (the forward moves them to the input's device by hand);
4. the moving variance averages the biased batch variance (``torch.nn`` the unbiased);
5. the moving averages are computed from statistics that require grad, so each step's
   autograd graph is chained onto the next and memory grows with every step;
6. the input's shape is checked with ``assert`` (gone under ``python -O``), and a batch
   of one in training silently normalises to ``beta``.

The data path re-creates torchvision's (not installed): ``FashionMNIST`` with
``Compose([ToTensor(), Normalize((0.5,), (0.5,))])``, a per-sample ``Dataset`` (uint8
array -> PIL image -> float tensor ``(1, 28, 28)`` in [0, 1] -> ``(x - 0.5) / 0.5``)
read through ``DataLoader(batch_size=64, shuffle=True)`` with its defaults.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "BNLeNetScratch",
    "BatchNorm",
    "TutorialFashionMNIST",
    "batch_norm_by_grad_mode",
    "endless",
    "train_steps",
    "tutorial_loader",
    "tutorial_setup",
]

device = torch.device("cpu")  # the course picks cuda when available; the benchmark sets it

# ---------------------------------------------------------------- the course's batch norm


def batch_norm_by_grad_mode(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float = 1e-5,
    momentum: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm as the course wrote it, defects included (see the module docstring).

    With grad enabled: ``X_hat = (X - mean) / sqrt(var + eps)`` with the batch's mean and
    biased variance over ``N`` (2D) or ``N, H, W`` (4D), and new moving averages
    ``(1 - momentum) * moving + momentum * batch`` that carry the autograd graph. With
    grad disabled: ``X_hat = (X - moving_mean) / sqrt(moving_var + eps)``.

    Args:
        X: ``(N, C)`` or ``(N, C, H, W)``.
        gamma, beta: ``(1, C)`` or ``(1, C, 1, 1)``.
        moving_mean, moving_var: the moving averages, same shape as ``gamma``.

    Returns:
        ``(gamma * X_hat + beta, moving_mean, moving_var)``, the averages updated or not.
    """
    assert X.dim() in (2, 4), "batch norm takes 2D or 4D input"  # defect 6: an assert
    if not torch.is_grad_enabled():  # defects 1 and 2: grad mode stands for "evaluation"
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    over = (0,) if X.dim() == 2 else (0, 2, 3)
    batch_mean = X.mean(dim=over, keepdim=X.dim() == 4)
    batch_var = ((X - batch_mean) ** 2).mean(dim=over, keepdim=X.dim() == 4)  # biased
    X_hat = (X - batch_mean) / torch.sqrt(batch_var + eps)
    # defects 4 and 5: the biased variance, and averages that keep the graph alive
    moving_mean = (1.0 - momentum) * moving_mean + momentum * batch_mean
    moving_var = (1.0 - momentum) * moving_var + momentum * batch_var
    return gamma * X_hat + beta, moving_mean, moving_var


class BatchNorm(nn.Module):
    """The course's batch norm layer: :func:`batch_norm_by_grad_mode` with its moving
    averages as plain attributes (defect 3).

    Args:
        num_features: C.
        num_dims: 4 for ``(N, C, H, W)`` input, otherwise ``(N, C)``.

    Attributes:
        gamma, beta: parameters ``(1, C, 1, 1)`` or ``(1, C)``, init 1 and 0.
        moving_mean, moving_var: plain tensors of that shape, init 0 and 1.

    Example:
        >>> bn = BatchNorm(3, num_dims=4)
        >>> sorted(bn.state_dict())  # the moving averages are not saved
        ['beta', 'gamma']
    """

    def __init__(self, num_features: int, num_dims: int) -> None:
        super().__init__()
        stats_shape = (1, num_features, 1, 1) if num_dims == 4 else (1, num_features)
        self.gamma = nn.Parameter(torch.ones(stats_shape))
        self.beta = nn.Parameter(torch.zeros(stats_shape))
        self.moving_mean = torch.zeros(stats_shape)
        self.moving_var = torch.ones(stats_shape)

    def forward(self, X: Tensor) -> Tensor:
        if self.moving_mean.device != X.device:  # .to() does not move plain attributes
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm_by_grad_mode(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var
        )
        return Y


class BNLeNetScratch(nn.Module):
    """The course's LeNet-5 with :class:`BatchNorm` before each sigmoid.

    conv 1->6 5x5, BN, sigmoid, avg-pool 2; conv 6->16 5x5, BN, sigmoid, avg-pool 2;
    flatten; linear 256->120, BN, sigmoid; linear 120->84, BN, sigmoid; linear 84->10.

    Shape:
        input ``(N, 1, 28, 28)``, output ``(N, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *_conv_block(1, 6),
            *_conv_block(6, 16),
            nn.Flatten(),
            *_dense_block(16 * 4 * 4, 120),
            *_dense_block(120, 84),
            nn.Linear(84, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, kernel_size=5),
        BatchNorm(channels_out, num_dims=4),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
    ]


def _dense_block(features_in: int, features_out: int) -> list[nn.Module]:
    return [nn.Linear(features_in, features_out), BatchNorm(features_out, num_dims=2), nn.Sigmoid()]


def train_steps(
    model: nn.Module,
    train_batches: Iterator[tuple[Tensor, Tensor]],
    criterion: nn.Module,
    optimizer: optim.Optimizer,
    steps: int,
) -> Tensor:
    """The course's training loop for ``steps`` batches drawn from ``train_batches`` (not
    whole epochs, so that the benchmark can interleave it with the other candidates):
    move the model to ``device`` and to training mode, then per batch zero the gradients,
    forward, cross-entropy, backward, optimizer step. Returns the last batch's loss."""
    model.to(device)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        images, labels = (t.to(device) for t in next(train_batches))
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
    return loss


# ------------------------------------------------- re-created torchvision (not installed)


class TutorialFashionMNIST(Dataset):
    """``datasets.FashionMNIST(..., transform=Compose([ToTensor(), Normalize((0.5,), (0.5,))]))``.

    Args:
        images: uint8 tensor ``(N, 28, 28)``, as torchvision keeps ``self.data``.
        labels: integer tensor ``(N,)``, torchvision's ``self.targets``.

    ``__getitem__`` returns ``(tensor (1, 28, 28) float32 in [-1, 1], int label)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(
                f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.data, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")  # what torchvision's MNIST does
        return _normalize(_to_tensor(img), mean=(0.5,), std=(0.5,)), target


def _to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision's ``ToTensor`` for a mode-L image: ``(1, H, W)`` float32 in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def _normalize(
    tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """torchvision's ``Normalize`` (not in place): ``(tensor - mean) / std`` per channel."""
    tensor = tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def tutorial_loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    """The course's ``DataLoader(train_dataset, batch_size=64, shuffle=True)``."""
    return DataLoader(TutorialFashionMNIST(images, labels), batch_size=64, shuffle=True)


def endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``loader``, epoch after epoch (a new shuffle each epoch, as the course)."""
    while True:
        yield from loader


def tutorial_setup(
    seed: int = 0,
) -> tuple[BNLeNetScratch, nn.CrossEntropyLoss, optim.SGD]:
    """The course's ``model, criterion, optimizer`` (lr 0.03, momentum 0.9), seeded."""
    torch.manual_seed(seed)
    model = BNLeNetScratch()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    return model, criterion, optimizer
