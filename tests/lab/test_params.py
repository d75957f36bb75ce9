"""gamma/beta extraction, summary statistics and the figure, against the tensors themselves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.lab.params import (
    NormParams,
    norm_parameters,
    params_figure,
    params_rows,
    params_table,
    summarize,
)
from normlab.models.lenet import LeNet
from normlab.report.plots import png_bytes


def test_lenet_layers_in_order_with_their_tensors() -> None:
    model = LeNet(norm="torch-group")
    with torch.no_grad():
        for _, module in model.norm_layers():
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-1, 1)
    found = norm_parameters(model)
    assert [(p.layer, p.kind, p.channels) for p in found] == [
        ("layers.1", "GroupNorm", 6),
        ("layers.5", "GroupNorm", 16),
        ("layers.10", "GroupNorm", 120),
        ("layers.13", "GroupNorm", 84),
    ]
    for p, (_, module) in zip(found, model.norm_layers(), strict=True):
        assert torch.equal(p.gamma, module.weight.detach().double())
        assert torch.equal(p.beta, module.bias.detach().double())


def test_a_wrapped_norm_without_bias() -> None:
    found = norm_parameters(LeNet(norm="rms"))
    assert found[0].kind == "RMSNorm" and found[0].channels == 6
    assert found[0].beta is None and torch.equal(found[0].gamma, torch.ones(6, dtype=torch.float64))
    rows = params_rows(found, "beta")
    assert rows[0]["mean"] is None
    assert "—" in params_table(found, "beta").splitlines()[3]


def test_the_tutorials_own_batchnorm_is_found_by_name() -> None:
    class BatchNorm(nn.Module):  # the tutorial's: gamma/beta of shape (1, C, 1, 1)
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.arange(3.0).reshape(1, 3, 1, 1))
            self.beta = nn.Parameter(torch.zeros(1, 3, 1, 1))

    model = nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm())
    [found] = norm_parameters(model)
    assert found.layer == "1" and found.kind == "BatchNorm"
    assert found.gamma.tolist() == [0.0, 1.0, 2.0]


def test_summarize_matches_torch() -> None:
    values = torch.tensor([0.5, -0.25, 2.0, 1.0, 3.0], dtype=torch.float64)
    summary = summarize(values, first=3)
    assert summary["mean"] == pytest.approx(float(values.mean()))
    assert summary["std"] == pytest.approx(float(values.std()))  # n - 1
    assert (summary["min"], summary["max"]) == (-0.25, 3.0)
    assert summary["first"] == "+0.500 -0.250 +2.000 ..."
    assert summarize(torch.tensor([-1e-9], dtype=torch.float64))["first"] == "+0.000"
    assert summarize(torch.tensor([2.0], dtype=torch.float64))["std"] == 0.0


def test_figure_has_a_gamma_and_a_beta_panel_per_layer(check_png) -> None:
    layers = norm_parameters(LeNet(norm="torch-batch"))
    fig = params_figure(layers, title="t")
    assert len(fig.axes) == 2 * len(layers)
    assert [ax.get_title() for ax in fig.axes[:2]] == [
        "layers.1 BatchNorm2d: gamma",
        "layers.1 BatchNorm2d: beta",
    ]
    assert len(fig.axes[2].patches) == 16  # one bar per channel of layers.5
    width, height = check_png(png_bytes(fig))
    assert width > 0 and height > 0
    with pytest.raises(ValueError, match="no normalization layers"):
        params_figure([])
    assert NormParams("x", "y", None, None).channels == 0
