"""Which normalization? The same LeNet with each norm layer, several seeds.

Every norm trains with the same settings, initial conv/linear weights (norm layers
initialise without randomness) and batch order per seed, so the differences come from
the normalization alone. ``torch-batch`` (torch.nn's batch norm) is the reference for
normlab's ``batch``: with the same seed the two see the same batches from the same
weights, and their curves must overlap. ``none`` is the plain network.

Per norm: test accuracy and loss after every epoch (mean ± std across seeds), the
training loss curve, and seconds per epoch.

Example::

    >>> result = run_compare(CompareConfig(norms=("batch", "none"), seeds=2, epochs=1))
    >>> result["norms"]["batch"]["final_test_accuracy"]["mean"]   # doctest: +SKIP
    0.83
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, CellStore, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    Experiment,
    check_choices,
    check_common,
    curve_mean_std,
    history_record,
    mean_std_dict,
    run_experiment,
    train_config,
)

__all__ = ["COMPARE", "DEFAULT_NORMS", "CompareConfig", "run_compare"]

DEFAULT_NORMS = ("batch", "torch-batch", "layer", "group", "instance", "rms", "none")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of the norm comparison (defaults: the study's budget on a 2-core CPU)."""

    norms: tuple[str, ...] = DEFAULT_NORMS  # registry names; torch-batch is the reference
    seeds: int = 3  # runs per norm, seeds 0..seeds-1 (initialisation and batch order)
    epochs: int = 3  # passes over the training subset
    dataset: str = "fashion-mnist"  # or "mnist"; "synthetic" for tests
    train_subset: int | None = 10_000  # first N training images (None: all 60k)
    test_subset: int | None = 2_000  # first N test images (None: all 10k)
    lr: float = 0.03  # the tutorial's SGD learning rate
    momentum: float = 0.9  # the tutorial's SGD momentum
    batch_size: int = 64  # the tutorial's batch size
    activation: str = "sigmoid"  # the tutorial's
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        check_choices("norms", self.norms, norm_names())
        check_common(self)


def compare_cells(config: CompareConfig) -> list[Cell]:
    """One cell per norm x seed."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.epochs * (config.test_subset or 10_000)
    return [
        Cell(
            "compare",
            (("norm", norm),),
            seed,
            estimate_seconds(examples, config.batch_size, norm) + eval_seconds(tests),
        )
        for norm in config.norms
        for seed in seed_list(config.seeds)
    ]


def run_compare_cell(config: CompareConfig, data: Any, cell: Cell) -> dict[str, Any]:
    """Train one LeNet with ``cell``'s norm and seed; its per-epoch numbers."""
    from normlab.train.engine import build_model, fit

    train = train_config(config, norm=cell.params["norm"], seed=cell.seed)
    history = fit(build_model(train), data, train, progress=False)
    return history_record(history)


def summarize_compare(
    config: CompareConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per norm: mean ± std across seeds of every per-epoch number and the final ones."""
    norms: dict[str, Any] = {}
    for norm in config.norms:
        runs = [results[c.key] for c in cells if c.params["norm"] == norm]
        if len(runs) != config.seeds:
            raise UsageError(f"compare: expected {config.seeds} runs of {norm!r}, got {len(runs)}")
        finished = [r for r in runs if r["final"] is not None]
        per_epoch = {
            key: curve_mean_std([[e[key] for e in r["epochs"]] for r in finished])
            for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy")
        }
        norms[norm] = {
            "seeds": len(runs),
            "diverged": sum(r["diverged"] for r in runs),
            "final_test_accuracy": mean_std_dict([_final(r, "test_accuracy") for r in runs]),
            "final_test_loss": mean_std_dict([_final(r, "test_loss") for r in runs]),
            "final_train_loss": mean_std_dict([_final(r, "train_loss") for r in runs]),
            "seconds_per_epoch": mean_std_dict(
                [e["train_seconds"] for r in runs for e in r["epochs"]]
            ),
            "per_epoch": per_epoch,
            "loss_curves": [r["loss_curve"] for r in runs],
        }
    return {"norms": norms, "steps_per_epoch": _steps_per_epoch(results)}


def _final(run: Mapping[str, Any], key: str) -> float | None:
    return None if run["final"] is None else float(run["final"][key])


def _steps_per_epoch(results: Mapping[str, Mapping[str, Any]]) -> int | None:
    for run in results.values():
        if run["epochs"]:
            return int(run["epochs"][0]["steps"])
    return None


COMPARE = Experiment(
    name="compare",
    title="Which normalization?",
    config_type=CompareConfig,
    cells=compare_cells,
    run_cell=run_compare_cell,
    summarize=summarize_compare,
)


def run_compare(
    config: CompareConfig | None = None,
    data: Any | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Train LeNet with every norm in ``config.norms`` for every seed; the summary.

    Returns:
        ``{"norms": {name: {"final_test_accuracy": {mean, std, n, values}, ...,
        "per_epoch": {"test_accuracy": {mean: [...], std: [...]}, ...},
        "seconds_per_epoch": ..., "loss_curves": [...]}}, "config": {...}}``.
    """
    return run_experiment(
        COMPARE, config or CompareConfig(), data, store=store, progress=progress, data_dir=data_dir
    )
