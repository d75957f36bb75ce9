"""Probes: layer statistics and Santurkar et al.'s smoothness against direct computations,
and a probed run that trains exactly like an unprobed one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from normlab.data import normalize_images, synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.cells import Cell
from normlab.lab.experiments.compare import COMPARE, CompareConfig
from normlab.lab.experiments.probes import (
    PROBE,
    ProbeConfig,
    layer_statistics,
    probe_steps,
    smoothness,
)
from normlab.lab.study import run_experiment
from normlab.models.lenet import LeNet

DATA = synthetic_dataset(64, 32, seed=0)
TINY = dict(dataset="synthetic", train_subset=64, test_subset=32, epochs=1, batch_size=16)


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize_images(DATA.train_images[:n]), DATA.train_labels[:n]


def test_layer_statistics_match_the_first_layer_computed_by_hand() -> None:
    torch.manual_seed(0)
    model = LeNet(norm="none")
    x, _ = batch()
    stats = layer_statistics(model, x, saturation_eps=0.05)
    assert [s.layer for s in stats] == ["conv1", "conv2", "fc1", "fc2"]
    z = (
        model.layers[0](x).detach().double().flatten()
    )  # conv1's output is the first sigmoid's input
    first = stats[0]
    assert first.mean == pytest.approx(float(z.mean()))
    assert first.std == pytest.approx(float(z.std(correction=0)))
    q = torch.quantile(z, torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64))
    assert first.percentiles == pytest.approx(q.tolist())
    s = torch.sigmoid(z)
    assert first.saturation == pytest.approx(float(((s < 0.05) | (s > 0.95)).double().mean()))


def test_layer_statistics_leave_running_statistics_alone() -> None:
    model = LeNet(norm="batch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = layer_statistics(model, batch()[0])
    # batch norm in train mode: each channel's output has mean beta=0, var 1 over the batch
    assert abs(stats[0].mean) < 1e-5 and stats[0].std == pytest.approx(1.0, abs=1e-3)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_smoothness_against_a_functional_recomputation() -> None:
    torch.manual_seed(1)
    model = LeNet(norm="batch")
    x, y = batch()
    etas = [0.1, 0.5]
    measured = smoothness(model, x, y, etas)
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}

    def loss_at(p: dict) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, dict(buffers)), (x,)), y)

    loss0 = loss_at(params)
    g0 = torch.autograd.grad(loss0, list(params.values()))
    flat0 = torch.cat([g.reshape(-1) for g in g0]).double()
    losses, changes = [float(loss0.detach())], []
    for eta in etas:
        moved = {k: (v - eta * g).detach().requires_grad_() for (k, v), g in
                 zip(params.items(), g0, strict=True)}  # fmt: skip
        loss = loss_at(moved)
        g = torch.autograd.grad(loss, list(moved.values()))
        flat = torch.cat([t.reshape(-1) for t in g]).double()
        losses.append(float(loss.detach()))
        changes.append(float((flat - flat0).norm()))
    norm = float(flat0.norm())
    assert measured.loss == pytest.approx(losses[0], rel=1e-5)
    assert measured.gradient_norm == pytest.approx(norm, rel=1e-4)
    assert measured.loss_variation == pytest.approx(max(losses) - min(losses), rel=1e-3, abs=1e-6)
    assert measured.gradient_change == pytest.approx(max(changes), rel=1e-3)
    expected_beta = max(c / (eta * norm) for c, eta in zip(changes, etas, strict=True))
    assert measured.beta_smoothness == pytest.approx(expected_beta, rel=1e-3)
    with pytest.raises(UsageError, match="step_sizes must be positive"):
        smoothness(model, x, y, [0.0])


def test_probe_steps() -> None:
    assert probe_steps(8, 5) == [0, 2, 4, 6, 8]
    assert probe_steps(3, 9) == [0, 1, 2, 3]  # no repeats when there are few steps
    with pytest.raises(UsageError, match="probes must be an integer >= 2"):
        probe_steps(10, 1)


def test_a_probed_run_trains_exactly_like_an_unprobed_one() -> None:
    config = ProbeConfig(**TINY, probes=3, probe_batch=16, norms=("batch",), seeds=1)
    config.validate()
    cell = Cell("probe", (("activation", "sigmoid"), ("norm", "batch")), 0)
    probed = PROBE.run_cell(config, DATA, cell)
    plain = COMPARE.run_cell(
        CompareConfig(**TINY, norms=("batch",), seeds=1),
        DATA,
        Cell("compare", (("norm", "batch"),), 0),
    )
    assert probed["final"]["test_loss"] == plain["final"]["test_loss"]  # bit for bit
    assert [p["step"] for p in probed["probes"]] == [0, 2, 4]
    assert all(math.isfinite(p["smoothness"]["beta_smoothness"]) for p in probed["probes"])


def test_probe_summary_structure() -> None:
    config = ProbeConfig(**TINY, probes=3, probe_batch=16, seeds=2)
    result = run_experiment(PROBE, config, DATA, progress=False).summary
    assert list(result.activations) == ["sigmoid", "relu"]
    assert result.step_sizes == pytest.approx([0.5 * 0.03, 0.03, 0.06, 0.12])
    for group in result.activations.values():
        assert set(group.norms) == {"batch", "none"}
        for summary in group.norms.values():
            assert summary.steps == [0, 2, 4]
            variation = summary.smoothness["loss_variation"]
            assert len(variation.values) == 2 and len(variation.std) == 3  # seeds, probes
            assert summary.trajectory_mean["loss_variation"] == pytest.approx(
                sum(variation.mean[1:]) / 2
            )
            assert list(summary.layers) == ["conv1", "conv2", "fc1", "fc2"]
            for layer in summary.layers.values():
                assert all(0 <= v <= 1 for v in layer.saturation.mean)
    sigmoid = result.activations["sigmoid"].norms["batch"].smoothness["loss"].values
    relu = result.activations["relu"].norms["batch"].smoothness["loss"].values
    assert sigmoid[0] != sigmoid[1]  # seeds differ
    assert sigmoid[0][1:] != relu[0][1:]  # the activation really changed
