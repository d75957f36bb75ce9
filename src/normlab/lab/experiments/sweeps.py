"""Sweeps: the learning rate (with and without batch norm) and the batch size (batch norm
against group and layer norm).

**Learning rate.** Ioffe & Szegedy (2015) found that batch norm lets a network train
with much higher learning rates (their BN-Inception trained at 5x and 30x the base
rate and reached the baseline's accuracy in 14x fewer steps). :func:`run_lr_sweep`
trains each norm over a log grid of rates and records the final accuracy and whether
training *diverged* (a non-finite loss: :attr:`normlab.train.engine.History.diverged`) or
*did not learn* (final accuracy within 5 points of chance).

**Batch size.** Batch norm estimates its statistics from the batch; with 2 examples
they are noise. Wu & He (2018) report ResNet-50 ImageNet error rising from 23.6 % at 32
images per batch to 34.7 % at 2 for batch norm, while group norm stays at 24.1 ± 0.1 %.
:func:`run_batch_size_sweep` trains every arm at each batch size on the same number of
examples (so smaller batches take more steps) with the learning rate scaled linearly
with the batch size (Goyal et al. 2017, as Wu & He do), and measures the test accuracy
twice: in eval mode (running statistics, how a model is deployed) and with the
statistics of test batches of the training batch size.

An *arm* is a norm registry name trained in one process, or an arm registered with
:func:`register_batch_size_arm` (the SyncBN arm of :mod:`normlab.distributed.groups` is one:
small per-process batches with and without synchronisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, CellStore, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    CHANCE_MARGIN,
    Experiment,
    accuracy_with_batch_stats,
    check_choices,
    check_common,
    check_positive_int,
    history_record,
    mean_std_dict,
    run_experiment,
    train_config,
)

__all__ = [
    "BATCH_SIZE_ARMS",
    "BATCH_SIZE_SWEEP",
    "LR_SWEEP",
    "BatchSizeArm",
    "BatchSizeSweepConfig",
    "LrSweepConfig",
    "log_grid",
    "register_batch_size_arm",
    "run_batch_size_sweep",
    "run_lr_sweep",
]


def log_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """``points`` learning rates spaced evenly in log scale from ``low`` to ``high``,
    each rounded to 2 significant digits: ``log_grid(0.01, 3, 6)`` =
    ``(0.01, 0.031, 0.098, 0.31, 0.96, 3.0)``."""
    if not (low > 0 and high > low):
        raise UsageError(f"need 0 < low < high for a log grid, got {low!r} and {high!r}")
    check_positive_int("points", points, 2)
    ratio = math.log(high / low)
    return tuple(float(f"{low * math.exp(ratio * i / (points - 1)):.2g}") for i in range(points))


def _check_positive_numbers(name: str, values: tuple[float, ...]) -> None:
    if isinstance(values, str) or not values:
        raise UsageError(f"{name} must be a non-empty list of numbers, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise UsageError(f"{name} must be positive numbers, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{name} must be finite, got {value!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"{name} has repeats: {', '.join(map(str, values))}")


# ============================================================================ learning rate
@dataclass(frozen=True)
class LrSweepConfig:
    """Settings of the learning-rate sweep (defaults: the study's budget)."""

    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # log grid 0.01 ... 3
    norms: tuple[str, ...] = ("batch", "none")  # with and without batch norm
    seeds: int = 2  # runs per (norm, lr)
    epochs: int = 2
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    momentum: float = 0.9  # the tutorial's
    batch_size: int = 64  # the tutorial's
    activation: str = "relu"  # as Inception; a plain sigmoid LeNet learns at no rate here
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        _check_positive_numbers("lrs", self.lrs)
        check_choices("norms", self.norms, norm_names())
        check_common(self)


def lr_cells(config: LrSweepConfig) -> list[Cell]:
    """One cell per norm x learning rate x seed."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.epochs * (config.test_subset or 10_000)
    return [
        Cell(
            "sweep-lr",
            (("norm", norm), ("lr", float(lr))),
            seed,
            estimate_seconds(examples, config.batch_size, norm) + eval_seconds(tests),
        )
        for norm in config.norms
        for lr in config.lrs
        for seed in seed_list(config.seeds)
    ]


def run_lr_cell(config: LrSweepConfig, data: Any, cell: Cell) -> dict[str, Any]:
    """Train one LeNet at ``cell``'s learning rate; whether it diverged or learned."""
    from normlab.train.engine import build_model, fit

    params = cell.params
    train = train_config(config, norm=params["norm"], lr=float(params["lr"]), seed=cell.seed)
    history = fit(build_model(train), data, train, progress=False)
    record = history_record(history)
    record["chance"] = 1.0 / _num_classes(data)
    record["learned"] = _learned(record)
    return record


def _num_classes(data: Any) -> int:
    return len(data.classes)


def _learned(record: Mapping[str, Any]) -> bool:
    """Finished without diverging and ended clearly above chance."""
    final = record["final"]
    return final is not None and final["test_accuracy"] > record["chance"] + CHANCE_MARGIN


def summarize_lr(
    config: LrSweepConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per norm and learning rate: accuracy mean ± std, how many seeds diverged/learned."""
    norms: dict[str, Any] = {}
    for norm in config.norms:
        points = []
        for lr in config.lrs:
            runs = [
                results[c.key]
                for c in cells
                if c.params["norm"] == norm and c.params["lr"] == float(lr)
            ]
            accuracy = [None if r["final"] is None else r["final"]["test_accuracy"] for r in runs]
            points.append(
                {
                    "lr": float(lr),
                    "test_accuracy": mean_std_dict(accuracy),
                    "test_loss": mean_std_dict(
                        [None if r["final"] is None else r["final"]["test_loss"] for r in runs]
                    ),
                    "diverged": sum(bool(r["diverged"]) for r in runs),
                    "learned": sum(bool(r["learned"]) for r in runs),
                    "seeds": len(runs),
                    "diverged_at_step": [r["diverged_at_step"] for r in runs],
                    "loss_curves": [r["loss_curve"] for r in runs],
                }
            )
        norms[norm] = points
    chance = next(iter(results.values()))["chance"] if results else None
    return {"norms": norms, "chance": chance}


LR_SWEEP = Experiment(
    name="sweep-lr",
    title="Higher learning rates",
    config_type=LrSweepConfig,
    cells=lr_cells,
    run_cell=run_lr_cell,
    summarize=summarize_lr,
)


def run_lr_sweep(
    config: LrSweepConfig | None = None,
    data: Any | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Train every norm at every learning rate for every seed; the summary.

    Returns:
        ``{"norms": {name: [{"lr", "test_accuracy": {mean, std, n, values},
        "diverged": k, "learned": k, "seeds": n, ...}, ...]}, "chance": 0.1, ...}``.
    """
    return run_experiment(
        LR_SWEEP, config or LrSweepConfig(), data, store=store, progress=progress, data_dir=data_dir
    )


# ============================================================================== batch size
@dataclass(frozen=True)
class BatchSizeSweepConfig:
    """Settings of the batch-size sweep (defaults: the study's budget)."""

    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)  # examples per batch
    arms: tuple[str, ...] = ("batch", "group", "layer")  # norms or registered arms
    seeds: int = 2  # runs per (arm, batch size)
    epochs: int = 1  # every batch size sees epochs x train_subset examples
    dataset: str = "fashion-mnist"
    train_subset: int | None = 8_192  # a multiple of every batch size: no ragged batch
    test_subset: int | None = 2_000
    lr: float = 0.1  # at base_batch_size (Wu & He: 0.1 per 32 images); scaled (lr_scaling)
    base_batch_size: int = 32  # the batch size at which lr applies
    lr_scaling: str = "linear"  # lr * B / base (Goyal et al. 2017), or "constant"
    momentum: float = 0.9
    activation: str = "relu"  # as Wu & He's ResNet; sigmoid GN/LN learn too slowly here
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        if isinstance(self.batch_sizes, str) or not self.batch_sizes:
            raise UsageError(f"batch_sizes must be a non-empty list, got {self.batch_sizes!r}")
        for size in self.batch_sizes:
            check_positive_int("every batch size", size, 2)
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise UsageError(f"batch_sizes has repeats: {self.batch_sizes}")
        for arm in self.arms:
            if arm not in norm_names():
                load_arm(arm)
        check_choices("arms", self.arms, [*norm_names(), *BATCH_SIZE_ARMS, *ARM_PLUGINS])
        check_positive_int("base_batch_size", self.base_batch_size)
        if self.lr_scaling not in LR_SCALINGS:
            raise UsageError(
                f"unknown lr_scaling {self.lr_scaling!r}; valid: {', '.join(LR_SCALINGS)}"
            )
        check_common(self)
        for size in self.batch_sizes:
            self.lr_for(size)
        train = self.train_subset
        if train is not None and any(train % b == 1 for b in self.batch_sizes):
            raise UsageError(
                f"train_subset {train} leaves a last batch of 1 example for some batch size, "
                "which batch norm cannot normalise; pick a multiple of the batch sizes"
            )

    def lr_for(self, batch_size: int) -> float:
        """The learning rate at ``batch_size``: ``lr * B / base_batch_size`` (linear) or
        ``lr`` (constant)."""
        if self.lr_scaling == "constant":
            return float(self.lr)
        return float(self.lr) * batch_size / self.base_batch_size


LR_SCALINGS = ("linear", "constant")


BatchSizeArm = Callable[["BatchSizeSweepConfig", Any, int, int], Mapping[str, Any]]
"""``arm(config, data, batch_size, seed) -> record``: trains one model, returns a dict
with at least ``final`` (``None`` or ``{"test_accuracy", ...}`` in eval mode),
``diverged``, ``batch_stats_accuracy`` and ``loss_curve`` (see :func:`run_batch_size_cell`)."""

BATCH_SIZE_ARMS: dict[str, BatchSizeArm] = {}

# Arms that register themselves on first use: name -> "module:function" to call.
ARM_PLUGINS: dict[str, str] = {
    "syncbn": "normlab.lab.syncbn_arm:register_syncbn_arms",  # P processes, synchronised BN
    "localbn": "normlab.lab.syncbn_arm:register_syncbn_arms",  # P processes, per-process BN
}


def load_arm(name: str) -> bool:
    """Register ``name`` from :data:`ARM_PLUGINS` if it is not registered yet; whether
    it is registered now."""
    import importlib

    if name in BATCH_SIZE_ARMS:
        return True
    if name not in ARM_PLUGINS:
        return False
    module, function = ARM_PLUGINS[name].split(":")
    getattr(importlib.import_module(module), function)()
    return name in BATCH_SIZE_ARMS


def register_batch_size_arm(name: str, arm: BatchSizeArm) -> None:
    """Add an arm to the batch-size sweep (e.g. ``"syncbn"`` from normlab.distributed.groups).

    Its name may then appear in :attr:`BatchSizeSweepConfig.arms`. Worker processes
    receive the registered arms by pickling, so ``arm`` must be a module-level function
    (or a ``functools.partial`` of one).
    """
    from normlab.nn.registry import norm_names

    if not name or name in norm_names():
        raise UsageError(f"arm name {name!r} must be new and not a norm registry name")
    if not callable(arm):
        raise TypeError(f"arm must be callable, got {type(arm).__name__}")
    BATCH_SIZE_ARMS[name] = arm


def batch_size_cells(config: BatchSizeSweepConfig) -> list[Cell]:
    """One cell per arm x batch size x seed."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.epochs * (config.test_subset or 10_000)
    return [
        Cell(
            "sweep-batch-size",
            (("arm", arm), ("batch_size", size)),
            seed,
            estimate_seconds(examples, size, arm)
            + eval_seconds(tests)
            + estimate_seconds(config.test_subset or 10_000, size) / 3,
        )
        for arm in config.arms
        for size in config.batch_sizes
        for seed in seed_list(config.seeds)
    ]


def run_batch_size_cell(config: BatchSizeSweepConfig, data: Any, cell: Cell) -> dict[str, Any]:
    """Train one model at ``cell``'s batch size; its accuracy with running statistics
    (eval mode, ``final``) and with the statistics of test batches of that size."""
    arm, size = cell.params["arm"], int(cell.params["batch_size"])
    if arm in BATCH_SIZE_ARMS:
        record = dict(BATCH_SIZE_ARMS[arm](config, data, size, cell.seed))
    else:
        record = _train_norm_arm(config, data, arm, size, cell.seed)
    record["lr"] = config.lr_for(size)
    record["examples_seen"] = config.epochs * len(data.train_labels)
    record["chance"] = 1.0 / _num_classes(data)
    return record


def _train_norm_arm(
    config: BatchSizeSweepConfig, data: Any, norm: str, batch_size: int, seed: int
) -> dict[str, Any]:
    from normlab.train.engine import build_model, fit

    train = train_config(
        config, norm=norm, batch_size=batch_size, lr=config.lr_for(batch_size), seed=seed
    )
    model = build_model(train)
    history = fit(model, data, train, progress=False)
    record = history_record(history)
    record["batch_stats_accuracy"] = (
        None
        if record["final"] is None
        else accuracy_with_batch_stats(
            model, data.test_images, data.test_labels, batch_size, device=train.device
        )
    )
    return record


def summarize_batch_size(
    config: BatchSizeSweepConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per arm and batch size: accuracy in eval mode and with batch statistics."""
    arms: dict[str, Any] = {}
    for arm in config.arms:
        points = []
        for size in config.batch_sizes:
            runs = [
                results[c.key]
                for c in cells
                if c.params["arm"] == arm and c.params["batch_size"] == size
            ]
            eval_acc = [None if r["final"] is None else r["final"]["test_accuracy"] for r in runs]
            points.append(
                {
                    "batch_size": size,
                    "lr": config.lr_for(size),
                    "steps": [r["steps"] for r in runs],
                    "eval_accuracy": mean_std_dict(eval_acc),
                    "batch_stats_accuracy": mean_std_dict(
                        [r["batch_stats_accuracy"] for r in runs]
                    ),
                    "diverged": sum(bool(r["diverged"]) for r in runs),
                    "seeds": len(runs),
                }
            )
        arms[arm] = points
    examples = next(iter(results.values()))["examples_seen"] if results else None
    chance = next(iter(results.values()))["chance"] if results else None
    return {"arms": arms, "examples_seen": examples, "chance": chance}


BATCH_SIZE_SWEEP = Experiment(
    name="sweep-batch-size",
    title="Small batches",
    config_type=BatchSizeSweepConfig,
    cells=batch_size_cells,
    run_cell=run_batch_size_cell,
    summarize=summarize_batch_size,
)


def run_batch_size_sweep(
    config: BatchSizeSweepConfig | None = None,
    data: Any | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Train every arm at every batch size for every seed; the summary.

    Returns:
        ``{"arms": {name: [{"batch_size", "lr", "eval_accuracy": {mean, std, n, values},
        "batch_stats_accuracy": {...}, "diverged", "seeds"}, ...]}, "examples_seen": N}``.
    """
    return run_experiment(
        BATCH_SIZE_SWEEP,
        config or BatchSizeSweepConfig(),
        data,
        store=store,
        progress=progress,
        data_dir=data_dir,
    )
