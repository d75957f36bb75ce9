"""Normalization in a small transformer: where the norm goes, warm-up, which norm, and
batch norm's leak in a causal model.

A vision transformer (:class:`normlab.models.vit.VisionTransformer`, 7x7 patches -> 16
tokens) classifies Fashion-MNIST with each norm before its residual branches (pre-LN,
with learning-rate warm-up); the norms of ``warmup_norms`` are also trained after the
residual sums (post-LN) and without warm-up. Adam, warm-up linear over ``warmup_steps``
then linear decay to zero (without warm-up: the decay from the first step). Measured:

- test accuracy and training loss per arm (Zhu et al. 2025: DyT matches layer norm;
  Shen et al. 2020: batch norm falls behind layer norm);
- the gradient norm of each block's second feed-forward weight :math:`W^2` at
  initialisation, pre-LN against post-LN (Xiong et al. 2020, whose Figure 3 shows these
  norms growing towards the output for post-LN only);
- how far batch norm's batch statistics stray from its running statistics at each step
  of the second half of training, in the transformer and in LeNet on the same images
  trained the same way (Shen et al. 2020: transformers' batch statistics fluctuate far
  more):

  .. math::
      \\text{mean shift} = \\operatorname{mean}_c \\frac{|\\mu_{B,c} - \\hat\\mu_c|}
      {\\sqrt{\\hat\\sigma^2_c + \\epsilon}}, \\qquad
      \\text{variance shift} = \\operatorname{mean}_c \\frac{|\\sigma^2_{B,c} -
      \\hat\\sigma^2_c|}{\\hat\\sigma^2_c + \\epsilon}

  (:math:`\\hat\\mu, \\hat\\sigma^2` the running statistics before the step's update),
  averaged over the layers and the steps;
- a causal transformer (:class:`normlab.models.vit.NextRowTransformer`) predicting each
  image's next row from the rows above, mean squared error per pixel: with batch norm
  over (batch, time), each position's statistics include the later rows. The test loss
  is measured four ways: with batch statistics over whole sequences (as in training),
  with the running statistics, row by row (output ``t`` from rows ``0..t`` only,
  batch statistics of those rows: the prediction a causal model can make) and one
  sequence at a time; and the share of each output's gradient that comes from the later
  rows (:func:`future_share`: the leak itself).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, eval_seconds, seed_list
from normlab.lab.common import (
    LENET,
    check_choices,
    check_common,
    check_positive_int,
    curve_mean_std,
    downsample,
    pm,
    seed_stats,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.guide import CAUSAL, TRANSFORMERS, GuideRow, leaders, recommendation_text
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt3,
    fmt_num,
    fmt_pm,
    label,
    pct,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from normlab.data import Dataset

__all__ = [
    "TRANSFORMER",
    "CausalArm",
    "FluctuationReference",
    "InitGradients",
    "TrainedArm",
    "Transformer",
    "TransformerConfig",
    "TransformerSummary",
    "directional_verdict",
    "leak_status",
    "leak_verdict",
    "match_verdict",
    "zero_share_bound",
]

NORMS = ("layer", "rms", "dyt", "batch", "none")
WARMUP = {"on": True, "off": False}
CLASSIFY, GRADIENTS, NEXT_ROW, CNN = "classify", "init-gradients", "next-row", "cnn-reference"
MATCH_MARGIN_POINTS = 1.0  # two accuracies "match" when they differ by at most 1 point
IMAGE_ROWS = 28
NEXT_ROW_LOSSES = ("batch_stats_loss", "running_stats_loss", "row_by_row_loss", "one_sequence_loss")
NEXT_ROW_MLP_RATIO = 2  # NextRowTransformer's feed-forward width over the token width
PER_TOKEN_NORMS = ("layer", "rms")  # statistics of each token alone: no later row reaches it
LEAKS, NO_LEAK, UNCLEAR = "leaks", "zero up to rounding", "not separated from zero"
# Papers' figures. Shen et al. (2020, Table 1), IWSLT14 De-En BLEU: layer norm 35.5 (their
# PowerNorm's 35.9 less the 0.4 of their abstract), batch norm 34.4 (as their Table 1 reports).
SHEN_IWSLT14_BLEU = {"batch": 34.4, "layer": 35.5}
# Zhu et al. (2025), ViT-B top-1 on ImageNet-1K (%), as in the authors' results table.
ZHU_VIT_B_TOP1 = {"layer": 82.3, "dyt": 82.5}
# Time model on a 2-core CPU, one thread per worker: CPU seconds per image of one step
VIT_EXAMPLE_S = 3.6e-4  # forward + backward, 16 tokens, width 64, 4 blocks
CAUSAL_EXAMPLE_S = 5.4e-4  # 27 tokens
LENET_EXAMPLE_S = 0.9e-4


# ================================================================================ config
@dataclass(frozen=True)
class TransformerConfig:
    """Settings of the transformer experiment (defaults: the study's budget)."""

    norms: tuple[str, ...] = NORMS  # trained pre-LN with warm-up
    warmup_norms: tuple[str, ...] = ("layer",)  # also post-LN, and both without warm-up
    causal_norms: tuple[str, ...] = ("layer", "batch")  # the next-row model's norms
    seeds: int = 3
    epochs: int = 2
    dataset: str = "fashion-mnist"
    train_subset: int | None = 4_000
    test_subset: int | None = 1_000
    lr: float = 1e-2  # Adam's peak learning rate
    warmup_steps: int = 25  # linear warm-up (Xiong et al. warm up over 4000 steps of ~100k)
    batch_size: int = 64
    causal_batch_size: int = 16  # sequences per batch of the next-row model
    width: int = 64
    depth: int = 4
    heads: int = 4
    patch_size: int = 7
    gradient_batches: int = 4  # batches averaged for the gradients at initialisation
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        check_choices("norms", self.norms, norm_names())
        for name in ("warmup_norms", "causal_norms"):  # may be empty: no such cells
            if getattr(self, name):
                check_choices(name, getattr(self, name), norm_names())
        for name in ("width", "depth", "heads", "patch_size", "gradient_batches"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("warmup_steps", self.warmup_steps)
        check_positive_int("causal_batch_size", self.causal_batch_size, 2)
        if self.width % self.heads:
            raise UsageError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if IMAGE_ROWS % self.patch_size:
            raise UsageError(f"patch_size must divide {IMAGE_ROWS}, got {self.patch_size}")
        check_common(self)


# =============================================================================== summary
@dataclass(frozen=True)
class TrainedArm:
    """Every seed of the vision transformer with one norm, placement and warm-up."""

    norm: str
    placement: str  # "pre" or "post"
    warmup: bool
    test_accuracy: SeedStats
    train_loss: SeedStats  # mean over the last epoch's steps
    loss_curve: Curve  # training loss over windows of steps
    mean_shift: SeedStats  # batch statistics vs running ones (None without batch norm)
    variance_shift: SeedStats
    diverged: int
    seeds: int


@dataclass(frozen=True)
class InitGradients:
    """Gradient norms of each block's second feed-forward weight at initialisation."""

    norm: str
    placement: str
    per_layer: Curve  # (seeds, depth)
    last_to_first: SeedStats  # last block's norm / first block's norm, per seed


@dataclass(frozen=True)
class FluctuationReference:
    """LeNet with batch norm (ReLU) trained the same way: its batch statistics' shifts."""

    mean_shift: SeedStats
    variance_shift: SeedStats
    test_accuracy: SeedStats


@dataclass(frozen=True)
class CausalArm:
    """The next-row model with one norm: its losses (mean squared error per pixel)."""

    norm: str
    train_loss: SeedStats  # last epoch, batch statistics as trained
    batch_stats_loss: SeedStats  # test, batch statistics over whole sequences
    running_stats_loss: SeedStats  # test, running statistics (eval mode)
    row_by_row_loss: SeedStats  # test, output t from rows 0..t only
    one_sequence_loss: SeedStats  # test, batch statistics of one whole sequence
    future_share: SeedStats  # share of each output's gradient from later rows (train mode)
    leak: SeedStats  # min(running, row by row) - batch_stats_loss, per seed


@dataclass(frozen=True)
class TransformerSummary:
    """The trained arms, the gradients at initialisation, the CNN's fluctuation and the
    causal arms; the settings the findings quote."""

    arms: list[TrainedArm]
    gradients: list[InitGradients]
    reference: FluctuationReference | None
    causal: list[CausalArm]
    depth: int
    lr: float
    warmup_steps: int
    share_bound: float  # a later-rows share at most this is zero up to float32 rounding


# ============================================================================ experiment
class Transformer(Experiment[TransformerConfig, TransformerSummary]):
    """A small vision transformer and a causal one, with each norm."""

    name = "transformer"
    title = "Normalization in a transformer"
    introduction = (
        "A small vision transformer (16 patches of 7x7 pixels, 4 blocks) on Fashion-MNIST "
        "with layer norm, RMS norm, DyT, batch norm over the tokens, or none; the norm "
        "before the residual branches (pre-LN) or after the sums (post-LN), with and "
        "without learning-rate warm-up; the gradients at initialisation; how much batch "
        "norm's statistics fluctuate; and a causal transformer predicting each image's "
        "next row, where batch norm over (batch, time) sees the future."
    )
    config_type = TransformerConfig
    summary_type = TransformerSummary
    command = ("sweep", "transformer")
    options = (
        Option("--norms", "norms", "list",
               "transformer: norms trained pre-LN with warm-up", "A,B,..."),
        Option("--warmup-norms", "warmup_norms", "list",
               "transformer: norms also trained post-LN and without warm-up", "A,B,..."),
        Option("--causal-norms", "causal_norms", "list",
               "transformer: norms of the next-row model", "A,B,..."),
        Option("--lr", "lr", "float", "transformer: Adam's peak learning rate", "LR"),
        Option("--warmup-steps", "warmup_steps", "int", "transformer: warm-up steps", "N"),
        Option("--width", "width", "int", "transformer: token features", "D"),
        Option("--depth", "depth", "int", "transformer: blocks", "N"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> TransformerConfig:
        if quick:
            return TransformerConfig(
                dataset=dataset, device=device, train_subset=640, test_subset=200, seeds=2,
                epochs=1, warmup_steps=3, width=32, depth=2, gradient_batches=1,
            )  # fmt: skip
        return TransformerConfig(dataset=dataset, device=device)

    def models(self, config: TransformerConfig) -> tuple[str, ...]:
        """The vision transformer; the next-row transformer when ``causal_norms`` is set;
        LeNet, the fluctuation reference, when batch norm is among ``norms``."""
        return (
            "vision transformer",
            *(["next-row transformer"] if config.causal_norms else []),
            *([LENET] if "batch" in config.norms else []),
        )

    def cells(self, config: TransformerConfig) -> list[Cell]:
        """Classification arms, gradients at initialisation, the CNN reference and the
        next-row arms, each for every seed."""
        return [
            Cell(self.name, setting, seed, cost)
            for setting, cost in _settings(config)
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: TransformerConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """One setting, one seed: see :func:`run_setting`."""
        return run_setting(config, data, cell.params, cell.seed)

    def summarize(
        self,
        config: TransformerConfig,
        cells: list[Cell],
        results: Mapping[str, Mapping[str, Any]],
    ) -> TransformerSummary:
        def runs(**params: Any) -> list[Mapping[str, Any]]:
            return [results[c.key] for c in cells if c.params == params]

        arms = [
            _trained_arm(norm, placement, warmup, runs(task=CLASSIFY, norm=norm,
                         placement=placement, warmup=warmup))
            for norm, placement, warmup in _classify_arms(config)
        ]  # fmt: skip
        gradients = [
            _init_gradients(norm, placement, runs(task=GRADIENTS, norm=norm, placement=placement))
            for norm in _all_norms(config)
            for placement in ("pre", "post")
        ]
        reference = None
        if "batch" in config.norms:
            cnn = runs(task=CNN, norm="batch")
            reference = FluctuationReference(
                mean_shift=seed_stats([r["mean_shift"] for r in cnn]),
                variance_shift=seed_stats([r["variance_shift"] for r in cnn]),
                test_accuracy=seed_stats([r["test_accuracy"] for r in cnn]),
            )
        causal = [_causal_arm(n, runs(task=NEXT_ROW, norm=n)) for n in config.causal_norms]
        return TransformerSummary(
            arms=arms, gradients=gradients, reference=reference, causal=causal,
            depth=config.depth, lr=config.lr, warmup_steps=config.warmup_steps,
            share_bound=zero_share_bound(config.causal_batch_size, config.width, config.depth),
        )  # fmt: skip

    def findings(self, summary: TransformerSummary) -> list[Finding]:
        return transformer_findings(summary)

    def guide(self, summary: TransformerSummary) -> list[GuideRow]:
        rows = [transformer_guide(summary), causal_guide(summary)]
        return [row for row in rows if row is not None]

    def table(self, summary: TransformerSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "norm": label(a.norm),
                "placement": f"{a.placement}-LN",
                "warmup": "on" if a.warmup else "off",
                "accuracy": pm(a.test_accuracy),
                "loss": pm(a.train_loss, 1.0, ""),
                "shift": pm(a.variance_shift, 1.0, ""),
                "diverged": f"{a.diverged}/{a.seeds}",
            }
            for a in summary.arms
        ]
        rows += [
            {
                "norm": f"{label(c.norm)} (next row)",
                "placement": "pre-LN",
                "warmup": "on",
                "accuracy": None,
                "loss": pm(c.train_loss, 1.0, ""),
                "shift": None,
                "diverged": "",
            }
            for c in summary.causal
        ]
        columns = [
            Column("norm"),
            Column("placement", "placement"),
            Column("warmup", "warm-up"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "final train loss", align="right"),
            Column("shift", "batch variance shift", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: TransformerSummary) -> list[FigureSpec]:
        specs = [
            FigureSpec("transformer-accuracy", accuracy_figure(summary),
                       "Final test accuracy of the vision transformer per norm, placement "
                       "and warm-up (bars: mean, error bars: ±1 std, dots: seeds)."),
            FigureSpec("transformer-gradients", gradients_figure(summary),
                       "Gradient norm of each block's second feed-forward weight at "
                       "initialisation, pre-LN and post-LN (as Xiong et al. 2020, Figure 3)."),
        ]  # fmt: skip
        if any(not a.warmup for a in summary.arms):
            specs.append(
                FigureSpec("transformer-warmup", warmup_figure(summary),
                           "Training loss with and without warm-up, per norm and placement "
                           "trained both ways (mean ± std over seeds).")
            )  # fmt: skip
        if summary.causal:
            specs.append(
                FigureSpec("transformer-causal", causal_figure(summary),
                           "Next-row prediction: training loss and test loss with batch "
                           "statistics over whole sequences, with running statistics, and "
                           "row by row (only the rows above).")
            )  # fmt: skip
        return specs


TRANSFORMER = Transformer()


# ================================================================================= cells
def _all_norms(config: TransformerConfig) -> list[str]:
    return list(dict.fromkeys((*config.norms, *config.warmup_norms)))


def _classify_arms(config: TransformerConfig) -> list[tuple[str, str, str]]:
    """(norm, placement, warm-up): every norm pre-LN with warm-up; ``warmup_norms`` in
    both placements, with and without warm-up."""
    arms = [(norm, "pre", "on") for norm in config.norms]
    for norm in config.warmup_norms:
        for placement in ("pre", "post"):
            for warmup in WARMUP:
                if (norm, placement, warmup) not in arms:
                    arms.append((norm, placement, warmup))
    return arms


def _settings(config: TransformerConfig) -> list[tuple[tuple[tuple[str, Any], ...], float]]:
    """Every setting and its estimated seconds."""
    train = config.train_subset or 60_000
    test = config.test_subset or 10_000
    vit = config.epochs * train * VIT_EXAMPLE_S * _size_factor(config) + eval_seconds(test)
    settings: list[tuple[tuple[tuple[str, Any], ...], float]] = [
        ((("task", CLASSIFY), ("norm", n), ("placement", p), ("warmup", w)), vit)
        for n, p, w in _classify_arms(config)
    ]
    grads = config.gradient_batches * config.batch_size * VIT_EXAMPLE_S * _size_factor(config)
    settings += [
        ((("task", GRADIENTS), ("norm", n), ("placement", p)), grads)
        for n in _all_norms(config)
        for p in ("pre", "post")
    ]
    if "batch" in config.norms:
        settings.append(
            ((("task", CNN), ("norm", "batch")), config.epochs * train * LENET_EXAMPLE_S)
        )
    causal = (config.epochs * train + 14 * test) * CAUSAL_EXAMPLE_S * _size_factor(config)
    settings += [((("task", NEXT_ROW), ("norm", n)), causal) for n in config.causal_norms]
    return settings


def _size_factor(config: TransformerConfig) -> float:
    """The cost of the model relative to width 64, depth 4."""
    return (config.width / 64) ** 2 * config.depth / 4


# ============================================================================== training
def run_setting(
    config: TransformerConfig, data: Dataset, params: Mapping[str, Any], seed: int
) -> dict[str, Any]:
    """Compute one cell: train a classifier arm, measure gradients at initialisation,
    train the LeNet reference or the next-row model; JSON-ready numbers."""
    import torch

    torch.manual_seed(seed)
    task = params["task"]
    if task == CLASSIFY:
        model = _vision_transformer(config, params["norm"], params["placement"])
        return train_classifier(model, data, config, seed, WARMUP[params["warmup"]])
    if task == GRADIENTS:
        model = _vision_transformer(config, params["norm"], params["placement"])
        return {"per_layer": init_gradient_norms(model, data, config, seed)}
    if task == CNN:
        from normlab.models.lenet import LeNet

        model = LeNet(norm="batch", activation="relu").to(config.device)
        return train_classifier(model, data, config, seed, warmup=True)
    if task == NEXT_ROW:
        return train_next_row(config, data, params["norm"], seed)
    raise ValueError(f"unknown task {task!r}")


def _vision_transformer(config: TransformerConfig, norm: str, placement: str) -> nn.Module:
    from normlab.models.vit import VisionTransformer

    model = VisionTransformer(
        norm, placement, patch_size=config.patch_size, width=config.width, depth=config.depth,
        heads=config.heads,
    )  # fmt: skip
    return model.to(config.device)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate at ``step`` over its peak: linear warm-up over ``warmup_steps``
    (0: none), then linear decay to zero at ``total_steps``.

    Formula: ``(step + 1) / W`` for ``step < W``, else ``(T - step) / (T - W)``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class BatchStatsMonitor:
    """Records, at each training forward of every layer with running statistics, how far
    the batch's statistics are from the running ones (read before the layer updates them).

    The channels are dimension 1 of the layer's input; the statistics are over every
    other dimension (batch and tokens, or batch and space). ``records`` holds
    ``(step, mean shift, variance shift)``, see the module docstring.
    """

    def __init__(self, model: nn.Module) -> None:
        self.step = 0
        self.records: list[tuple[int, float, float]] = []
        self._hooks = [
            module.register_forward_pre_hook(self._record)
            for module in model.modules()
            if getattr(module, "running_mean", None) is not None
            and getattr(module, "running_var", None) is not None
        ]

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        import torch

        if not module.training:
            return
        with torch.no_grad():
            x = args[0].detach()
            dims = [d for d in range(x.dim()) if d != 1]
            eps = float(getattr(module, "eps", 1e-5))
            running_mean, running_var = module.running_mean, module.running_var
            mean_shift = (x.mean(dims) - running_mean).abs() / (running_var + eps).sqrt()
            var_shift = (x.var(dims) - running_var).abs() / (running_var + eps)
            self.records.append((self.step, float(mean_shift.mean()), float(var_shift.mean())))

    def shifts(self, from_step: int) -> tuple[float | None, float | None]:
        """Mean and variance shifts averaged over the records of steps >= ``from_step``."""
        kept = [(m, v) for step, m, v in self.records if step >= from_step]
        if not kept:
            return None, None
        return math.fsum(m for m, _ in kept) / len(kept), math.fsum(v for _, v in kept) / len(kept)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def train_classifier(
    model: nn.Module, data: Dataset, config: TransformerConfig, seed: int, warmup: bool
) -> dict[str, Any]:
    """Train ``model`` on the images with Adam and the warm-up schedule; its test accuracy,
    losses and batch-statistics shifts (None without batch norm)."""
    import torch
    import torch.nn.functional as F

    from normlab.data import batches, num_batches

    per_epoch = num_batches(len(data.train_labels), config.batch_size, drop_last=True)
    total = per_epoch * config.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    warm = min(config.warmup_steps, total) if warmup else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm))
    monitor = BatchStatsMonitor(model)
    losses: list[float] = []
    diverged = False
    model.train()
    for epoch in range(config.epochs):
        for x, y in batches(data.train_images, data.train_labels, config.batch_size,
                            shuffle=True, seed=seed, epoch=epoch, drop_last=True,
                            device=config.device):  # fmt: skip
            monitor.step = len(losses)
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if diverged:
            break
    monitor.remove()
    mean_shift, variance_shift = monitor.shifts(total // 2)
    last_epoch = losses[-per_epoch:] if not diverged else []
    return {
        "test_accuracy": classification_accuracy(model, data, config),
        "train_loss": math.fsum(last_epoch) / len(last_epoch) if last_epoch else None,
        "loss_curve": downsample(losses, 40),
        "diverged": diverged,
        "steps": len(losses),
        "mean_shift": mean_shift,
        "variance_shift": variance_shift,
    }


def classification_accuracy(model: nn.Module, data: Dataset, config: TransformerConfig) -> float:
    """The fraction of test images classified right, in eval mode (running statistics)."""
    import torch

    from normlab.data import batches

    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(data.test_images, data.test_labels, 500, shuffle=False,
                            device=config.device):  # fmt: skip
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.train()
    return correct / len(data.test_labels)


def init_gradient_norms(
    model: nn.Module, data: Dataset, config: TransformerConfig, seed: int
) -> list[float]:
    """The norm of the gradient of each block's ``mlp.fc2.weight`` (Xiong et al.'s
    :math:`W^{2,l}`) at initialisation, averaged over the first ``gradient_batches``
    training batches of seed ``seed``'s order. Shape: ``(depth,)``."""
    import torch
    import torch.nn.functional as F

    from normlab.data import batches

    blocks = list(model.encoder.blocks)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = 0
    model.train()
    for x, y in batches(data.train_images, data.train_labels, config.batch_size, shuffle=True,
                        seed=seed, epoch=0, drop_last=True, device=config.device):  # fmt: skip
        if count == config.gradient_batches:
            break
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sums += torch.stack([b.mlp.fc2.weight.grad.norm().double().cpu() for b in blocks])
        count += 1
    return (sums / max(count, 1)).tolist()


def train_next_row(
    config: TransformerConfig, data: Dataset, norm: str, seed: int
) -> dict[str, Any]:
    """Train the causal next-row model (pre-LN, warm-up) with ``norm``; its training loss
    and its test losses measured three ways (see :func:`next_row_losses`)."""
    import torch
    import torch.nn.functional as F

    from normlab.data import batches, num_batches
    from normlab.models.vit import NextRowTransformer, next_row_pairs

    model = NextRowTransformer(
        norm, "pre", width=config.width, depth=config.depth, heads=config.heads
    ).to(config.device)
    size = config.causal_batch_size
    per_epoch = num_batches(len(data.train_labels), size, drop_last=True)
    total = per_epoch * config.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    warm = min(config.warmup_steps, total)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm))
    losses: list[float] = []
    model.train()
    for epoch in range(config.epochs):
        for x, _ in batches(data.train_images, data.train_labels, size, shuffle=True, seed=seed,
                            epoch=epoch, drop_last=True, device=config.device):  # fmt: skip
            inputs, targets = next_row_pairs(x)
            loss = F.mse_loss(model(inputs), targets)
            if not torch.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    last_epoch = losses[-per_epoch:]
    return {
        "train_loss": math.fsum(last_epoch) / len(last_epoch) if last_epoch else None,
        "diverged": len(losses) < total,
        **next_row_losses(model, data.test_images, size, config.device),
        "future_share": future_share(model, data.test_images[:size], config.device),
    }


def future_share(
    model: nn.Module, images: torch.Tensor, device: str | torch.device = "cpu"
) -> float:
    """How much of each output of a next-row model the later rows move, in train mode
    (batch statistics over the batch of ``images``, as in training).

    For every output position ``t``, the gradient ``g`` of the sum of the outputs at ``t``
    over the batch with respect to the input rows; the share is ``||g[:, t+1:]|| /
    ||g||`` (rows after ``t``, of every sequence in the batch), averaged over ``t``. Zero
    for a causal model; a per-token norm keeps it zero. Images: uint8 ``(N, H, W)``.
    """
    import torch

    from normlab.data import normalize_images
    from normlab.models.vit import next_row_pairs

    twin = copy.deepcopy(model).train()
    inputs, _ = next_row_pairs(normalize_images(images.to(device)))
    inputs = inputs.detach().requires_grad_(True)
    outputs = twin(inputs)
    shares = []
    for t in range(inputs.shape[1] - 1):
        (grad,) = torch.autograd.grad(outputs[:, t].sum(), inputs, retain_graph=True)
        total = float(grad.norm())
        shares.append(float(grad[:, t + 1 :].norm()) / total if total > 0 else 0.0)
    return math.fsum(shares) / len(shares)


def next_row_losses(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Test loss (mean squared error per pixel) of a next-row model, four ways, on
    batches of ``batch_size`` sequences (a last smaller batch is dropped, unless it is
    the only one):

    - ``batch_stats_loss``: train mode on whole sequences, as in training;
    - ``running_stats_loss``: eval mode;
    - ``row_by_row_loss``: train mode, output ``t`` computed from rows ``0..t`` alone
      (the batch's statistics over those rows: no later row is seen);
    - ``one_sequence_loss``: train mode, one whole sequence per batch.

    The first and last see the later rows through the statistics; the middle two are
    predictions a causal model can make. A copy of ``model`` runs in train mode, so
    ``model``'s running statistics stay as they are. Images: uint8 ``(N, H, W)``.
    """
    import torch
    import torch.nn.functional as F

    from normlab.data import batches
    from normlab.models.vit import next_row_pairs

    labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
    drop_last = len(images) >= batch_size
    twin = copy.deepcopy(model).train()
    sums = dict.fromkeys(NEXT_ROW_LOSSES, 0.0)
    count = 0
    model.eval()
    with torch.no_grad():
        for x, _ in batches(images, labels, batch_size, shuffle=False, drop_last=drop_last,
                            device=device):  # fmt: skip
            inputs, targets = next_row_pairs(x)
            steps = inputs.shape[1]
            row_by_row = torch.stack([twin(inputs[:, : t + 1])[:, t] for t in range(steps)], 1)
            sums["batch_stats_loss"] += float(F.mse_loss(twin(inputs), targets))
            sums["running_stats_loss"] += float(F.mse_loss(model(inputs), targets))
            sums["row_by_row_loss"] += float(F.mse_loss(row_by_row, targets))
            one_at_a_time = torch.cat([twin(inputs[i : i + 1]) for i in range(len(inputs))])
            sums["one_sequence_loss"] += float(F.mse_loss(one_at_a_time, targets))
            count += 1
    model.train()
    return {key: value / count for key, value in sums.items()}


# ============================================================================ summaries
def _trained_arm(
    norm: str, placement: str, warmup: str, runs: Sequence[Mapping[str, Any]]
) -> TrainedArm:
    return TrainedArm(
        norm=norm,
        placement=placement,
        warmup=WARMUP[warmup],
        test_accuracy=seed_stats([r["test_accuracy"] for r in runs]),
        train_loss=seed_stats([r["train_loss"] for r in runs]),
        loss_curve=curve_mean_std([[v for _, v in r["loss_curve"]] for r in runs]),
        mean_shift=seed_stats([r["mean_shift"] for r in runs]),
        variance_shift=seed_stats([r["variance_shift"] for r in runs]),
        diverged=sum(bool(r["diverged"]) for r in runs),
        seeds=len(runs),
    )


def _init_gradients(norm: str, placement: str, runs: Sequence[Mapping[str, Any]]) -> InitGradients:
    per_layer = [r["per_layer"] for r in runs]
    return InitGradients(
        norm=norm,
        placement=placement,
        per_layer=curve_mean_std(per_layer),
        last_to_first=seed_stats([g[-1] / g[0] if g[0] > 0 else None for g in per_layer]),
    )


def _causal_arm(norm: str, runs: Sequence[Mapping[str, Any]]) -> CausalArm:
    def stats(key: str) -> SeedStats:
        return seed_stats([r[key] for r in runs])

    return CausalArm(
        norm=norm,
        train_loss=stats("train_loss"),
        batch_stats_loss=stats("batch_stats_loss"),
        running_stats_loss=stats("running_stats_loss"),
        row_by_row_loss=stats("row_by_row_loss"),
        one_sequence_loss=stats("one_sequence_loss"),
        future_share=stats("future_share"),
        leak=seed_stats([causal_gap(r) for r in runs]),
    )


def causal_gap(losses: Mapping[str, float]) -> float:
    """How much better the loss with batch statistics over whole sequences looks than the
    best causal prediction: ``min(running, row by row) - batch statistics``."""
    best = min(losses["running_stats_loss"], losses["row_by_row_loss"])
    return best - losses["batch_stats_loss"]


def zero_share_bound(batch_size: int, width: int, depth: int) -> float:
    """The largest later-rows share (:func:`future_share`) that float32 rounding alone can
    make of a share that is zero in exact arithmetic.

    An element of the gradient of an output with respect to an input row is a sum over
    the paths between them; with a per-token norm, the paths from a later row carry
    exactly zero (masked attention weights, no statistics shared across time). Computed
    in float32, a sum of ``n`` terms that is zero exactly comes out at most
    ``2 lam sqrt(n) u sum_i |t_i|`` (:func:`normlab.testing.tolerance.sum_tolerance`).
    Taking the terms no larger than the gradient they make up (``sum_i |t_i|`` of the
    order of ``||g||``), the share is at most

    .. math:: 2 \\lambda \\sqrt{n}\\, u_{\\text{float32}}, \\qquad
              n = N \\cdot T \\cdot r D \\cdot L

    with every term that can reach one gradient element counted: ``N`` sequences of
    ``T = 27`` rows (statistics over batch and time), the feed-forward's ``r D`` hidden
    features (the widest sum of a block, ``r = 2``) and ``L`` blocks. At the study's
    settings (16 sequences, width 64, 4 blocks) it is 3.4e-4 (0.034 %).

    Args:
        batch_size: ``N``, the sequences of the batch the share is measured on.
        width: ``D``, the token features. depth: ``L``, the blocks.
    """
    import torch

    from normlab.testing.tolerance import sum_tolerance

    terms = batch_size * (IMAGE_ROWS - 1) * NEXT_ROW_MLP_RATIO * width * depth
    return float(sum_tolerance(torch.float32, terms, 1.0))


def leak_status(share: SeedStats, bound: float) -> str:
    """What one norm's later-rows share says about a leak: :data:`NO_LEAK` when every
    seed's share is at most ``bound`` (:func:`zero_share_bound`); :data:`LEAKS` when at
    least two seeds finished, each above ``bound``, and the mean minus the spread between
    seeds is still above it; :data:`UNCLEAR` otherwise."""
    finite = [v for v in share.values if v is not None and math.isfinite(v)]
    if not finite:
        return UNCLEAR
    if all(v <= bound for v in finite):
        return NO_LEAK
    clear = share.mean is not None and share.mean - _std(share) > bound
    if len(finite) >= 2 and all(v > bound for v in finite) and clear:
        return LEAKS
    return UNCLEAR


def leak_verdict(shares: Mapping[str, SeedStats], bound: float) -> str:
    """The claim that batch norm over (batch, time) leaks the later rows and a per-token
    norm (:data:`PER_TOKEN_NORMS`) does not, judged on the later-rows shares
    (:func:`leak_status`): agrees when batch norm leaks and every per-token norm measured
    (at least one) is zero up to rounding; disagrees when batch norm's share is zero up to
    rounding or a per-token norm leaks; inconclusive otherwise."""
    status = {norm: leak_status(share, bound) for norm, share in shares.items()}
    per_token = [status[n] for n in PER_TOKEN_NORMS if n in status]
    if status.get("batch") == NO_LEAK or LEAKS in per_token:
        return DISAGREES
    if status.get("batch") == LEAKS and per_token and all(s == NO_LEAK for s in per_token):
        return AGREES
    return INCONCLUSIVE


# ============================================================================= verdicts
def directional_verdict(difference: float, noise: float, expected_positive: bool = True) -> str:
    """A claim that a difference has a sign: within the spread between seeds (``|d| <=
    noise``) is inconclusive; otherwise it agrees when the sign is the expected one."""
    if not abs(difference) > noise:
        return INCONCLUSIVE
    return AGREES if (difference > 0) == expected_positive else DISAGREES


def match_verdict(difference: float, noise: float, margin: float = MATCH_MARGIN_POINTS) -> str:
    """A claim that two numbers match within ``margin``: agrees when the whole band
    ``difference ± noise`` lies within ``±margin``, disagrees when it lies wholly outside,
    inconclusive when the spread between seeds straddles the margin."""
    if abs(difference) + noise <= margin:
        return AGREES
    if abs(difference) - noise > margin:
        return DISAGREES
    return INCONCLUSIVE


# ============================================================================= findings
def _arm(summary: TransformerSummary, norm: str, placement: str, warmup: bool) -> TrainedArm | None:
    for arm in summary.arms:
        if (arm.norm, arm.placement, arm.warmup) == (norm, placement, warmup):
            return arm if arm.test_accuracy.mean is not None else None
    return None


def _std(stat: SeedStats) -> float:
    return stat.std or 0.0


def transformer_findings(summary: TransformerSummary) -> list[Finding]:
    """Every claim the summary has the arms for, each with its verdict."""
    findings = [
        warmup_finding(summary),
        gradient_finding(summary),
        dyt_finding(summary),
        batch_accuracy_finding(summary),
        fluctuation_finding(summary),
        influence_finding(summary),
        leak_finding(summary),
    ]
    return [f for f in findings if f is not None]


def warmup_finding(summary: TransformerSummary) -> Finding | None:
    """Xiong et al.: what warm-up adds to post-LN against what it adds to pre-LN."""
    arms = {(p, w): _arm(summary, "layer", p, w) for p in ("pre", "post") for w in (True, False)}
    if any(a is None for a in arms.values()):
        return None
    acc = {key: a.test_accuracy for key, a in arms.items() if a is not None}
    post_gain = pct(acc["post", True].mean) - pct(acc["post", False].mean)
    pre_gain = pct(acc["pre", True].mean) - pct(acc["pre", False].mean)
    difference = round(post_gain - pre_gain, 1)
    noise = pct(max(_std(s) for s in acc.values()))
    diverged = arms["post", False].diverged if arms["post", False] else 0
    return Finding(
        "transformer",
        f"With layer norm, warm-up changes post-LN's test accuracy by {post_gain:+.1f} "
        f"points ({fmt_pm(acc['post', False])} without, {fmt_pm(acc['post', True])} with; "
        f"{diverged} seeds diverged without) and pre-LN's by {pre_gain:+.1f} points "
        f"({fmt_pm(acc['pre', False])} without, {fmt_pm(acc['pre', True])} with): post-LN "
        f"gains {difference:+.1f} points more, against a spread between seeds of "
        f"{noise:.1f} points.",
        claim=(
            "Xiong et al. (2020) find that the Post-LN Transformer needs the learning-rate "
            "warm-up (without it, it trains to a far worse BLEU on IWSLT14 De-En) while "
            "the Pre-LN Transformer reaches comparable results without warm-up."
        ),
        verdict=directional_verdict(difference, noise),
        numbers={"post_gain": round(post_gain, 1), "pre_gain": round(pre_gain, 1),
                 "difference": difference, "noise": noise},
    )  # fmt: skip


def gradient_finding(summary: TransformerSummary) -> Finding | None:
    """Xiong et al.: post-LN's gradients grow towards the output at initialisation."""
    by = {g.placement: g for g in summary.gradients if g.norm == "layer"}
    if set(by) != {"pre", "post"}:
        return None
    post, pre = by["post"].last_to_first, by["pre"].last_to_first
    if post.mean is None or pre.mean is None or not by["pre"].per_layer.mean:
        return None
    post_last, pre_last = by["post"].per_layer.mean[-1], by["pre"].per_layer.mean[-1]
    last_ratio = float(fmt3(post_last / pre_last)) if pre_last > 0 else math.inf
    difference = post.mean - pre.mean
    noise = max(_std(post), _std(pre))
    predicted = float(fmt3(math.sqrt(summary.depth)))
    return Finding(
        "transformer",
        f"At initialisation, with layer norm, the gradient norm of the last block's "
        f"feed-forward weight over the first block's is {fmt3(post.mean)} for post-LN and "
        f"{fmt3(pre.mean)} for pre-LN (spread between seeds {fmt3(noise)}); the last "
        f"block's gradient is {fmt3(last_ratio)}x as large in post-LN as in pre-LN.",
        claim=(
            "Xiong et al. (2020, Theorem 1 and Figure 3) show that at initialisation the "
            "Post-LN Transformer's gradients near the output are large, O(d sqrt(ln d)) "
            "against O(d sqrt(ln d / L)) for Pre-LN, whose gradient norms stay the same "
            f"across layers: a ratio of sqrt(L) = {fmt3(predicted)} at L = {summary.depth} "
            "blocks."
        ),
        verdict=directional_verdict(difference, noise),
        numbers={"post_ratio": float(fmt3(post.mean)), "pre_ratio": float(fmt3(pre.mean)),
                 "noise": float(fmt3(noise)), "last_ratio": last_ratio,
                 },
    )  # fmt: skip


def _accuracy_gap(
    summary: TransformerSummary, first: str, second: str
) -> tuple[SeedStats, SeedStats, float, float] | None:
    """Two pre-LN arms with warm-up: their test accuracies, ``first`` minus ``second`` in
    points (rounded to 0.1) and the larger seed spread in points; None if one did not run."""
    one, two = _arm(summary, first, "pre", True), _arm(summary, second, "pre", True)
    if one is None or two is None:
        return None
    a, b = one.test_accuracy, two.test_accuracy
    return a, b, round(pct(a.mean) - pct(b.mean), 1), pct(max(_std(a), _std(b)))


def dyt_finding(summary: TransformerSummary) -> Finding | None:
    """Zhu et al.: DyT matches layer norm (pre-LN, warm-up)."""
    gap = _accuracy_gap(summary, "dyt", "layer")
    if gap is None:
        return None
    a, b, difference, noise = gap
    return Finding(
        "transformer",
        f"Pre-LN with warm-up, DyT reaches {fmt_pm(a)} and layer norm {fmt_pm(b)}: a "
        f"difference of {difference:+.1f} points, spread between seeds {noise:.1f} points "
        f"(a match is within {MATCH_MARGIN_POINTS:.1f} points).",
        claim=(
            f"Zhu et al. (2025) find that DyT matches layer norm: ViT-B reaches "
            f"{ZHU_VIT_B_TOP1['dyt']} % top-1 on ImageNet-1K with DyT and "
            f"{ZHU_VIT_B_TOP1['layer']} % with layer norm."
        ),
        verdict=match_verdict(difference, noise),
        numbers={"dyt": pct(a.mean), "layer": pct(b.mean), "difference": difference,
                 "noise": noise, "margin": MATCH_MARGIN_POINTS},
    )  # fmt: skip


def batch_accuracy_finding(summary: TransformerSummary) -> Finding | None:
    """Shen et al.: batch norm falls behind layer norm in a transformer."""
    gap = _accuracy_gap(summary, "layer", "batch")
    if gap is None:
        return None
    a, b, difference, noise = gap
    return Finding(
        "transformer",
        f"Pre-LN with warm-up, layer norm reaches {fmt_pm(a)} and batch norm over the "
        f"tokens {fmt_pm(b)}: layer norm minus batch norm is {difference:+.1f} points, "
        f"spread between seeds {noise:.1f} points.",
        claim=(
            "Shen et al. (2020) find that batch norm in a transformer falls behind layer "
            f"norm (IWSLT14 De-En, their Table 1: {SHEN_IWSLT14_BLEU['batch']} BLEU with batch "
            f"norm, {SHEN_IWSLT14_BLEU['layer']} with layer norm)."
        ),
        verdict=directional_verdict(difference, noise),
        numbers={"layer": pct(a.mean), "batch": pct(b.mean), "difference": difference,
                 "noise": noise},
    )  # fmt: skip


def fluctuation_finding(summary: TransformerSummary) -> Finding | None:
    """Shen et al.: a transformer's batch statistics fluctuate more than a CNN's."""
    batch, cnn = _arm(summary, "batch", "pre", True), summary.reference
    if batch is None or cnn is None:
        return None
    vit_shift, cnn_shift = batch.variance_shift, cnn.variance_shift
    if vit_shift.mean is None or cnn_shift.mean is None:
        return None
    difference = vit_shift.mean - cnn_shift.mean
    noise = max(_std(vit_shift), _std(cnn_shift))
    ratio = float(fmt3(vit_shift.mean / cnn_shift.mean)) if cnn_shift.mean > 0 else math.inf
    return Finding(
        "transformer",
        f"In the second half of training, a batch's variance strays from batch norm's "
        f"running variance by {fmt3(vit_shift.mean)} of it in the transformer and by "
        f"{fmt3(cnn_shift.mean)} in LeNet on the same images ({fmt3(ratio)}x; spread "
        f"between seeds {fmt3(noise)}); the means stray by {fmt_num(batch.mean_shift.mean)} "
        f"and {fmt_num(cnn.mean_shift.mean)} running standard deviations.",
        claim=(
            "Shen et al. (2020) find that a transformer's batch statistics fluctuate far "
            "more across steps than a CNN's (their comparison: a Transformer on IWSLT14 "
            "against ResNet-20 on CIFAR-10), which they blame for batch norm's lag."
        ),
        verdict=directional_verdict(difference, noise),
        numbers={"vit_shift": float(fmt3(vit_shift.mean)), "cnn_shift": float(fmt3(cnn_shift.mean)),
                 "ratio": ratio, "noise": float(fmt3(noise)),
                 "vit_mean_shift": float(fmt_num(batch.mean_shift.mean)),
                 "cnn_mean_shift": float(fmt_num(cnn.mean_shift.mean))},
    )  # fmt: skip


def influence_finding(summary: TransformerSummary) -> Finding | None:
    """Causal model: how much the later rows move each output, batch norm against layer
    norm (zero: the attention is causal and layer norm works per token); the verdict is
    the guide's (:func:`leak_verdict`)."""
    by = {c.norm: c for c in summary.causal}
    if "batch" not in by or "layer" not in by:
        return None
    batch, layer = by["batch"].future_share, by["layer"].future_share
    if batch.mean is None or layer.mean is None:
        return None
    noise = max(_std(batch), _std(layer))
    bound = summary.share_bound
    n = {"batch": pct(batch.mean), "layer": pct(layer.mean), "noise": pct(noise),
         "bound": float(fmt_num(100 * bound))}  # fmt: skip
    return Finding(
        "transformer",
        f"In the trained next-row models, with batch statistics, the rows below each "
        f"output carry {n['batch']:.1f} % of its gradient with batch norm and "
        f"{n['layer']:.1f} % with layer norm (spread between seeds {n['noise']:.1f} points; "
        f"zero up to float32 rounding is at most {fmt_num(n['bound'])} %).",
        claim=(
            "Batch statistics over (batch, time) let each position of a causal model see "
            "the later positions; layer norm, per token, does not."
        ),
        verdict=leak_verdict({"batch": batch, "layer": layer}, bound),
        numbers=n,
    )


def leak_finding(summary: TransformerSummary) -> Finding | None:
    """Causal model: how much better batch norm's loss with whole sequences looks than
    its best causal prediction, against layer norm's gap (none but rounding)."""
    by = {c.norm: c for c in summary.causal}
    if "batch" not in by or "layer" not in by:
        return None
    batch, layer = by["batch"], by["layer"]
    stats = {
        "batch_train": batch.train_loss, "batch_seen": batch.batch_stats_loss,
        "batch_running": batch.running_stats_loss, "batch_rows": batch.row_by_row_loss,
        "batch_single": batch.one_sequence_loss, "batch_gap": batch.leak,
        "layer_train": layer.train_loss, "layer_seen": layer.batch_stats_loss,
        "layer_gap": layer.leak,
    }  # fmt: skip
    means = {key: stat.mean for key, stat in stats.items()}
    if any(value is None for value in means.values()):
        return None
    difference = batch.leak.mean - layer.leak.mean  # type: ignore[operator]
    noise = max(_std(batch.leak), _std(layer.leak))
    n = {key: float(fmt3(value)) for key, value in {**means, "noise": noise}.items()}
    return Finding(
        "transformer",
        f"Predicting the next row (mean squared error per pixel), batch norm over (batch, "
        f"time) trains to {fmt3(n['batch_train'])} and scores {fmt3(n['batch_seen'])} on "
        f"the test images with whole sequences in the batch, {fmt3(n['batch_running'])} "
        f"with its running statistics, {fmt3(n['batch_rows'])} row by row (only the rows "
        f"above) and {fmt3(n['batch_single'])} one sequence at a time: its best causal "
        f"prediction minus the loss with whole sequences is {fmt3(n['batch_gap'])}. Layer "
        f"norm trains to {fmt3(n['layer_train'])}, scores {fmt3(n['layer_seen'])} every "
        f"way and has a gap of {fmt3(n['layer_gap'])} (spread between seeds "
        f"{fmt3(n['noise'])}).",
        claim=(
            "Batch statistics over (batch, time) let each position of a causal model see "
            "the later positions, so its loss looks better than what it can predict "
            "causally; layer norm, per token, has no such leak."
        ),
        verdict=directional_verdict(difference, noise),
        numbers=n,
    )  # fmt: skip


# ================================================================================ guide
def transformer_guide(summary: TransformerSummary) -> GuideRow | None:
    """The guide's "transformers" row: the pre-LN arms with warm-up, the norms not
    separated from the best test accuracy; the verdict as Shen et al.'s (layer norm ahead
    of batch norm by more than the spread between seeds)."""
    accuracy = {
        arm.norm: arm.test_accuracy
        for arm in summary.arms
        if arm.placement == "pre" and arm.warmup and arm.test_accuracy.mean is not None
    }
    if not accuracy:
        return None
    order = sorted(accuracy, key=lambda n: -accuracy[n].mean)  # type: ignore[operator]
    evidence = (
        "A vision transformer (pre-LN, warm-up), test accuracy: "
        + ", ".join(f"{label(n)} {fmt_pm(accuracy[n])}" for n in order)
        + "."
    )
    verdict = INCONCLUSIVE
    if "layer" in accuracy and "batch" in accuracy:
        a, b = accuracy["layer"], accuracy["batch"]
        difference = round(pct(a.mean) - pct(b.mean), 1)  # type: ignore[arg-type]
        verdict = directional_verdict(difference, pct(max(_std(a), _std(b))))
    literature = (
        f"Shen et al. (2020, Table 1): {SHEN_IWSLT14_BLEU['batch']} BLEU with batch norm "
        f"against {SHEN_IWSLT14_BLEU['layer']} with layer norm (IWSLT14 De-En); Zhu et al. "
        f"(2025): DyT {ZHU_VIT_B_TOP1['dyt']} % against layer norm's "
        f"{ZHU_VIT_B_TOP1['layer']} % (ViT-B, ImageNet-1K)."
    )
    recommendation = recommendation_text(leaders(accuracy), label, total=len(accuracy))
    return GuideRow(TRANSFORMERS, recommendation, evidence, literature, verdict)


def causal_guide(summary: TransformerSummary) -> GuideRow | None:
    """The guide's "causal sequence models" row, judged on the leak itself: the share of
    each output's gradient that flows from the later rows (:func:`leak_status` against
    :func:`zero_share_bound`). Recommended: the norms whose share is zero up to rounding in
    every seed, lowest causal test loss first; the verdict: :func:`leak_verdict`. The loss
    gap (best causal test loss minus the loss with whole sequences in the batch) is
    reported as the leak's consequence."""
    arms = {c.norm: c for c in summary.causal if c.future_share.mean is not None}
    if not arms:
        return None
    bound = summary.share_bound
    status = {n: leak_status(arm.future_share, bound) for n, arm in arms.items()}
    order = sorted(arms, key=lambda n: _causal_loss_key(arms[n]))
    evidence = (
        "Next-row prediction, share of each output's gradient that flows from the later "
        f"rows (zero up to float32 rounding: at most {fmt_num(100 * bound)} %): "
        + "; ".join(f"{label(n)} {fmt_pm(arms[n].future_share)} ({status[n]})" for n in order)
        + ". Consequence, test error per pixel with whole sequences in the batch against "
        "the best causal prediction (running statistics or row by row): "
        + "; ".join(_loss_gap_text(n, arms[n]) for n in order)
        + "."
    )
    literature = (
        "Vaswani et al. (2017) and Radford et al. (2019, GPT-2) normalise each token on its "
        "own (layer norm): batch statistics over (batch, time) let a position see later ones."
    )
    honest = [n for n in order if status[n] == NO_LEAK]
    recommendation = (
        " or ".join(label(n) for n in honest)
        if honest
        else "inconclusive: no norm's later-rows share is zero up to rounding"
    )
    verdict = leak_verdict({n: arm.future_share for n, arm in arms.items()}, bound)
    return GuideRow(CAUSAL, recommendation, evidence, literature, verdict)


def _causal_loss(arm: CausalArm) -> float | None:
    """The best causal test loss: running statistics or row by row (None if unmeasured)."""
    losses = [arm.running_stats_loss.mean, arm.row_by_row_loss.mean]
    finite = [v for v in losses if v is not None]
    return min(finite) if finite else None


def _causal_loss_key(arm: CausalArm) -> tuple[bool, float]:
    loss = _causal_loss(arm)
    return (loss is None, loss if loss is not None else 0.0)


def _loss_gap_text(norm: str, arm: CausalArm) -> str:
    loss, seen = _causal_loss(arm), arm.batch_stats_loss.mean
    if loss is None or seen is None or arm.leak.mean is None:
        return f"{label(norm)} not measured"
    return f"{label(norm)} {fmt3(seen)} against {fmt3(loss)} (gap {fmt3(arm.leak.mean)})"


# ============================================================================== figures
def _arm_label(arm: TrainedArm) -> str:
    warm = "" if arm.warmup else "\nno warm-up"
    return f"{arm.norm}\n{arm.placement}-LN{warm}"


def accuracy_figure(summary: TransformerSummary) -> Figure:
    """Final test accuracy per arm: bars (mean), ±1 std, a dot per seed."""
    from normlab.lab.figures import percent
    from normlab.report.plots import bar_figure

    groups = {
        _arm_label(a): percent([v for v in a.test_accuracy.values if v is not None])
        for a in summary.arms
        if any(v is not None for v in a.test_accuracy.values)
    }
    low = min((float(v.min()) for v in groups.values() if len(v)), default=0.0)
    return bar_figure(
        groups or {"none finished": [0.0]},
        ylabel="final test accuracy (%)",
        title="Vision transformer on Fashion-MNIST",
        ylim=(max(0.0, low - 5.0), 100.0),
    )


def gradients_figure(summary: TransformerSummary) -> Figure:
    """Gradient norm of W^2 per block at initialisation: one panel per placement, a line
    per norm (mean ± std over seeds), log scale."""
    from normlab.report.plots import new_figure, plot_lines, style

    with style():
        fig, axes = new_figure(1, 2, width=10.0, height=4.0)
        for ax, placement in zip(axes, ("pre", "post"), strict=True):
            series = {
                g.norm: g.per_layer.values
                for g in summary.gradients
                if g.placement == placement and g.per_layer.values
            }
            if series:
                depth = len(next(iter(series.values()))[0])
                plot_lines(ax, list(range(1, depth + 1)), series)
                ax.set_xticks(range(1, depth + 1))
                ax.set_yscale("log")
                ax.legend(fontsize=8)
            ax.set_xlabel("block")
            ax.set_ylabel("gradient norm of W² at initialisation")
            ax.set_title(f"{placement}-LN")
    return fig


def warmup_figure(summary: TransformerSummary) -> Figure:
    """Training loss over training, with and without warm-up: one panel per placement, a
    line per norm and warm-up (the norms trained both ways)."""
    from normlab.report.plots import new_figure, plot_lines, style

    both = {a.norm for a in summary.arms if not a.warmup}
    with style():
        fig, axes = new_figure(1, 2, width=10.0, height=4.0)
        for ax, placement in zip(axes, ("pre", "post"), strict=True):
            series = {
                f"{a.norm}, warm-up {'on' if a.warmup else 'off'}": a.loss_curve.values
                for a in summary.arms
                if a.norm in both and a.placement == placement and a.loss_curve.values
            }
            length = min((len(v[0]) for v in series.values()), default=0)
            if length:
                xs = [(i + 0.5) / length for i in range(length)]
                plot_lines(ax, xs, {k: [c[:length] for c in v] for k, v in series.items()},
                           markers=False)  # fmt: skip
                ax.legend(fontsize=8)
            ax.set_xlabel("fraction of training")
            ax.set_ylabel("training loss (cross-entropy)")
            ax.set_title(f"{placement}-LN")
    return fig


def causal_figure(summary: TransformerSummary) -> Figure:
    """Next-row losses per norm: training, test with batch statistics of whole sequences,
    with running statistics, row by row."""
    import numpy as np

    from normlab.report.plots import PALETTE, new_figure, style

    measures = (
        ("train_loss", "training (batch statistics)"),
        ("batch_stats_loss", "test, whole sequences in the batch"),
        ("running_stats_loss", "test, running statistics"),
        ("row_by_row_loss", "test, row by row"),
        ("one_sequence_loss", "test, one sequence at a time"),
    )
    width = 0.8 / len(measures)
    with style():
        fig, (ax,) = new_figure(width=7.5, height=4.3)
        for j, (key, name) in enumerate(measures):
            for i, arm in enumerate(summary.causal):
                stat: SeedStats = getattr(arm, key)
                values = [v for v in stat.values if v is not None and math.isfinite(v)]
                if not values:
                    continue
                x = i + (j - (len(measures) - 1) / 2) * width
                ax.bar(
                    x,
                    float(np.mean(values)),
                    width=width * 0.9,
                    alpha=0.85,
                    color=PALETTE[j % len(PALETTE)],
                    label=name if i == 0 else None,
                )
                if len(values) > 1:
                    ax.errorbar(x, float(np.mean(values)), yerr=float(np.std(values, ddof=1)),
                                color="black", capsize=3, lw=1)  # fmt: skip
        ax.set_xticks(range(len(summary.causal)), [label(c.norm) for c in summary.causal])
        ax.set_ylabel("mean squared error per pixel")
        ax.set_title("Predicting the next row of pixels")
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=8)
    return fig
