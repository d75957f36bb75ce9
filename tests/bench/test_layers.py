"""``bench layers``: the case grid, the twins it builds, one measured case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab.nn as nl
from normlab.bench import layers
from normlab.errors import UsageError


def test_the_shape_grid_is_the_tutorials_and_resnet_like() -> None:
    assert layers.select_shapes("lenet") == ((64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84))
    assert layers.select_shapes("resnet") == ((128, 64, 32, 32), (32, 256, 14, 14))
    assert layers.select_shapes("all") == layers.SHAPE_SETS["lenet"] + layers.SHAPE_SETS["resnet"]


def test_cases_skip_layers_that_do_not_apply_to_fully_connected_features() -> None:
    grid = layers.cases(["batch", "instance", "lrn"], [(64, 6, 24, 24), (64, 120)])
    assert grid == [
        ("batch", (64, 6, 24, 24)),
        ("batch", (64, 120)),
        ("instance", (64, 6, 24, 24)),
        ("lrn", (64, 6, 24, 24)),
    ]


@pytest.mark.parametrize(
    ("layer", "shape", "expected"),
    [
        ("batch", (64, 6, 24, 24), "BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True"),
        ("batch", (64, 120), "BatchNorm1d(120,"),
        ("instance", (64, 16, 8, 8), "InstanceNorm2d(16, eps=1e-05, momentum=0.1, affine=True"),
        ("layer", (64, 16, 8, 8), "LayerNorm((16, 8, 8),"),
        ("group", (64, 6, 24, 24), "GroupNorm(3, 6,"),  # largest G <= 32 with 2+ per group
        ("group", (32, 256, 14, 14), "GroupNorm(32, 256,"),
        ("rms", (64, 84), "RMSNorm((84,),"),
        ("lrn", (64, 6, 24, 24), "LocalResponseNorm(5,"),
    ],
)
def test_twins_are_the_same_layer_from_both_libraries(
    layer: str, shape: tuple[int, ...], expected: str
) -> None:
    ours, theirs = layers._twins(layer, shape, nl)
    assert type(ours).__module__.startswith("normlab.nn")
    assert type(theirs).__module__.startswith("torch.nn")
    assert repr(ours).startswith(expected) and repr(theirs).startswith(expected)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q) and not torch.all(p == 1)  # equal, and not the default init


def test_a_measured_case_has_ratios_from_its_timings_and_saved_bytes() -> None:
    result = layers.bench_case(
        "batch", (16, 4, 6, 6), nl, repeats=3, warmup=1, target_seconds=0.001
    )
    assert (result.module, result.shape) == ("BatchNorm2d", (16, 4, 6, 6))
    assert result.eager.of_medians == pytest.approx(
        result.ours_eager.median / result.torch_eager.median
    )
    assert result.eager.per_repeat.min <= result.eager.per_repeat.max
    # both keep at least the input (16*4*6*6 float32) for their backward
    assert result.saved_ours >= 16 * 4 * 6 * 6 * 4 and result.saved_torch >= 16 * 4 * 6 * 6 * 4
    assert result.compiled is None and set(result.targets_met()) == {"eager", "memory"}
    assert result.eager_target == 1.25 and result.compiled_target == 1.0


def test_torch_against_itself_saves_the_same_bytes() -> None:
    result = layers.bench_case("group", (8, 4, 5, 5), nn, repeats=1, warmup=0, number=1)
    assert result.saved_ours == result.saved_torch > 0
    assert result.targets_met()["memory"]
    assert result.eager_target == 1.5 and result.compiled_target is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: layers.select_layers(["batch", "bogus"]), "unknown layer 'bogus'; valid: batch"),
        (lambda: layers.select_shapes("vgg"), "unknown shape set 'vgg'; valid: lenet, resnet, all"),
        (lambda: layers._twins("lrn", (64, 120), nl), "'lrn' does not apply to shape"),
    ],
)
def test_bad_names_are_usage_errors(call, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()
