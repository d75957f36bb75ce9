"""The seed tutorial's ORIGINAL training pipeline, re-created faithfully as a baseline.

This is what ``normlab bench train`` measures our training against: the tutorial's code
as its readers ran it, defects included, so that the speed-up we claim is against the
real thing and not a straw man. Nothing here is used for anything but that baseline
(the corrected tutorial API lives in :mod:`normlab.tutorial.api`).

Copied verbatim from ``../shared/seed/batchnorm-tutorial.txt``: ``batch_norm``,
``BatchNorm``, ``BNLeNetScratch`` and the body of the training loop of
``train_and_evaluate``. Its known defects are kept on purpose:

- train/eval is decided by ``torch.is_grad_enabled()``, not by ``model.training``;
- the moving averages are plain attributes computed from the graph, so every step's
  autograd graph stays alive (memory grows by about 1.4 MB per step);
- the moving variance is biased, and the statistics are not in ``state_dict``.

Re-created, because torchvision is not installed: ``datasets.FashionMNIST`` with
``transforms.Compose([ToTensor(), Normalize((0.5,), (0.5,))])`` - a per-sample
``Dataset`` whose ``__getitem__`` does what torchvision's does (uint8 array -> PIL image
-> ``ToTensor`` (float in [0, 1], shape (1, 28, 28)) -> ``Normalize`` (``(x - 0.5) /
0.5``)), read through ``DataLoader(batch_size=64, shuffle=True)`` with its defaults.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from PIL import Image
from torch.utils.data import DataLoader, Dataset

device = torch.device("cpu")  # the seed picks cuda when available; the benchmark sets it

# ---------------------------------------------------------------- verbatim from the seed
# fmt: off


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.1):
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)

        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var

    return gamma * X_hat + beta, moving_mean, moving_var


class BatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features, 1, 1) if num_dims == 4 else (1, num_features)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var)
        return Y


class BNLeNetScratch(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            # Layer 1: Convolutional + BatchNorm + Activation + Pooling
            # Input 1 channel (we input an image with only gray channel), but 6 channel output
            nn.Conv2d(1, 6, kernel_size=5),
            BatchNorm(6, num_dims=4),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            # Layer 2: Convolutional + BatchNorm + Activation + Pooling
            nn.Conv2d(6, 16, kernel_size=5),
            BatchNorm(16, num_dims=4),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            # Flatten the output for the fully connected layer
            nn.Flatten(),
            # Layer 3: Fully Connected + BatchNorm + Activation
            # Here, we
            nn.Linear(256, 120),  # Adjust the size according to the output from the last pooling layer  # noqa: E501
            BatchNorm(120, num_dims=2),
            nn.Sigmoid(),
            # Layer 4: Fully Connected + BatchNorm + Activation
            nn.Linear(120, 84),
            BatchNorm(84, num_dims=2),
            nn.Sigmoid(),
            # Output layer with 10 classes
            nn.Linear(84, 10)
        )

    def forward(self, x):
        return self.layers(x)


def train_steps(model, train_batches, criterion, optimizer, steps):
    """The body of the seed's ``train_and_evaluate`` training loop, for ``steps`` batches.

    Verbatim except that it draws ``steps`` batches from an iterator instead of looping
    over whole epochs, so that the benchmark can interleave it with the other candidates.
    """
    model.to(device)
    model.train()
    for _ in range(steps):
        images, labels = next(train_batches)
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
    return loss
# fmt: on


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
    """The seed's ``DataLoader(train_dataset, batch_size=64, shuffle=True)``."""
    return DataLoader(TutorialFashionMNIST(images, labels), batch_size=64, shuffle=True)


def endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``loader``, epoch after epoch (a new shuffle each epoch, as the seed)."""
    while True:
        yield from loader


def tutorial_setup(
    seed: int = 0,
) -> tuple[BNLeNetScratch, nn.CrossEntropyLoss, optim.SGD]:
    """The seed's ``model, criterion, optimizer`` (lr 0.03, momentum 0.9), seeded."""
    torch.manual_seed(seed)
    model = BNLeNetScratch()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    return model, criterion, optimizer
