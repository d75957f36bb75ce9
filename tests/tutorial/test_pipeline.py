"""The tutorial job's data: arms, the normlab-vs-torch gap, conclusions from the numbers."""

from __future__ import annotations

import math
import re

import pytest
import torch

from normlab.data import synthetic_dataset
from normlab.lab.params import NormParams
from normlab.tutorial.pipeline import (
    TutorialConfig,
    conclusions,
    max_abs_difference,
    max_parameter_difference,
    run_tutorial,
    summary_rows,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):
    config = TutorialConfig(dataset="synthetic", epochs=2, batch_size=32, lr=0.1)
    data = synthetic_dataset(num_train=256, num_test=64, seed=0)
    return run_tutorial(config, data, tmp_path_factory.mktemp("tutorial"), progress=False)


def test_every_arm_trains_every_epoch(result) -> None:
    assert [arm.norm for arm in result.arms] == ["batch", "torch-batch", "none"]
    for arm in result.arms:
        assert [e.epoch for e in arm.history.epochs] == [1, 2]
        assert len(arm.history.step_losses) == 2 * 8  # 256 / 32 steps per epoch
        assert (arm.run_dir / "checkpoint.pt").is_file()
        assert arm.peak_memory_bytes > 50 * 2**20  # torch alone is larger than that
    assert result.arm("none").params == []
    assert [p.kind for p in result.arm("batch").params] == ["BatchNorm2d"] * 2 + ["BatchNorm1d"] * 2


def test_normlab_and_torch_batch_norm_follow_the_same_trajectory(result) -> None:
    ours, theirs, plain = (result.arm(n) for n in ("batch", "torch-batch", "none"))
    assert result.step_loss_gap < 1e-4
    # a different network (no norm) from the same weights is far from both: the gap is real
    assert max_abs_difference(ours.history.step_losses, plain.history.step_losses) > 1e-2
    assert max_parameter_difference(ours.params, theirs.params) < 1e-4
    assert ours.final.test_accuracy == pytest.approx(theirs.final.test_accuracy, abs=1 / 64)


def test_summary_rows_match_histories(result) -> None:
    rows = {row["norm"]: row for row in summary_rows(result)}
    for arm in result.arms:
        assert rows[arm.norm]["test_accuracy"] == pytest.approx(100 * arm.final.test_accuracy)
        assert rows[arm.norm]["train_loss"] == arm.final.train_loss
        assert rows[arm.norm]["status"] == "finished"
        expected = sum(e.train_seconds for e in arm.history.epochs) / 2
        assert rows[arm.norm]["seconds_per_epoch"] == pytest.approx(expected)


def test_conclusions_cite_the_numbers_they_are_computed_from(result) -> None:
    text = " ".join(conclusions(result))
    ours, plain = result.arm("batch"), result.arm("none")
    reached = re.search(r"reached ([\d.]+) % test accuracy", text)
    assert float(reached.group(1)) == pytest.approx(100 * ours.final.test_accuracy, abs=0.05)
    without = re.search(r"without normalization \(([\d.]+) %\)", text)
    assert float(without.group(1)) == pytest.approx(100 * plain.final.test_accuracy, abs=0.05)
    verb = "beat" if ours.final.test_accuracy > plain.final.test_accuracy else "did not beat"
    assert f"and {verb} the same network" in text
    gap = re.search(r"differ by at most ([\d.e+-]+) at any step", text)
    assert float(gap.group(1)) == pytest.approx(result.step_loss_gap, rel=0.05)


def test_max_abs_difference_closed_form() -> None:
    assert max_abs_difference([1.0, 2.0, 3.0], [1.5, 2.0, 0.0, 9.0]) == 3.0
    assert max_abs_difference([1.0, math.nan], [1.0, 2.0]) == math.inf
    with pytest.raises(ValueError, match="no common steps"):
        max_abs_difference([], [1.0])


def test_max_parameter_difference_needs_matching_layers() -> None:
    a = [NormParams("l", "BatchNorm2d", torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))]
    b = [NormParams("l", "BatchNorm2d", torch.tensor([1.0, 2.5]), torch.tensor([0.1, 0.5]))]
    assert max_parameter_difference(a, b) == pytest.approx(0.5)
    assert max_parameter_difference(a, []) is None
    c = [NormParams("l", "BatchNorm2d", torch.tensor([1.0]), torch.tensor([0.0]))]
    assert max_parameter_difference(a, c) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norms": ()}, "at least one"),
        ({"norms": ("batch", "batch")}, "repeat"),
        ({"norms": ("bogus",)}, "bogus"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_config_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TutorialConfig(**changes).validate()


def test_command_reproduces_the_config() -> None:
    from normlab.cli.main import build_parser
    from normlab.cli.tutorial import config_from_args

    config = TutorialConfig(epochs=3, seed=7, norms=("batch", "none"), compile=True)
    args = build_parser().parse_args(config.command().split()[1:])
    assert config_from_args(args) == config
    assert TutorialConfig().command() == "normlab tutorial"


def test_workers_give_the_same_numbers(result, tmp_path) -> None:
    """Arms trained in two worker processes equal the same arms trained in turn."""
    data = synthetic_dataset(num_train=256, num_test=64, seed=0)
    parallel = run_tutorial(result.config, data, tmp_path, progress=False, workers=2)
    assert [arm.norm for arm in parallel.arms] == [arm.norm for arm in result.arms]
    assert (parallel.workers, result.workers) == (2, 1)
    for ours, reference in zip(parallel.arms, result.arms, strict=True):
        assert ours.history.step_losses == reference.history.step_losses
        assert ours.final.test_accuracy == reference.final.test_accuracy
    with pytest.raises(ValueError, match="workers"):
        run_tutorial(result.config, data, tmp_path, progress=False, workers=0)


def test_workers_split_epochs_that_drop_a_final_image(tmp_path) -> None:
    """65 images in batches of 32: the epoch has 2 steps (the final image is dropped); the
    workers' half-epoch pieces must follow the engine's count, not 3."""
    config = TutorialConfig(
        dataset="synthetic", epochs=1, batch_size=32, lr=0.1, norms=("batch", "none")
    )
    data = synthetic_dataset(num_train=65, num_test=64, seed=0)
    parallel = run_tutorial(config, data, tmp_path / "two", progress=False, workers=2)
    alone = run_tutorial(config, data, tmp_path / "one", progress=False, workers=1)
    for ours, reference in zip(parallel.arms, alone.arms, strict=True):
        assert len(ours.history.step_losses) == 2
        assert ours.history.step_losses == reference.history.step_losses


def test_the_result_says_which_normlab_code_ran(result, tmp_path) -> None:
    from normlab import kernels
    from normlab.tutorial.pipeline import code_path
    from normlab.tutorial.report import build_report

    assert result.code == "kernels"  # make builds them; on CPU they run
    assert code_path("cuda") == "tensors"
    html = build_report(result).to_html()
    assert "normlab ran its fused CPU kernels (normlab.kernels)." in html
    try:
        kernels.set_enabled(False)
        assert code_path("cpu") == "tensors"
    finally:
        kernels.set_enabled(True)
