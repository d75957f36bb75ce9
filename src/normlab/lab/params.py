"""The learned scale and shift (gamma, beta) of every normalization layer: data, table, figure.

A normalization layer computes ``y = gamma * x_hat + beta`` per channel, with ``gamma``
initialised to 1 and ``beta`` to 0; how far training moves them away from that says how
much the network undoes or re-scales the normalization. This is the tutorial's
``print_bn_parameters``, which printed the raw 4-D tensors, made readable.

Example::

    >>> layers = norm_parameters(model)          # [NormParams(layer="layers.1", ...), ...]
    >>> print(params_table(layers, "gamma"))
    >>> save_png(params_figure(layers), run_dir / "params.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normlab.report.tables import Column, format_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIRST_VALUES = 4  # channels shown one by one in the table


@dataclass(frozen=True)
class NormParams:
    """One normalization layer's affine parameters, flattened to one value per channel.

    Shape:
        ``gamma``, ``beta``: ``(C,)`` float64 on the CPU, or None when the layer has none.
    """

    layer: str  # the module's name in the model, e.g. "layers.1"
    kind: str  # its class, e.g. "BatchNorm2d"
    gamma: torch.Tensor | None
    beta: torch.Tensor | None

    @property
    def channels(self) -> int:
        values = self.gamma if self.gamma is not None else self.beta
        return 0 if values is None else int(values.numel())


def norm_parameters(model: nn.Module) -> list[NormParams]:
    """gamma (``weight``) and beta (``bias``) of each normalization layer of ``model``.

    Layers come from ``model.norm_layers()`` when the model has it (normlab's LeNet),
    else every module whose class name contains ``Norm``. A wrapper (such as the
    registry's ``ChannelsLast``) is searched for the parameters it holds.
    """
    if hasattr(model, "norm_layers"):
        layers = list(model.norm_layers())
    else:
        layers = [
            (name, module)
            for name, module in model.named_modules()
            if "Norm" in type(module).__name__ and name
        ]
    found = []
    for name, module in layers:
        gamma = beta = None
        for param_name, param in module.named_parameters():
            leaf = param_name.rsplit(".", 1)[-1]
            if leaf in ("weight", "gamma") and gamma is None:
                gamma = param.detach().to("cpu", torch.float64).reshape(-1).clone()
            elif leaf in ("bias", "beta") and beta is None:
                beta = param.detach().to("cpu", torch.float64).reshape(-1).clone()
        kind = type(getattr(module, "norm", module)).__name__
        found.append(NormParams(name, kind, gamma, beta))
    return found


def summarize(values: torch.Tensor | None, first: int = FIRST_VALUES) -> dict[str, Any]:
    """mean, std (n-1; 0 for one channel), min, max and the first values of ``values``."""
    if values is None:
        return {"mean": None, "std": None, "min": None, "max": None, "first": None}
    std = float(values.std()) if values.numel() > 1 else 0.0
    shown = " ".join(_signed(v) for v in values[:first].tolist())
    return {
        "mean": float(values.mean()),
        "std": std,
        "min": float(values.min()),
        "max": float(values.max()),
        "first": shown + (" ..." if values.numel() > first else ""),
    }


def _signed(value: float) -> str:
    text = f"{value:+.3f}"
    return "+0.000" if text == "-0.000" else text


def params_rows(layers: list[NormParams], which: str) -> list[dict[str, Any]]:
    """One row per layer for ``which`` = ``"gamma"`` or ``"beta"``: layer, type, channels,
    mean, std, min, max, first values (the keys :func:`params_table` shows)."""
    if which not in ("gamma", "beta"):
        raise ValueError(f"which must be 'gamma' or 'beta', got {which!r}")
    return [
        {
            "layer": p.layer,
            "type": p.kind,
            "channels": p.channels,
            **summarize(getattr(p, which)),
        }
        for p in layers
    ]


def params_table(layers: list[NormParams], which: str) -> str:
    """A terminal table of ``which`` (``"gamma"`` or ``"beta"``) per layer."""
    title = {
        "gamma": "gamma (scale, initialised to 1), per channel:",
        "beta": "beta (shift, initialised to 0), per channel:",
    }[which]
    columns = [
        Column("layer"),
        Column("type"),
        Column("channels"),
        *(Column(key, fmt=".4f") for key in ("mean", "std", "min", "max")),
        Column("first", f"first {FIRST_VALUES} channels", align="left"),
    ]
    return format_table(params_rows(layers, which), columns, title=title)


def params_figure(layers: list[NormParams], title: str | None = None) -> Figure:
    """One row per layer: gamma per channel (left) and beta (right), as bars from their
    initial values (1 and 0, dashed), so the panels show how far training moved them."""
    from normlab.report.plots import PALETTE, new_figure, style

    if not layers:
        raise ValueError("no normalization layers to plot")
    with style():
        fig, axes = new_figure(len(layers), 2, width=11, height=2.4 * len(layers) + 0.6)
        for row, p in enumerate(layers):
            for col, (which, values, init) in enumerate(
                (("gamma", p.gamma, 1.0), ("beta", p.beta, 0.0))
            ):
                ax = axes[2 * row + col]
                ax.set_title(f"{p.layer} {p.kind}: {which}", fontsize=10)
                if values is None:
                    ax.text(0.5, 0.5, f"no {which}", ha="center", va="center")
                    ax.set_axis_off()
                    continue
                heights = values.numpy() - init  # bars grow from the initial value
                ax.bar(range(values.numel()), heights, bottom=init, color=PALETTE[col], width=0.8)
                ax.axhline(init, color="black", linewidth=1, linestyle="--")
                ax.set_xlim(-0.7, values.numel() - 0.3)
                ax.set_ylabel(which)
        for ax in axes[-2:]:
            ax.set_xlabel("channel")
        if title:
            fig.suptitle(title)
    return fig
