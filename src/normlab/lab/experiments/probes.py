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
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, seed_list
from normlab.lab.common import (
    LENET,
    check_choices,
    check_common,
    check_positive_int,
    curve_mean_std,
    history_record,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, TableSpec
from normlab.lab.figures import percent
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt3,
    fmt_num,
    fmt_pct,
    label,
    pct,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from normlab.data import Dataset

__all__ = [
    "PROBE",
    "LayerCurves",
    "LayerStats",
    "Probe",
    "ProbeConfig",
    "ProbeRuns",
    "ProbeSummary",
    "Smoothness",
    "layer_statistics",
    "probe_steps",
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
    from torch import nn

    if isinstance(module, nn.Sigmoid):
        return (output < eps) | (output > 1 - eps)
    if isinstance(module, nn.Tanh):
        return output.abs() > 1 - 2 * eps
    return output <= 0  # ReLU (dead), GELU (close enough: nearly no gradient below 0)


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
    import torch

    with torch.no_grad():
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
    import torch
    import torch.nn.functional as F

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
    import torch

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


@dataclass(frozen=True)
class LayerCurves:
    """One layer's pre-activations along the probe steps, mean ± std across seeds."""

    mean: Curve
    std: Curve
    saturation: Curve  # fraction of flat units (saturated sigmoid, zero ReLU)
    percentiles_seed0: list[list[float]]  # per step: 15th, 50th, 85th (seed 0)


@dataclass(frozen=True)
class ProbeRuns:
    """Every seed of one activation x norm, along the probe steps."""

    steps: list[int]
    smoothness: dict[str, Curve]  # measure (SMOOTHNESS_KEYS) -> curve
    trajectory_mean: dict[str, float | None]  # measure -> mean over the probes after 0
    layers: dict[str, LayerCurves]  # "conv1", ... -> its curves
    diverged: int
    final_test_accuracy: list[float | None]  # per seed
    final_test_loss: list[float | None]  # per seed
    num_classes: int


@dataclass(frozen=True)
class ActivationProbes:
    """One activation: per norm, its runs."""

    norms: dict[str, ProbeRuns]


@dataclass(frozen=True)
class ProbeSummary:
    """Per activation, per norm, the probes; the step sizes along the gradient."""

    activations: dict[str, ActivationProbes]
    step_sizes: list[float]  # eta = multiple x lr


class Probe(Experiment[ProbeConfig, ProbeSummary]):
    """Train every activation x norm for every seed, probing along the way."""

    name = "probe"
    title = "Inside the network"
    introduction = (
        "What batch norm changes inside the network, with the tutorial's sigmoid and with "
        "ReLU (Santurkar et al.'s VGG): the pre-activations of each layer on a fixed batch "
        "of training images (Ioffe & Szegedy's 'internal covariate shift' picture: "
        "percentiles, spread, and the fraction of flat units: a sigmoid within 0.05 of 0 "
        "or 1, a ReLU at 0), and Santurkar et al. (2018)'s loss-landscape measures: "
        "stepping along the gradient by several step sizes, the range of the loss (loss "
        "variation), the largest change of the gradient (ℓ2) and that change per unit "
        "step (effective β-smoothness)."
    )
    config_type = ProbeConfig
    summary_type = ProbeSummary
    command = ("probe",)
    options = (
        Option("--norms", "norms", "list", "norms to probe (default batch,none)", "A,B,..."),
        Option("--probes", "probes", "int>=2", "probe points over training (default 9)", "N"),
        Option("--probe-batch", "probe_batch", "int>=2",
               "training images every probe uses (default 256)", "N"),
        Option("--step-sizes", "step_sizes", "float-list",
               "steps along the gradient, in multiples of lr (default 0.5,1,2,4)", "A,B,..."),
        Option("--lr", "lr", "float", "SGD learning rate (default 0.03)", "LR"),
    )  # fmt: skip

    def study_config(self, *, quick: bool, dataset: str, device: str, syncbn: bool) -> ProbeConfig:
        if quick:
            return ProbeConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500,
                seeds=2, epochs=1, probes=5,
            )  # fmt: skip
        return ProbeConfig(dataset=dataset, device=device)

    def models(self, config: ProbeConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: ProbeConfig) -> list[Cell]:
        """One cell per activation x norm x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        probe_cost = config.probes * (1 + len(config.step_sizes)) * 3 * config.probe_batch
        return [
            Cell(
                self.name,
                (("activation", activation), ("norm", norm)),
                seed,
                estimate_seconds(examples, config.batch_size, norm)
                + estimate_seconds(probe_cost, config.probe_batch, norm),
            )
            for activation in config.activations
            for norm in config.norms
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: ProbeConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
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

    def summarize(
        self, config: ProbeConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> ProbeSummary:
        """Per activation and norm: each measure along the probe steps, mean ± std across
        seeds, and its mean over the steps after the first (the trajectory, not the
        initialisation)."""
        activations: dict[str, ActivationProbes] = {}
        for activation in config.activations:
            norms: dict[str, ProbeRuns] = {}
            for norm in config.norms:
                runs = [
                    results[c.key]
                    for c in cells
                    if c.params == {"activation": activation, "norm": norm}
                ]
                norms[norm] = _summarize_runs(runs)
            activations[activation] = ActivationProbes(norms=norms)
        return ProbeSummary(
            activations=activations, step_sizes=[eta * config.lr for eta in config.step_sizes]
        )

    def findings(self, summary: ProbeSummary) -> list[Finding]:
        return probe_findings(summary)

    def table(self, summary: ProbeSummary) -> TableSpec:
        from normlab.report import Column

        rows = []
        for activation, group in summary.activations.items():
            for norm, s in group.norms.items():
                t = s.trajectory_mean
                layers = s.layers
                flat = max(v.saturation.mean[-1] for v in layers.values()) if layers else None
                rows.append(
                    {
                        "activation": activation,
                        "norm": norm,
                        "loss_variation": t.get("loss_variation"),
                        "gradient_change": t.get("gradient_change"),
                        "beta": t.get("beta_smoothness"),
                        "flat": flat,
                        "accuracy": pm(seed_stats(s.final_test_accuracy)),
                    }
                )
        columns = [
            Column("activation"),
            Column("norm"),
            Column("loss_variation", "loss variation"),
            Column("gradient_change", "gradient change"),
            Column("beta", "β-smoothness"),
            Column("flat", "max saturated/inactive (end)", fmt="percent"),
            Column("accuracy", "test accuracy", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: ProbeSummary) -> list[FigureSpec]:
        figures = [
            FigureSpec(
                "probe-smoothness",
                probe_smoothness_figure(summary),
                "Loss-landscape smoothness along the trajectory (Santurkar et al. 2018): "
                "lower is smoother.",
            )
        ]
        for activation in summary.activations:
            caption = (
                f"Pre-activations of each layer during training ({activation}): percentiles "
                "(seed 0), standard deviation and the fraction of flat units."
            )
            figures.append(
                FigureSpec(
                    f"probe-layers-{activation}",
                    probe_layers_figure(summary, activation),
                    caption,
                )
            )
        return figures


PROBE = Probe()


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


def _mean_after_start(values: Sequence[float]) -> float | None:
    """The mean over the probes after step 0 (finite values only)."""
    rest = [v for v in values[1:] if v is not None and math.isfinite(v)]
    return math.fsum(rest) / len(rest) if rest else None


def _summarize_runs(runs: list[Mapping[str, Any]]) -> ProbeRuns:
    common = min(len(r["probes"]) for r in runs)
    steps = [p["step"] for p in runs[0]["probes"][:common]]
    smooth = {
        key: curve_mean_std([[p["smoothness"][key] for p in r["probes"][:common]] for r in runs])
        for key in SMOOTHNESS_KEYS
    }
    layer_names = [s["layer"] for s in runs[0]["probes"][0]["layers"]] if common else []

    def layer_curve(i: int, key: str) -> Curve:
        return curve_mean_std([[p["layers"][i][key] for p in r["probes"][:common]] for r in runs])

    layers = {
        name: LayerCurves(
            mean=layer_curve(i, "mean"),
            std=layer_curve(i, "std"),
            saturation=layer_curve(i, "saturation"),
            percentiles_seed0=[p["layers"][i]["percentiles"] for p in runs[0]["probes"]],
        )
        for i, name in enumerate(layer_names)
    }
    return ProbeRuns(
        steps=steps,
        smoothness=smooth,
        trajectory_mean={key: _mean_after_start(smooth[key].mean) for key in SMOOTHNESS_KEYS},
        layers=layers,
        diverged=sum(bool(r["diverged"]) for r in runs),
        final_test_accuracy=[
            None if r["final"] is None else r["final"]["test_accuracy"] for r in runs
        ],
        final_test_loss=[None if r["final"] is None else r["final"]["test_loss"] for r in runs],
        num_classes=runs[0]["num_classes"],
    )


# ================================================================================ findings
SMOOTHNESS_NAMES = {
    "loss_variation": "loss variation",
    "gradient_change": "gradient change",
    "beta_smoothness": "effective beta-smoothness",
}


def probe_findings(summary: ProbeSummary) -> list[Finding]:
    """Per activation: Santurkar et al.'s smoothness with and without batch norm,
    saturation (sigmoid) or inactive units (ReLU), and the drift of the pre-activations."""
    findings: list[Finding] = []
    for activation, group in summary.activations.items():
        findings.extend(_probe_activation_findings(activation, group.norms))
    return findings


def _probe_activation_findings(activation: str, norms: Mapping[str, ProbeRuns]) -> list[Finding]:
    findings: list[Finding] = []
    if "batch" in norms and "none" in norms:
        with_bn, without = norms["batch"].trajectory_mean, norms["none"].trajectory_mean
        parts, smaller, numbers = [], 0, {}
        compared = 0
        for key, name in SMOOTHNESS_NAMES.items():
            a, b = with_bn.get(key), without.get(key)
            if a is None or b is None:
                continue
            compared += 1
            smaller += a < b
            ratio = b / a if a > 0 else math.inf
            parts.append(f"{name} {fmt_num(a)} with batch norm vs {fmt_num(b)} without "
                         f"({fmt_num(ratio)}x)")  # fmt: skip
            numbers[f"{key}_batch"] = float(fmt_num(a))
            numbers[f"{key}_none"] = float(fmt_num(b))
        if compared:
            plateau = _plateau_note(norms["none"])
            if plateau:
                verdict = INCONCLUSIVE  # a network that does not learn is no comparison
            elif smaller == compared:
                verdict = AGREES
            elif smaller == 0:
                verdict = DISAGREES
            else:
                verdict = INCONCLUSIVE
            findings.append(
                Finding(
                    "probe",
                    f"With {activation}, along the training trajectory (mean over the probes "
                    "after step 0): " + "; ".join(parts) + "." + plateau,
                    claim=(
                        "Santurkar et al. (2018) find all three much smaller with batch norm: "
                        "a smoother loss landscape, not less internal covariate shift, is what "
                        "helps."
                    ),
                    verdict=verdict,
                    numbers=numbers,
                )
            )
    flat_units = "saturated" if activation in ("sigmoid", "tanh") else "inactive (zero)"
    for norm in ("none", "batch"):
        if norm not in norms or not norms[norm].layers:
            continue
        layers = norms[norm].layers
        final = {name: stats.saturation.mean[-1] for name, stats in layers.items()}
        start = {name: stats.saturation.mean[0] for name, stats in layers.items()}
        worst = max(final, key=final.get)
        findings.append(
            Finding(
                "probe",
                f"With {activation} and {label(norm)}, the layer with the most {flat_units} "
                f"units at the end is {worst}: {fmt_pct(final[worst])} (at the start: "
                f"{fmt_pct(start[worst])}).",
                numbers={"final_fraction": pct(final[worst]), "start_fraction": pct(start[worst])},
            )
        )
    if "batch" in norms and "none" in norms and norms["none"].layers:
        drift = {}
        for norm in ("batch", "none"):
            stds = {name: s.std.mean for name, s in norms[norm].layers.items()}
            drift[norm] = {name: (v[0], v[-1]) for name, v in stds.items()}
        layer = max(drift["none"], key=lambda n: _log_ratio(*drift["none"][n]))
        a0, a1 = drift["none"][layer]
        b0, b1 = drift["batch"][layer]
        findings.append(
            Finding(
                "probe",
                f"With {activation}, the spread of the {layer} pre-activations moves most without "
                f"normalization: its std goes from {fmt3(a0)} to {fmt3(a1)}; with batch norm "
                f"from {fmt3(b0)} to {fmt3(b1)}.",
                claim=(
                    "Ioffe & Szegedy (2015) motivate batch norm by this drift of each layer's "
                    "input distribution during training (their Figure 1: a sigmoid's input, "
                    "drifting without batch norm, stable with it)."
                ),
                verdict=AGREES if _log_ratio(a0, a1) > _log_ratio(b0, b1) else DISAGREES,
                numbers={
                    "none_start": float(fmt3(a0)),
                    "none_end": float(fmt3(a1)),
                    "batch_start": float(fmt3(b0)),
                    "batch_end": float(fmt3(b1)),
                },
            )
        )
    return findings


def _log_ratio(start: float, end: float) -> float:
    """``|ln(end / start)|``: how far a positive quantity moved, up or down (0 if unknown)."""
    if not (start > 0 and end > 0 and math.isfinite(start) and math.isfinite(end)):
        return 0.0
    return abs(math.log(end / start))


PLATEAU_TOLERANCE = 0.05  # nats from ln(classes): the loss of a uniform guess


def _plateau_note(plain: ProbeRuns) -> str:
    """A sentence when the plain network's test loss never left the uniform-guess plateau
    (a flat landscape is smooth for the wrong reason), else ""."""
    losses = [v for v in plain.final_test_loss if v is not None and math.isfinite(v)]
    classes = plain.num_classes
    if not losses or not classes:
        return ""
    loss = math.fsum(losses) / len(losses)
    uniform = math.log(classes)
    if abs(loss - uniform) > PLATEAU_TOLERANCE:
        return ""
    return (
        f" Without normalization the test loss ended at {loss:.3f}, within "
        f"{PLATEAU_TOLERANCE} of ln {classes} = {uniform:.3f} (a uniform guess): that "
        "landscape is flat because training has not left the initial plateau."
    )


# ================================================================================= figures
def probe_smoothness_figure(summary: ProbeSummary) -> Figure:
    """Santurkar et al.'s three measures along the training steps, with and without
    batch norm (log scale); one row per activation."""
    keys = (
        ("loss_variation", "loss variation"),
        ("gradient_change", "gradient change (ℓ2)"),
        ("beta_smoothness", "effective β-smoothness"),
    )
    from normlab.report.plots import new_figure, plot_lines, style

    activations = summary.activations
    rows = max(len(activations), 1)
    with style():
        fig, axes = new_figure(nrows=rows, ncols=3, width=15.0, height=3.9 * rows)
        grid = axes.reshape(rows, 3)
        for r, (activation, group) in enumerate(activations.items()):
            for c, (key, title) in enumerate(keys):
                ax = grid[r, c]
                series, steps = {}, None
                for norm, s in group.norms.items():
                    values = np.asarray(s.smoothness[key].values, dtype=np.float64)
                    if values.size:
                        steps = s.steps[: values.shape[1]]
                        series[label(norm)] = np.where(values > 0, values, np.nan)
                if series and steps is not None:
                    plot_lines(ax, steps, series)
                    ax.legend(fontsize=8)
                ax.set_yscale("log")
                ax.set_title(f"{title} ({activation})")
                if r == rows - 1:
                    ax.set_xlabel("training step")
    return fig


def probe_layers_figure(summary: ProbeSummary, activation: str) -> Figure:
    """Per layer (columns), for one activation: the pre-activations' median with the
    15-85th percentile band (seed 0), their std, and the fraction of flat units
    (saturated sigmoid, zero ReLU), along the steps, with and without batch norm."""
    from normlab.report.plots import PALETTE, new_figure, plot_lines, style

    norms = summary.activations[activation].norms
    layer_names = next((list(s.layers) for s in norms.values() if s.layers), [])
    cols = max(len(layer_names), 1)
    flat = "saturated" if activation in ("sigmoid", "tanh") else "inactive"
    with style():
        fig, axes = new_figure(nrows=3, ncols=cols, width=3.6 * cols + 1, height=8.5)
        grid = axes.reshape(3, cols)
        for c, layer in enumerate(layer_names):
            for index, (norm, s) in enumerate(norms.items()):
                if layer not in s.layers:
                    continue
                stats = s.layers[layer]
                color = PALETTE[index % len(PALETTE)]
                steps = s.steps
                pcts = np.asarray(stats.percentiles_seed0, dtype=np.float64)
                n = min(len(steps), len(pcts))
                grid[0, c].plot(steps[:n], pcts[:n, 1], color=color, label=label(norm))
                grid[0, c].fill_between(steps[:n], pcts[:n, 0], pcts[:n, 2], color=color,
                                        alpha=0.2, lw=0)  # fmt: skip
                std_values = np.asarray(stats.std.values)
                flat_values = percent(stats.saturation.values)
                if std_values.size:
                    plot_lines(grid[1, c], steps[: std_values.shape[1]],
                               {label(norm): std_values}, colors=[color])  # fmt: skip
                    plot_lines(grid[2, c], steps[: flat_values.shape[1]],
                               {label(norm): flat_values}, colors=[color])  # fmt: skip
            grid[0, c].set_title(f"{layer} ({activation})")
            grid[2, c].set_xlabel("training step")
        if layer_names:
            grid[0, 0].set_ylabel("pre-activation\n15/50/85th pct")
            grid[1, 0].set_ylabel("pre-activation std")
            grid[2, 0].set_ylabel(f"{flat} units (%)")
            grid[0, 0].legend(fontsize=8)
    return fig
