"""What normalization does inside the network: layer statistics and loss-landscape
smoothness along the training trajectory, with and without batch norm.

**Layer statistics** (the "internal covariate shift" picture of Ioffe & Szegedy 2015,
their Figure 1): at probe steps, the inputs of each activation (the pre-activations)
on a fixed batch of training images: mean, standard deviation, the 15th/50th/85th
percentiles over all units, and the fraction of saturated sigmoid units,
``sigma(z) < eps or sigma(z) > 1 - eps`` (there the derivative ``sigma(1 - sigma)`` is
below ``eps``, so almost no gradient flows).

**Smoothness** (Santurkar et al. 2018, Section 3.1 and Figure 4): at probe steps, with
``g = grad L(w)`` on the fixed batch, step along the gradient by ``eta`` in
``step_sizes * lr`` and measure

- loss variation: ``max - min`` of ``{L(w)} U {L(w - eta g)}``;
- gradient change ("gradient predictiveness"): ``max_eta ||grad L(w - eta g) - g||_2``;
- effective beta-smoothness: ``max_eta ||grad L(w - eta g) - g||_2 / ||eta g||_2``.

They report all three much smaller (smoother) with batch norm. All probes run on a
copy of the model in train mode (batch statistics, as training sees them), so the
training run itself is untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.errors import UsageError
from normlab.lab.cells import Cell, CellStore, estimate_seconds, seed_list
from normlab.lab.common import (
    Experiment,
    check_choices,
    check_common,
    check_positive_int,
    curve_mean_std,
    history_record,
    run_experiment,
    train_config,
)

__all__ = [
    "PROBE",
    "LayerStats",
    "ProbeConfig",
    "Smoothness",
    "layer_statistics",
    "probe_steps",
    "run_probe",
    "smoothness",
]

PERCENTILES = (15.0, 50.0, 85.0)  # as Ioffe & Szegedy's Figure 1


@dataclass(frozen=True)
class LayerStats:
    """The pre-activations of one activation layer on one batch."""

    layer: str  # "conv1", "conv2", "fc1", "fc2"
    mean: float
    std: float  # over all units and examples (ddof=0)
    percentiles: tuple[float, float, float]  # 15th, 50th, 85th
    saturation: float  # fraction of activations within eps of their bounds


@dataclass(frozen=True)
class Smoothness:
    """Santurkar et al.'s three measures at one point ``w`` of the trajectory."""

    loss: float  # L(w)
    loss_variation: float  # max - min of the losses along the gradient
    gradient_change: float  # max ||grad L(w - eta g) - g||
    beta_smoothness: float  # max ||grad L(w - eta g) - g|| / ||eta g||
    gradient_norm: float  # ||g||


def activation_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The activation modules of a :class:`~normlab.models.lenet.LeNet`, named ``conv1``,
    ``conv2``, ``fc1``, ``fc2`` (the layer whose output they take), in order."""
    from normlab.models.lenet import ACTIVATIONS

    kinds = tuple(ACTIVATIONS.values())
    found = [m for m in model.modules() if isinstance(m, kinds)]
    names = ["conv1", "conv2", "fc1", "fc2"]
    if len(found) != len(names):
        names = [f"act{i + 1}" for i in range(len(found))]
    return list(zip(names, found, strict=True))


def _saturated(output: torch.Tensor, module: nn.Module, eps: float) -> torch.Tensor:
    """Where the activation is flat: near the bounds of sigmoid/tanh, or 0 for ReLU."""
    if isinstance(module, nn.Sigmoid):
        return (output < eps) | (output > 1 - eps)
    if isinstance(module, nn.Tanh):
        return output.abs() > 1 - 2 * eps
    return output <= 0  # ReLU (dead), GELU (close enough: nearly no gradient below 0)


@torch.no_grad()
def layer_statistics(
    model: nn.Module, inputs: torch.Tensor, saturation_eps: float = 0.05
) -> list[LayerStats]:
    """Pre-activation statistics of every activation layer on ``inputs``.

    Runs a copy of ``model`` in train mode (batch statistics), so ``model``'s running
    statistics do not change.

    Args:
        inputs: a normalised batch, shape ``(B, 1, 28, 28)``.
        saturation_eps: an activation within this of its bound counts as saturated.
    """
    twin = copy.deepcopy(model).train()
    captured: list[tuple[str, torch.Tensor, torch.Tensor, nn.Module]] = []
    hooks = []
    for name, module in activation_layers(twin):

        def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor,
                 name: str = name) -> None:  # fmt: skip
            captured.append((name, args[0].detach(), out.detach(), mod))

        hooks.append(module.register_forward_hook(hook))
    try:
        twin(inputs)
    finally:
        for handle in hooks:
            handle.remove()
    stats = []
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)
    for name, pre, out, module in captured:
        values = pre.double().flatten()
        quantiles = torch.quantile(values, q).tolist() if values.numel() else [math.nan] * 3
        stats.append(
            LayerStats(
                layer=name,
                mean=float(values.mean()),
                std=float(values.std(correction=0)),
                percentiles=(quantiles[0], quantiles[1], quantiles[2]),
                saturation=float(_saturated(out, module, saturation_eps).double().mean()),
            )
        )
    return stats


def _loss_and_grad(
    model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, torch.Tensor]:
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads]).double()


def smoothness(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    step_sizes: Sequence[float],
) -> Smoothness:
    """Santurkar et al.'s loss variation, gradient change and effective beta-smoothness
    at the current weights ``w`` of ``model``, along ``-g`` with ``g = grad L(w)``.

    Formula: for each ``eta`` in ``step_sizes``, ``w_eta = w - eta g``;
    ``loss_variation = max L - min L`` over ``w`` and every ``w_eta``;
    ``gradient_change = max_eta ||grad L(w_eta) - g||``;
    ``beta_smoothness = max_eta ||grad L(w_eta) - g|| / (eta ||g||)``.
    Non-finite losses or gradients make the measures NaN.

    Runs on a copy of ``model`` in train mode; ``model`` is untouched.
    """
    if not step_sizes or any(not eta > 0 for eta in step_sizes):
        raise UsageError(f"step_sizes must be positive numbers, got {list(step_sizes)!r}")
    twin = copy.deepcopy(model).train()
    params = [p for p in twin.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    loss0, g0 = _loss_and_grad(twin, params, inputs, targets)
    g_norm = float(g0.norm())
    losses, changes, betas = [loss0], [], []
    for eta in step_sizes:
        with torch.no_grad():
            offset = 0
            for p, p0 in zip(params, start, strict=True):
                n = p.numel()
                p.copy_(p0 - eta * g0[offset : offset + n].view_as(p).to(p.dtype))
                offset += n
        loss, g = _loss_and_grad(twin, params, inputs, targets)
        change = float((g - g0).norm())
        losses.append(loss)
        changes.append(change)
        betas.append(change / (eta * g_norm) if g_norm > 0 else math.nan)
    finite = all(math.isfinite(v) for v in [*losses, *changes, g_norm])
    if not finite:
        return Smoothness(loss0, math.nan, math.nan, math.nan, g_norm)
    return Smoothness(
        loss=loss0,
        loss_variation=max(losses) - min(losses),
        gradient_change=max(changes),
        beta_smoothness=max(betas),
        gradient_norm=g_norm,
    )


def probe_steps(total_steps: int, probes: int) -> list[int]:
    """``probes`` step indices spread evenly over ``0 .. total_steps`` (0 is before the
    first update, ``total_steps`` after the last), without repeats."""
    check_positive_int("probes", probes, 2)
    check_positive_int("total_steps", total_steps)
    return sorted({round(i * total_steps / (probes - 1)) for i in range(probes)})


# ============================================================================ experiment
@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probes (defaults: the study's budget)."""

    norms: tuple[str, ...] = ("batch", "none")  # with and without batch norm
    activations: tuple[str, ...] = ("sigmoid", "relu")  # the tutorial's; Santurkar's VGG's
    seeds: int = 2
    epochs: int = 2
    probes: int = 9  # probe points over training, the first before any update
    probe_batch: int = 256  # the fixed training images every probe uses
    step_sizes: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # multiples of lr (Santurkar: 4)
    saturation_eps: float = 0.05  # sigmoid within 0.05 of 0 or 1: slope below 0.05
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    lr: float = 0.03  # the tutorial's
    momentum: float = 0.9
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.models.lenet import ACTIVATIONS
        from normlab.nn.registry import norm_names

        check_choices("norms", self.norms, norm_names())
        check_choices("activations", self.activations, list(ACTIVATIONS))
        check_positive_int("probes", self.probes, 2)
        check_positive_int("probe_batch", self.probe_batch, 2)
        if isinstance(self.step_sizes, str) or not self.step_sizes:
            raise UsageError(f"step_sizes must be a non-empty list, got {self.step_sizes!r}")
        for eta in self.step_sizes:
            if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta > 0:
                raise UsageError(f"step_sizes must be positive numbers, got {eta!r}")
        if not 0 < self.saturation_eps < 0.5:
            raise UsageError(f"saturation_eps must be in (0, 0.5), got {self.saturation_eps!r}")
        check_common(self)
        if self.train_subset is not None and self.probe_batch > self.train_subset:
            raise UsageError(
                f"probe_batch {self.probe_batch} is larger than train_subset {self.train_subset}"
            )


def probe_cells(config: ProbeConfig) -> list[Cell]:
    """One cell per activation x norm x seed."""
    examples = config.epochs * (config.train_subset or 60_000)
    probe_cost = config.probes * (1 + len(config.step_sizes)) * 3 * config.probe_batch
    return [
        Cell(
            "probe",
            (("activation", activation), ("norm", norm)),
            seed,
            estimate_seconds(examples, config.batch_size, norm)
            + estimate_seconds(probe_cost, config.probe_batch, norm),
        )
        for activation in config.activations
        for norm in config.norms
        for seed in seed_list(config.seeds)
    ]


def run_probe_cell(config: ProbeConfig, data: Any, cell: Cell) -> dict[str, Any]:
    """Train one LeNet and probe it at evenly spread steps."""
    from normlab.data import normalize_images, num_batches
    from normlab.train.engine import StepInfo, build_model, fit

    params = cell.params
    train = train_config(
        config, norm=params["norm"], activation=params["activation"], seed=cell.seed
    )
    model = build_model(train)
    batch = min(config.probe_batch, len(data.train_labels))
    x = normalize_images(data.train_images[:batch]).to(train.device)
    y = data.train_labels[:batch].to(train.device)
    steps_per_epoch = num_batches(len(data.train_labels), train.batch_size)
    when = set(probe_steps(steps_per_epoch * train.epochs, config.probes))
    step_sizes = [eta * train.lr for eta in config.step_sizes]
    records: list[dict[str, Any]] = []

    def probe(step: int) -> None:
        stats = layer_statistics(model, x, config.saturation_eps)
        smooth = smoothness(model, x, y, step_sizes)
        records.append(
            {
                "step": step,
                "layers": [_layer_dict(s) for s in stats],
                "smoothness": {k: getattr(smooth, k) for k in Smoothness.__dataclass_fields__},
            }
        )

    def on_step(info: StepInfo) -> None:
        if info.step + 1 in when:  # after the update of step k: k + 1 updates done
            probe(info.step + 1)

    if 0 in when:
        probe(0)
    history = fit(model, data, train, progress=False, on_step=on_step)
    record = history_record(history)
    record["probes"] = records
    record["num_classes"] = len(data.classes)
    return record


def _layer_dict(stats: LayerStats) -> dict[str, Any]:
    return {
        "layer": stats.layer,
        "mean": stats.mean,
        "std": stats.std,
        "percentiles": list(stats.percentiles),
        "saturation": stats.saturation,
    }


SMOOTHNESS_KEYS = ("loss_variation", "gradient_change", "beta_smoothness", "loss")
LAYER_KEYS = ("mean", "std", "saturation")


def summarize_probe(
    config: ProbeConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per activation and norm: each measure along the probe steps, mean ± std across
    seeds, and its mean over the steps after the first (the trajectory, not the
    initialisation)."""
    activations: dict[str, Any] = {}
    for activation in config.activations:
        norms: dict[str, Any] = {}
        for norm in config.norms:
            runs = [
                results[c.key]
                for c in cells
                if c.params == {"activation": activation, "norm": norm}
            ]
            norms[norm] = _summarize_runs(runs)
        activations[activation] = {"norms": norms}
    return {
        "activations": activations,
        "step_sizes": [eta * config.lr for eta in config.step_sizes],
    }


def _summarize_runs(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    common = min(len(r["probes"]) for r in runs)
    steps = [p["step"] for p in runs[0]["probes"][:common]]
    smooth = {
        key: curve_mean_std([[p["smoothness"][key] for p in r["probes"][:common]] for r in runs])
        for key in SMOOTHNESS_KEYS
    }
    layer_names = [s["layer"] for s in runs[0]["probes"][0]["layers"]] if common else []
    layers = {
        name: {
            key: curve_mean_std([[p["layers"][i][key] for p in r["probes"][:common]] for r in runs])
            for key in LAYER_KEYS
        }
        | {"percentiles_seed0": [p["layers"][i]["percentiles"] for p in runs[0]["probes"]]}
        for i, name in enumerate(layer_names)
    }
    return {
        "steps": steps,
        "smoothness": smooth,
        "trajectory_mean": {key: _mean_after_start(smooth[key]["mean"]) for key in SMOOTHNESS_KEYS},
        "layers": layers,
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "final_test_accuracy": [
            None if r["final"] is None else r["final"]["test_accuracy"] for r in runs
        ],
        "final_test_loss": [None if r["final"] is None else r["final"]["test_loss"] for r in runs],
        "num_classes": runs[0]["num_classes"],
    }


def _mean_after_start(values: Sequence[float]) -> float | None:
    """The mean over the probes after step 0 (finite values only)."""
    rest = [v for v in values[1:] if v is not None and math.isfinite(v)]
    return math.fsum(rest) / len(rest) if rest else None


PROBE = Experiment(
    name="probe",
    title="Inside the network",
    config_type=ProbeConfig,
    cells=probe_cells,
    run_cell=run_probe_cell,
    summarize=summarize_probe,
)


def run_probe(
    config: ProbeConfig | None = None,
    data: Any | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Train every activation x norm for every seed, probing along the way; the summary.

    Returns:
        ``{"activations": {act: {"norms": {name: {"steps": [...], "smoothness":
        {measure: {mean, std, values}}, "trajectory_mean": {measure: value}, "layers":
        {layer: {mean|std|saturation: {mean, std, values}, "percentiles_seed0": [...]}},
        "final_test_loss": [...]}}}}, "step_sizes": [...]}``.
    """
    return run_experiment(
        PROBE, config or ProbeConfig(), data, store=store, progress=progress, data_dir=data_dir
    )
