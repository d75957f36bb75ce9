"""The configuration of one training run: a frozen dataclass whose defaults are the tutorial's.

``TrainConfig()`` is exactly the tutorial's set-up (LeNet with batch norm before each
sigmoid, average pooling, SGD lr 0.03 momentum 0.9, batch 64, 5 epochs, Fashion-MNIST).
Every field is plain data, so a config round-trips through JSON (``to_dict``/``from_dict``)
and is saved with every run (``config.json``).

Example::

    >>> config = TrainConfig(norm="group", lr=0.1)
    >>> config.validate()
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from normlab.errors import UsageError

DATASETS = ("fashion-mnist", "mnist", "synthetic")  # synthetic: tiny learnable fake data


BATCH_STATISTICS_NORMS = ("batch", "torch-batch")  # the norms that need 2+ images per batch


class InvalidSetting(UsageError):
    """A config field's value is out of range: ``"<field> <detail>"``.

    A command line re-words it with its flag (``--batch-size must be ...``), as the user
    never typed the field's name.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the numbers a training run produces.

    Machine-specific choices that do not change the numbers (where the data lives,
    how often to checkpoint) are not part of it; :class:`normlab.train.runs.Run` records them.
    """

    dataset: str = "fashion-mnist"  # the tutorial's data; "mnist", or "synthetic" to smoke-test
    norm: str = "batch"  # normlab's batch norm (the tutorial's BNLeNetScratch); see norm_names()
    activation: str = "sigmoid"  # the tutorial's; relu, tanh, gelu
    pool: str = "avg"  # the tutorial's AvgPool2d(2, 2); or max
    placement: str = "before"  # norm before the activation, as the tutorial; or after
    lr: float = 0.03  # the tutorial's SGD learning rate
    momentum: float = 0.9  # the tutorial's SGD momentum
    batch_size: int = 64  # the tutorial's DataLoader batch size
    epochs: int = 5  # the tutorial's num_epochs
    seed: int = 0  # model initialisation and batch order; same seed -> same numbers
    device: str = "cpu"  # "cuda" / "cuda:1" / "mps" where available
    train_subset: int | None = None  # use only the first N training images (None: all)
    test_subset: int | None = None  # use only the first N test images (None: all)
    compile: bool = False  # torch.compile the model (needs a C++ compiler on CPU)
    cuda_graphs: bool = False  # replay each training step from a CUDA graph (CUDA only)
    eval_batch_size: int = 1000  # batch size for evaluation (changes results only by rounding)
    world_size: int = 1  # processes training together (DDP); batch_size is per process
    sync_bn: bool = False  # batch statistics over all processes (normlab.nn.SyncBatchNorm)

    def validate(self) -> None:
        """Raise a one-line :class:`~normlab.errors.UsageError` for the first bad value."""
        from normlab.models.lenet import ACTIVATIONS, PLACEMENTS, POOLS
        from normlab.nn.registry import norm_names

        _choice("dataset", self.dataset, DATASETS)
        _choice("norm", self.norm, norm_names())
        _choice("activation", self.activation, list(ACTIVATIONS))
        _choice("pool", self.pool, list(POOLS))
        _choice("placement", self.placement, list(PLACEMENTS))
        _number("lr", self.lr)
        if not self.lr > 0:
            raise InvalidSetting("lr", f"must be positive, got {self.lr!r}")
        _number("momentum", self.momentum)
        if not 0 <= self.momentum < 1:
            raise InvalidSetting("momentum", f"must be in [0, 1), got {self.momentum!r}")
        _positive_int("batch_size", self.batch_size)
        _positive_int("epochs", self.epochs)
        _positive_int("eval_batch_size", self.eval_batch_size)
        if not _is_int(self.seed) or self.seed < 0:
            raise InvalidSetting("seed", f"must be a non-negative integer, got {self.seed!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        if not isinstance(self.compile, bool):
            raise InvalidSetting("compile", f"must be true or false, got {self.compile!r}")
        _positive_int("world_size", self.world_size)
        self._check_cuda_graphs()
        if not isinstance(self.sync_bn, bool):
            raise InvalidSetting("sync_bn", f"must be true or false, got {self.sync_bn!r}")
        if self.sync_bn and self.norm not in ("batch", "torch-batch"):
            raise UsageError(
                f"sync_bn synchronises batch norm, and norm {self.norm!r} has none; "
                "use --norm batch or drop --sync-bn"
            )
        if self.batch_size == 1 and self.norm in BATCH_STATISTICS_NORMS:
            raise UsageError(
                f"--batch-size 1 gives norm {self.norm!r} one image per batch, whose batch "
                "statistics are undefined; use --batch-size 2 or more, or a per-sample norm "
                "(--norm group, layer, instance or rms)"
            )
        _check_device(self.device)

    def _check_cuda_graphs(self) -> None:
        if not isinstance(self.cuda_graphs, bool):
            raise InvalidSetting("cuda_graphs", f"must be true or false, got {self.cuda_graphs!r}")
        if not self.cuda_graphs:
            return
        if not str(self.device).startswith("cuda"):
            raise UsageError(
                f"--cuda-graphs records GPU work; use --device cuda (got --device {self.device})"
            )
        if self.world_size > 1 or self.compile:
            raise UsageError(
                "--cuda-graphs replays one process's eager step; drop --nproc-per-node and "
                "--compile, or drop --cuda-graphs"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UsageError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}"
            )
        kwargs = dict(values)
        for key in ("lr", "momentum"):  # JSON writes 1.0 as 1.0, but a hand-written 1 is fine
            if key in kwargs and _is_int(kwargs[key]):
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value: object, valid: list[str] | tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _number(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidSetting(name, f"must be a finite number, got {value!r}")


def _positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise InvalidSetting(name, f"must be a positive integer, got {value!r}")


def _check_device(device: object) -> None:
    import torch

    if not isinstance(device, str):
        raise UsageError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but CUDA is not available; use cpu")
    count = torch.cuda.device_count() if parsed.type == "cuda" else 0
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= count:
        raise UsageError(f"device {device!r} asked for, but there are only {count} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} asked for, but MPS is not available; use cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
