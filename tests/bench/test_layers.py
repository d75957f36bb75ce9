"""``bench layers``: the registry's layers, the shape families, the twins, measured cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from normlab.bench import layers, references, report
from normlab.bench.layers import Case, ShapeFamily
from normlab.errors import UsageError
from normlab.nn import registry
from normlab.testing.tolerance import assert_close_sum

LENET, RESNET, TOKENS, VOLUMES, TINY = (
    layers.FAMILIES[n] for n in ("lenet", "resnet", "tokens", "volumes", "tiny")
)


def test_the_shape_families_are_lenet_resnet_tokens_volumes_and_tiny() -> None:
    assert LENET.shapes == ((64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84))
    assert RESNET.shapes[:2] == ((128, 64, 32, 32), (32, 256, 14, 14))
    assert TOKENS.shapes == ((64, 50, 128), (16, 197, 384), (8, 256, 768)) and TOKENS.tokens
    assert all(len(shape) == 5 for shape in VOLUMES.shapes)
    assert all(math.prod(shape) <= 256 for shape in TINY.shapes)
    assert not LENET.tokens and not RESNET.tokens and not VOLUMES.tokens and not TINY.tokens
    assert layers.select_families(None) == [LENET, RESNET, TOKENS, VOLUMES]  # tiny: asked
    assert layers.select_families(["tiny"]) == [TINY]
    assert layers.select_families(["tokens", "lenet", "tokens"]) == [TOKENS, LENET]


def test_every_layer_of_the_registry_is_measured_with_the_extra_ones() -> None:
    names = layers.layer_names()
    mine = [n for n in registry.norm_names() if n != "none" and not n.startswith("torch-")]
    convolutions = [f"{name}-conv" for name in registry.CONVOLUTIONS]
    assert names == [*mine, *convolutions, "lrn", "sync"]
    assert {"batch", "layer", "group", "instance", "rms"} <= set(names)


def test_a_layer_added_to_the_registry_is_measured_without_touching_the_bench(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def dyt(c: int, dims: int, **kw: object) -> nn.Module:
        return DynamicTanh(c)

    monkeypatch.setitem(registry.NORM_LAYERS, "dyt", dyt)
    assert "dyt" in layers.layer_names()
    grid = layers.cases(["dyt"], [TOKENS])
    assert [c.shape for c in grid] == list(TOKENS.shapes)
    _, theirs = layers.build_twins(grid[0])
    assert isinstance(theirs, references.Reference)
    assert layers.missing_twins(["dyt"], [TOKENS]) == []


def test_every_registry_layer_has_a_twin_on_every_shape() -> None:
    assert layers.missing_twins(layers.layer_names(), layers.select_families(None)) == []


WITHOUT_TORCH_TWIN = [
    case
    for case in layers.cases(layers.layer_names(), layers.quick(layers.select_families(None)))
    if case.layer not in layers.EXTRA_LAYERS and f"torch-{case.layer}" not in registry.NORM_LAYERS
]


@pytest.mark.parametrize(
    "case",
    WITHOUT_TORCH_TWIN,
    ids=[f"{c.layer}-{'x'.join(map(str, c.shape))}" for c in WITHOUT_TORCH_TWIN],
)
def test_each_reference_computes_what_our_layer_computes(case: Case) -> None:
    """The twin of a layer torch.nn lacks is the same formula: outputs, input gradients and
    running statistics agree in float64 over two training steps (so the bench times the same
    work on both sides, and the oracle follows normlab's update rule)."""
    ours, reference = (m.double() for m in layers.build_twins(case))
    n = 1
    for _ in range(2):  # the second step starts from the first one's running statistics
        x = torch.randn(case.shape, dtype=torch.float64, requires_grad=True)
        dy = torch.randn(case.shape, dtype=torch.float64)
        mine, theirs = ours(x), reference(x)
        (grad_mine,) = torch.autograd.grad(mine, [x], dy)
        (grad_theirs,) = torch.autograd.grad(theirs, [x], dy)
        n = x.numel()  # at most every input in one sum
        assert_close_sum(mine, theirs, terms=n, abs_sum=theirs.abs().max() + 1)
        assert_close_sum(grad_mine, grad_theirs, terms=n, abs_sum=grad_theirs.abs().max() + 1)
    for buffer, expected in zip(ours.buffers(), reference.buffers(), strict=True):
        if not expected.is_floating_point():  # num_batches_tracked
            assert torch.equal(buffer, expected)
            continue
        # each update sums every input once (mean, then the squares for the variance)
        assert_close_sum(buffer, expected, terms=2 * n, abs_sum=expected.abs().max() + 1)


def test_the_bench_twins_update_running_statistics() -> None:
    """The running-statistics check above is not vacuous: ghost batch norm's twin moves its
    buffers once per call, by the chunks' size-weighted mean (normlab.nn.ghost's rule)."""
    case = Case("ghost", (64, 16, 8, 8), "lenet", False)
    _, reference = layers.build_twins(case)
    x = torch.randn(case.shape)
    reference(x)
    chunks = x.split(reference.oracle.virtual_batch_size)
    assert len(chunks) > 1
    mean = sum(c.shape[0] * c.mean((0, 2, 3)) for c in chunks) / x.shape[0]
    momentum = reference.oracle.momentum
    expected = momentum * mean  # from zeros, once: not once per chunk
    assert_close_sum(
        reference.oracle.running_mean,
        expected,
        terms=x.numel(),
        abs_sum=x.abs().max() + 1,
        dtype=torch.float32,
    )
    assert int(reference.oracle.num_batches_tracked) == 1


def test_tokens_are_only_for_layers_over_the_last_dimension_and_repeats_are_dropped() -> None:
    grid = layers.cases(["batch", "layer", "instance", "rms", "lrn"], [LENET, TOKENS])
    by_layer = {name: [c.shape for c in grid if c.layer == name] for name in layers.layer_names()}
    assert by_layer["batch"] == list(LENET.shapes)  # no tokens: BatchNorm1d has channels at 1
    assert by_layer["layer"] == [*LENET.shapes, *TOKENS.shapes]
    assert by_layer["rms"] == [*LENET.shapes, *TOKENS.shapes]
    # instance of (N, C) is LayerNorm(C), measured once already as "layer"
    assert by_layer["instance"] == list(LENET.shapes[:2])
    assert by_layer["lrn"] == list(LENET.shapes[:2])  # convolutional features only


def test_volumes_measure_the_3d_forms_and_skip_the_layers_of_images_only() -> None:
    grid = layers.cases(layers.layer_names(), [VOLUMES])
    measured = {c.layer: type(layers.ours(c)).__name__ for c in grid}
    assert measured["batch"] == "BatchNorm3d" and measured["instance"] == "InstanceNorm3d"
    assert measured["renorm"] == "BatchRenorm3d" and measured["sync"] == "SyncBatchNorm"
    for images_only in ("frozen-batch", "frn", "evonorm-b0", "ghost", "group-ws-conv"):
        assert images_only not in measured


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (Case("batch", (8, 64, 8, 28, 28), "volumes", False), "BatchNorm3d(64, eps=1e-05"),
        (Case("batch", (64, 6, 24, 24), "lenet", False), "BatchNorm2d(6, eps=1e-05"),
        (Case("batch", (64, 120), "lenet", False), "BatchNorm1d(120,"),
        (Case("layer", (64, 50, 128), "tokens", True), "LayerNorm((128,),"),
        (Case("group", (32, 256, 14, 14), "resnet", False), "GroupNorm(32, 256,"),
        (Case("rms", (16, 197, 384), "tokens", True), "RMSNorm((384,),"),
        (Case("lrn", (64, 6, 24, 24), "lenet", False), "LocalResponseNorm(5,"),
        (Case("sync", (64, 16, 8, 8), "lenet", False), "SyncBatchNorm(16,"),
    ],
)
def test_twins_are_the_same_layer_from_both_libraries(case: Case, expected: str) -> None:
    ours, theirs = layers.build_twins(case)
    assert type(ours).__module__.startswith("normlab.nn")
    assert type(theirs).__module__.startswith("torch.nn")
    assert repr(ours).startswith(expected) and repr(theirs).startswith(expected)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q) and not torch.all(p == 1)  # equal, and not the default init


class DynamicTanh(nn.Module):
    """A stand-in with DyT's parameters (``alpha``, ``weight``, ``bias``), computed in float64
    from the paper's formula: the reference must agree with it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.normalized_shape = (d,)
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.weight.double() * torch.tanh(self.alpha.double() * x.double()) + self.bias.double()
        return y.to(x.dtype)


class FrozenBatchNorm2d(nn.Module):
    """A stand-in with torchvision's buffers: the reference must be eval-mode batch norm."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_features, self.eps = c, 1e-5
        for name, value in [("weight", 1.5), ("bias", 0.25), ("running_mean", 0.5)]:
            self.register_buffer(name, torch.full((c,), value))
        self.register_buffer("running_var", torch.rand(c) + 0.5)


def test_references_compute_the_formula() -> None:
    dyt = DynamicTanh(8)
    with torch.no_grad():
        for p in dyt.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 8)
    reference = references.reference_for(dyt)
    assert reference is not None
    assert_close_sum(reference(x), dyt(x), terms=2, abs_sum=dyt(x).abs() + 2, dtype=torch.float32)
    frozen = FrozenBatchNorm2d(3)
    bn = nn.BatchNorm2d(3).eval()
    bn.load_state_dict(frozen.state_dict(), strict=False)
    image = torch.randn(2, 3, 4, 4)
    frozen_ref = references.reference_for(frozen)
    assert frozen_ref is not None
    expected = bn.double()(image.double())
    assert_close_sum(frozen_ref(image), expected, terms=4, abs_sum=expected.abs() + 2)


def test_a_layer_without_twin_nor_reference_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Mystery(nn.LayerNorm):
        """A layer over the last dimension that neither torch.nn nor the references know."""

    monkeypatch.setitem(registry.NORM_LAYERS, "mystery", lambda c, dims, **kw: Mystery(c))
    assert layers.missing_twins(["mystery"], [TOKENS]) == ["mystery (Mystery)"]
    with pytest.raises(UsageError, match="'mystery' \\(Mystery\\) has no torch twin nor reference"):
        layers.build_twins(Case("mystery", (64, 50, 128), "tokens", True))


def test_a_measured_case_has_ratios_from_its_timings_and_saved_bytes() -> None:
    case = Case("batch", (16, 4, 6, 6), "lenet", False)
    result = layers.bench_case(case, repeats=3, warmup=1, target_seconds=0.001)
    assert (result.module, result.shape, result.threads) == ("BatchNorm2d", (16, 4, 6, 6), 1)
    assert result.twin == "torch.nn.BatchNorm2d"
    assert result.eager.of_medians == pytest.approx(
        result.ours_eager.median / result.torch_eager.median
    )
    assert result.eager.per_repeat.min <= result.eager.per_repeat.max
    # both keep at least the input (16*4*6*6 float32) for their backward
    assert result.saved_ours >= 16 * 4 * 6 * 6 * 4 and result.saved_torch >= 16 * 4 * 6 * 6 * 4
    assert result.compiled is None and set(result.targets_met()) == {"eager", "memory"}


def test_each_thread_count_is_measured_and_the_count_restored() -> None:
    tiny = ShapeFamily("tiny", ((8, 4, 5, 5), (8, 6)))
    results = layers.bench_layers(
        ["batch", "group"], [tiny], threads=(2, 1), repeats=1, warmup=0, number=1
    )
    assert [(r.threads, r.layer, r.shape) for r in results] == [
        (t, layer, shape) for t in (2, 1) for layer in ("batch", "group") for shape in tiny.shapes
    ]
    assert torch.get_num_threads() == 1
    summaries = report.summarize(results)
    assert [(s.threads, s.layer, s.shapes) for s in summaries] == [
        (2, "batch", 2), (2, "group", 2), (1, "batch", 2), (1, "group", 2)
    ]  # fmt: skip
    batch = [r for r in results if r.threads == 2 and r.layer == "batch"]
    worst = max(batch, key=lambda r: r.eager.of_medians)
    assert summaries[0].eager.worst == worst.eager.of_medians
    assert summaries[0].eager.worst_shape == worst.shape


def test_the_results_page_keeps_other_sections_and_replaces_its_own(tmp_path: Path) -> None:
    tiny = ShapeFamily("tiny", ((8, 4, 5, 5),))
    results = layers.bench_layers(["batch"], [tiny], repeats=1, warmup=0, number=1)
    page = tmp_path / "bench-layers.md"
    for label in ("before", "after", "before"):
        section = report.layers_markdown(results, {"repeats": 1}, label, note=f"run {label}")
        report.write_section(page, label, section)
    text = page.read_text()
    assert text.startswith(report.RESULTS_TITLE)
    assert text.count("## before") == 1 and text.count("## after") == 1
    assert text.index("## before") < text.index("## after")
    assert "| 1 | batch | BatchNorm2d | torch.nn.BatchNorm2d | 1 |" in text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: layers.select_layers(["batch", "bogus"]), "unknown layer 'bogus'; valid: batch"),
        (
            lambda: layers.select_families(["vgg"]),
            "unknown shape family 'vgg'; valid: lenet, resnet, tokens",
        ),
        (
            lambda: layers.build_twins(Case("lrn", (64, 120), "lenet", False)),
            "'lrn' does not apply to shape",
        ),
        (lambda: layers.bench_layers(["batch"], [LENET], threads=(0,)), "at least 1, got 0"),
    ],
)
def test_bad_names_are_usage_errors(call, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()
