"""Where to put the norm: before or after the activation.

Ioffe & Szegedy (2015) put batch norm right before the nonlinearity (``x = Wu`` is
"more likely to have a symmetric, non-sparse distribution"), as the tutorial does;
Mishkin et al. (2017, "Systematic evaluation of CNN advances on the ImageNet") found
batch norm *after* the ReLU slightly better. This experiment trains LeNet with the norm
in both places, for each activation, several seeds, and reports the final accuracy
(mean ± std) and the difference against the spread between seeds.
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

__all__ = ["PLACEMENT", "PlacementConfig", "run_placement"]


@dataclass(frozen=True)
class PlacementConfig:
    """Settings of the placement experiment (defaults: the study's budget)."""

    placements: tuple[str, ...] = ("before", "after")  # the norm before/after the activation
    activations: tuple[str, ...] = ("sigmoid", "relu")  # the tutorial's, and the common one
    norm: str = "batch"  # the norm being placed
    seeds: int = 3
    epochs: int = 2
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    lr: float = 0.03  # the tutorial's
    momentum: float = 0.9
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.models.lenet import ACTIVATIONS, PLACEMENTS
        from normlab.nn.registry import norm_names

        check_choices("placements", self.placements, PLACEMENTS)
        check_choices("activations", self.activations, list(ACTIVATIONS))
        if self.norm not in norm_names() or self.norm == "none":
            raise UsageError(
                f"norm must be a normalization (not 'none'), got {self.norm!r}; "
                f"valid: {', '.join(n for n in norm_names() if n != 'none')}"
            )
        check_common(self)


def placement_cells(config: PlacementConfig) -> list[Cell]:
    """One cell per activation x placement x seed."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.epochs * (config.test_subset or 10_000)
    return [
        Cell(
            "placement",
            (("activation", activation), ("placement", placement)),
            seed,
            estimate_seconds(examples, config.batch_size, config.norm) + eval_seconds(tests),
        )
        for activation in config.activations
        for placement in config.placements
        for seed in seed_list(config.seeds)
    ]


def run_placement_cell(config: PlacementConfig, data: Any, cell: Cell) -> dict[str, Any]:
    """Train one LeNet with the norm at ``cell``'s placement and activation."""
    from normlab.train.engine import build_model, fit

    params = cell.params
    train = train_config(
        config,
        norm=config.norm,
        activation=params["activation"],
        placement=params["placement"],
        seed=cell.seed,
    )
    return history_record(fit(build_model(train), data, train, progress=False))


def summarize_placement(
    config: PlacementConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per activation and placement: final test accuracy and loss, mean ± std."""
    rows = []
    for activation in config.activations:
        for placement in config.placements:
            runs = [
                results[c.key]
                for c in cells
                if c.params == {"activation": activation, "placement": placement}
            ]
            finished = [r for r in runs if r["final"] is not None]
            rows.append(
                {
                    "activation": activation,
                    "placement": placement,
                    "test_accuracy": mean_std_dict(
                        [None if r["final"] is None else r["final"]["test_accuracy"] for r in runs]
                    ),
                    "test_loss": mean_std_dict(
                        [None if r["final"] is None else r["final"]["test_loss"] for r in runs]
                    ),
                    "per_epoch_test_accuracy": curve_mean_std(
                        [[e["test_accuracy"] for e in r["epochs"]] for r in finished]
                    ),
                    "diverged": sum(bool(r["diverged"]) for r in runs),
                    "seeds": len(runs),
                }
            )
    return {"rows": rows, "norm": config.norm}


PLACEMENT = Experiment(
    name="placement",
    title="Before or after the activation?",
    config_type=PlacementConfig,
    cells=placement_cells,
    run_cell=run_placement_cell,
    summarize=summarize_placement,
)


def run_placement(
    config: PlacementConfig | None = None,
    data: Any | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Train LeNet with the norm before and after each activation; the summary.

    Returns:
        ``{"rows": [{"activation", "placement", "test_accuracy": {mean, std, n, values},
        "test_loss": {...}, "diverged", "seeds"}, ...], "norm": "batch", ...}``.
    """
    return run_experiment(
        PLACEMENT,
        config or PlacementConfig(),
        data,
        store=store,
        progress=progress,
        data_dir=data_dir,
    )
