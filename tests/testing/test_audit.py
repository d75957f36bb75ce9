"""normlab.testing.audit: torch.nn's and normlab's layers pass; the course's original
batch norm fails exactly where its six defects are; the card reads well."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

import normlab.nn as ours
from normlab.bench import original
from normlab.testing import audit
from normlab.testing.auditing import CHECKS, KINDS, Status
from normlab.testing.auditing.bench import Bench
from normlab.testing.auditing.card import format_card, to_report
from normlab.testing.auditing.checks import recover_running_statistics
from normlab.tutorial import BatchNorm

TORCH = {
    "batch1d": nn.BatchNorm1d,
    "batch2d": nn.BatchNorm2d,
    "batch3d": nn.BatchNorm3d,
    "instance2d": nn.InstanceNorm2d,
    "layer": nn.LayerNorm,
    "group": nn.GroupNorm,
    "rms": nn.RMSNorm,
}
OURS = {
    "batch1d": ours.BatchNorm1d,
    "batch2d": ours.BatchNorm2d,
    "batch3d": ours.BatchNorm3d,
    "instance2d": ours.InstanceNorm2d,
    "layer": ours.LayerNorm,
    "group": ours.GroupNorm,
    "rms": ours.RMSNorm,
}

# The course's original layer, graded as a BatchNorm2d: the rows its six defects fail.
COURSE_DEFECTS = {
    "training mode under torch.no_grad()": "grad mode decides training",
    "evaluation mode with gradients enabled": "eval ignored under grad",
    "state_dict with the twin, both ways": "moving averages outside state_dict",
    "follows .to(dtype)": "moving averages outside state_dict (not moved)",
    "running variance is unbiased": "biased running variance",
    "memory flat over 300 steps": "the moving averages keep the graph alive",
    "bad input raises an exception": "assert for errors",
    # consequences of the above in the rows that compare evaluation with the twin
    "forward, evaluation mode": "biased running variance",
    "gradients, evaluation mode": "eval ignored under grad",
}


def tutorial_batch_norm_2d(
    num_features: int, eps: float = 1e-5, momentum: float = 0.1
) -> nn.Module:
    return BatchNorm(num_features, num_dims=4, eps=eps, momentum=momentum)


def test_kinds_and_twins() -> None:
    assert list(KINDS) == list(TORCH)
    assert {name: kind.twin for name, kind in KINDS.items()} == TORCH


@pytest.mark.parametrize("kind", list(TORCH))
def test_torch_layers_pass(kind: str) -> None:
    result = audit(TORCH[kind], kind)
    result.assert_passes()
    assert len(result.checks) == len(CHECKS)
    expected_skips = 0 if KINDS[kind].has_running_stats else 4 + (kind == "instance2d")
    assert result.count(Status.NOT_APPLICABLE) == expected_skips


@pytest.mark.parametrize("kind", list(OURS))
def test_normlab_layers_pass(kind: str) -> None:
    audit(OURS[kind], kind).assert_passes()


def test_the_tutorials_corrected_batch_norm_passes() -> None:
    result = audit(tutorial_batch_norm_2d, "batch2d")
    result.assert_passes()
    (skipped,) = [c for c in result.checks if c.status is Status.NOT_APPLICABLE]
    assert skipped.name == "momentum=None (cumulative average)"  # it has no cumulative mode


def test_the_courses_original_fails_where_its_defects_are() -> None:
    result = audit(functools.partial(original.BatchNorm, num_dims=4), "batch2d")
    failed = {c.name for c in result.checks if c.failed}
    assert failed == set(COURSE_DEFECTS)
    assert not result.passed
    rows = {c.name: c for c in result.checks}
    assert "AssertionError" in rows["bad input raises an exception"].measured
    assert "accepted (1, 4, 1, 1)" in rows["bad input raises an exception"].measured
    assert "no running_mean, running_var" in rows["state_dict with the twin, both ways"].measured
    assert "moving_mean stays float32" in rows["follows .to(dtype)"].measured
    assert rows["memory flat over 300 steps"].value > 1  # graph nodes per step
    # m = 200 values per channel: the biased variance is off by var / 200, far above rounding
    variance = rows["running variance is unbiased"]
    assert variance.value > 1e3 * variance.tolerance
    for name in ("momentum=0.3", "momentum=None (cumulative average)"):
        assert rows[name].status is Status.NOT_APPLICABLE  # its constructor has no momentum


def test_assert_passes_lists_the_failed_rows_with_their_pitfalls() -> None:
    result = audit(functools.partial(original.BatchNorm, num_dims=4), "batch2d")
    with pytest.raises(AssertionError) as raised:
        result.assert_passes()
    message = str(raised.value)
    assert message.count("\n- ") == len(COURSE_DEFECTS)
    assert "- running variance is unbiased: max|running var - twin's|" in message
    assert "register_buffer" in message and "torch.no_grad()" in message


def test_recovered_running_statistics_are_the_buffers() -> None:
    bench = Bench(nn.BatchNorm2d, KINDS["batch2d"])
    layer = bench.layer(momentum=0.5)
    for shift in (-3.0, 2.0):
        layer(bench.input(mean=shift))
    mean, var = recover_running_statistics(layer, bench, layer.eps)
    torch.testing.assert_close(mean, layer.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(var, layer.running_var, rtol=1e-12, atol=0)


def test_bad_usage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown kind 'batch'; use one of batch1d"):
        audit(nn.BatchNorm2d, "batch")
    with pytest.raises(ValueError, match=r"BatchNorm\(4\) raised TypeError: .*num_dims"):
        audit(BatchNorm, "batch2d")
    with pytest.raises(ValueError, match=r"returned Tensor, not a torch\.nn\.Module"):
        audit(torch.zeros, "batch2d")
    with pytest.raises(ValueError, match="unknown check 'speed'"):
        audit(nn.BatchNorm2d, "batch2d", checks=["speed"])


def test_a_layer_that_raises_fails_its_rows_and_the_audit_goes_on() -> None:
    class Broken(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("not implemented yet\nsecond line")

    result = audit(Broken, "batch2d")
    first = result.checks[0]
    assert first.failed and first.measured == "raised RuntimeError: not implemented yet"
    assert len(result.checks) == len(CHECKS)


def test_the_card_as_text_json_and_html() -> None:
    result = audit(functools.partial(original.BatchNorm, num_dims=4), "batch2d", target="course")
    text = format_card(result)
    lines = text.splitlines()
    assert lines[0] == "normlab audit: course (batch2d) against torch.nn.BatchNorm2d(4)"
    assert sum(" FAILED " in line for line in lines) == len(COURSE_DEFECTS)
    assert lines[-1].endswith(": FAIL") and lines[-1].startswith("9 passed, 9 failed")
    data = json.loads(result.to_json())
    assert data["passed"] is False and len(data["checks"]) == len(CHECKS)
    row = next(r for r in data["checks"] if r["name"] == "running variance is unbiased")
    assert row["status"] == "failed" and row["value"] > row["tolerance"] and row["pitfall"]
    page = to_report(result).to_html()
    assert "<table" in page and "m / (m - 1)" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained
