"""What every lab experiment shares: data, training one cell, summaries across seeds,
table cells and config checks.

The experiment contract itself is :class:`normlab.lab.experiment.Experiment`; nothing
here draws or writes a report.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError
from normlab.lab.cells import config_dict
from normlab.lab.experiment import Curve, ExperimentConfig, SeedStats

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normlab.data import Dataset
    from normlab.train.config import TrainConfig
    from normlab.train.engine import History

__all__ = [
    "LENET",
    "accuracy_with_batch_stats",
    "check_choices",
    "check_positive_int",
    "config_dict",
    "curve_mean_std",
    "cut",
    "downsample",
    "history_record",
    "lab_data",
    "pm",
    "seed_stats",
    "train_config",
]

LENET = "LeNet"  # normlab.models.lenet.LeNet, as the study report names it
CHANCE_MARGIN = 0.05  # an accuracy within 5 points of chance counts as "did not learn"


# ----------------------------------------------------------------------------- data
def lab_data(
    config: ExperimentConfig, data_dir: str | None = None, cache: dict | None = None
) -> Dataset:
    """The dataset ``config.dataset`` cut to ``config.train_subset``/``test_subset``.

    ``cache`` (a dict) keeps full datasets between experiments of one study, so the
    files are read and verified once.
    """
    from normlab.train.config import TrainConfig
    from normlab.train.engine import load_data

    if config.dataset == "synthetic":
        probe = TrainConfig(
            dataset="synthetic", train_subset=config.train_subset, test_subset=config.test_subset
        )
        return load_data(probe)
    key = (config.dataset, data_dir)
    if cache is not None and key in cache:
        full = cache[key]
    else:
        full = load_data(TrainConfig(dataset=config.dataset), data_dir=data_dir)
        if cache is not None:
            cache[key] = full
    return cut(full, config)


def cut(data: Dataset, config: ExperimentConfig) -> Dataset:
    train = config.train_subset
    test = config.test_subset
    if train is not None and train >= len(data.train_labels):
        train = None
    if test is not None and test >= len(data.test_labels):
        test = None
    if train is None and test is None:
        return data
    return data.subset(train=train, test=test)


# ------------------------------------------------------------------------- training
def train_config(config: ExperimentConfig, **changes: Any) -> TrainConfig:
    """The :class:`~normlab.train.config.TrainConfig` of one cell: the experiment config's
    shared fields (dataset, lr, momentum, batch size, epochs, activation, device,
    subsets) overridden by ``changes`` (norm, seed, ...)."""
    from normlab.train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in names}
    values.update(changes)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    train = TrainConfig(**values)
    train.validate()
    return train


def history_record(history: History, curve_points: int = 60) -> dict[str, Any]:
    """The numbers of one ``fit`` :class:`~normlab.train.engine.History` worth keeping.

    ``loss_curve`` is the training loss averaged over ``curve_points`` windows of
    steps (``[[mid_step, mean_loss], ...]``, finite losses only). ``final`` is the
    last epoch's metrics, or None when training diverged before an epoch ended.
    """
    epochs = [
        {
            "epoch": e.epoch,
            "train_loss": e.train_loss,
            "train_accuracy": e.train_accuracy,
            "test_loss": e.test_loss,
            "test_accuracy": e.test_accuracy,
            "train_seconds": e.train_seconds,
            "eval_seconds": e.eval_seconds,
            "steps": e.steps,
        }
        for e in history.epochs
    ]
    losses = list(history.step_losses)
    finite = [v for v in losses if math.isfinite(v)]
    complete = not history.diverged
    return {
        "epochs": epochs,
        "final": epochs[-1] if (epochs and complete) else None,
        "diverged": bool(history.diverged),
        "diverged_at_step": history.diverged_at_step,
        "steps": len(losses),
        "last_loss": losses[-1] if losses else None,
        "max_finite_loss": max(finite) if finite else None,
        "loss_curve": downsample(finite, curve_points),
    }


def downsample(values: Sequence[float], points: int) -> list[list[float]]:
    """Means of ``values`` over ``points`` (or fewer) equal windows, with each window's
    middle index: ``[[mid_index, mean], ...]``."""
    n = len(values)
    if n == 0:
        return []
    windows = min(points, n)
    out = []
    for w in range(windows):
        lo, hi = (w * n) // windows, ((w + 1) * n) // windows
        chunk = values[lo:hi]
        out.append([(lo + hi - 1) / 2, math.fsum(chunk) / len(chunk)])
    return out


def accuracy_with_batch_stats(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> float:
    """Test accuracy when every norm layer uses the statistics of the test batch itself
    (train mode) instead of its running averages (eval mode).

    A copy of ``model`` runs, so the running statistics of ``model`` stay untouched.
    Batches of ``batch_size`` in the stored order; a last smaller batch is dropped
    (batch norm cannot normalise a single example), unless it is the only one.
    """
    import torch

    from normlab.data import batches

    if batch_size < 2:
        raise UsageError(f"batch statistics need batches of at least 2, got {batch_size}")
    with torch.no_grad():
        twin = copy.deepcopy(model).train()
        drop_last = len(labels) >= batch_size
        correct = total = 0
        for x, y in batches(
            images, labels, batch_size, shuffle=False, drop_last=drop_last, device=device
        ):
            correct += int((twin(x).argmax(dim=1) == y).sum())
            total += int(y.numel())
        return correct / total


# --------------------------------------------------------------------------- summaries
def seed_stats(values: Sequence[float | None]) -> SeedStats:
    """Mean and std (ddof=1) of the finite values (one per seed); mean and std are None
    when no value is finite."""
    from normlab.report.stats import summarize

    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return SeedStats(mean=None, std=None, n=0, values=list(values))
    summary = summarize(finite)
    return SeedStats(mean=summary.mean, std=summary.std, n=summary.n, values=list(values))


def curve_mean_std(curves: Sequence[Sequence[float]]) -> Curve:
    """Pointwise mean and std (ddof=1) of curves, one per seed, cut to the shortest;
    ``values`` keeps the curves themselves (``(seeds, T)``, for plots)."""
    from normlab.report.stats import mean_std

    length = min((len(c) for c in curves), default=0)
    if length == 0:
        return Curve(mean=[], std=[], values=[])
    values = [[float(v) for v in list(c)[:length]] for c in curves]
    mean, std = mean_std(values)
    return Curve(mean=mean.tolist(), std=std.tolist(), values=values)


def pm(stat: SeedStats, scale: float = 100.0, unit: str = "%") -> str | None:
    """A table cell ``"87.3 ± 0.4 %"`` from seed statistics (None when nothing finished)."""
    from normlab.report.stats import MeanStd, format_mean_std

    if stat.mean is None or stat.std is None:
        return None
    return format_mean_std(
        MeanStd(scale * stat.mean, scale * stat.std, stat.n), digits=3, unit=unit
    )


# ------------------------------------------------------------------------- validation
def check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choices(name: str, values: Sequence[Any], valid: Sequence[Any]) -> None:
    """Every value in ``valid``, at least one, no repeats."""
    if isinstance(values, str) or not values:
        raise UsageError(f"{name} must be a non-empty list, got {values!r}")
    for value in values:
        if value not in valid:
            raise UsageError(
                f"unknown {name[:-1] if name.endswith('s') else name} {value!r}; "
                f"valid: {', '.join(map(str, valid))}"
            )
    if len(set(values)) != len(values):
        raise UsageError(f"{name} has repeats: {', '.join(map(str, values))}")


def check_common(config: ExperimentConfig) -> None:
    """The fields every experiment config shares, checked through TrainConfig."""
    from normlab.lab.cells import seed_list

    seed_list(config.seeds)
    train_config(config, norm="none", seed=0)
    for name in ("train_subset", "test_subset"):
        value = getattr(config, name)
        if value is not None:
            check_positive_int(name, value, 2)
