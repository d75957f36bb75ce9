"""SyncBatchNorm across 2 gloo ranks equals torch.nn batch norm on the concatenated batch.

The 2-rank cases all run in ONE launch of this file as a script (``python
test_sync_batchnorm.py SPEC OUT``, two ranks started by
``normlab.distributed.launch.spawn_ranks`` on
127.0.0.1): each rank runs its slice of every case and saves what it saw; the test process
then builds the oracle (``torch.nn.BatchNorm*d`` in float64 on the whole batch) and
compares. Fallbacks, conversion and errors run in this process, without any rank.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab.nn as nnl
from normlab.distributed.launch import spawn_ranks
from normlab.models.lenet import LeNet
from normlab.nn import SyncBatchNorm, convert_sync_batchnorm
from normlab.testing.tolerance import NormalizationSums, assert_close_sum, normalization_sums

WORLD = 2
DT = torch.float64
TORCH_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

# name -> (spatial dims, channels, per-rank split, layer kwargs, training steps)
CASES: dict[str, tuple[int, int, tuple[int, int], dict[str, Any], int]] = {
    "even-2d": (2, 3, (4, 4), {}, 3),
    "uneven-1d": (1, 4, (3, 7), {"eps": 1e-3, "momentum": 0.3}, 3),
    "empty-rank": (0, 5, (0, 6), {}, 2),
    "empty-rank0-3d": (3, 2, (5, 0), {"momentum": None}, 2),
    "one-each": (0, 3, (1, 1), {}, 2),
    "no-affine-cumulative": (2, 3, (2, 5), {"affine": False, "momentum": None}, 3),
    "no-bias": (2, 3, (3, 2), {"bias": False}, 2),
    "untracked": (1, 2, (4, 3), {"track_running_stats": False}, 2),
}


def _shape(dims: int, n: int, c: int) -> tuple[int, ...]:
    return (n, c, *((3, 2, 2)[:dims]))


def _spec() -> dict[str, Any]:
    """Inputs, output gradients and initial affine parameters of every case (float64)."""
    generator = torch.Generator().manual_seed(0)
    spec: dict[str, Any] = {}
    for name, (dims, c, split, _, steps) in CASES.items():
        n = sum(split)

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=DT)

        spec[name] = {
            "inputs": [draw(*_shape(dims, n, c)) * 2 + 3 for _ in range(steps)],
            "grads": [draw(*_shape(dims, n, c)) for _ in range(steps)],
            "eval": draw(*_shape(dims, n, c)),
            "weight": 1 + 0.5 * draw(c),
            "bias": draw(c),
        }
    # a LeNet step under DDP, 2 x 6 images, compared with one process on all 12
    spec["ddp-lenet"] = {
        "images": torch.randn(3, 2 * 6, 1, 28, 28, generator=generator, dtype=DT),
        "labels": torch.randint(0, 10, (3, 2 * 6), generator=generator),
    }
    return spec


def _bounds(split: tuple[int, int], rank: int) -> slice:
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def _new_layer(c: int, kwargs: dict[str, Any], case: dict[str, Any]) -> nn.Module:
    layer = SyncBatchNorm(c, dtype=DT, **kwargs)
    if layer.weight is not None:
        layer.weight.data.copy_(case["weight"])
    if layer.bias is not None:
        layer.bias.data.copy_(case["bias"])
    return layer


def _lenet_ddp_worker(case: dict[str, Any], rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = LeNet(norm="torch-batch", activation="relu").to(DT)
    model = convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for images, labels in zip(case["images"], case["labels"], strict=True):
        part = slice(rank * 6, (rank + 1) * 6)
        optimizer.zero_grad()
        F.cross_entropy(ddp(images[part]), labels[part]).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(spec_path: str, out_dir: str) -> None:
    """One rank: run its slice of every case, save the results to OUT/rank{r}.pt."""
    from normlab.distributed import groups as distributed

    context = distributed.setup(device="cpu")
    rank = context.rank
    spec = torch.load(spec_path, weights_only=True)
    results: dict[str, Any] = {}
    for name, (_, c, split, kwargs, _) in CASES.items():
        case, part = spec[name], _bounds(split, rank)
        layer = _new_layer(c, kwargs, case)
        outputs, input_grads, weight_grads, bias_grads = [], [], [], []
        for x, g in zip(case["inputs"], case["grads"], strict=True):
            xi = x[part].clone().requires_grad_()
            y = layer(xi)
            y.backward(g[part])
            outputs.append(y.detach())
            input_grads.append(xi.grad if xi.grad is not None else torch.zeros_like(xi))
            for store, p in ((weight_grads, layer.weight), (bias_grads, layer.bias)):
                if p is not None:
                    store.append(p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                    p.grad = None
        layer.eval()
        with torch.no_grad():
            evaluated = layer(case["eval"][part])
            if rank == 0:  # eval must not communicate: an unmatched call would hang rank 0
                layer(case["eval"][part])
        results[name] = {
            "outputs": outputs,
            "input_grads": input_grads,
            "weight_grads": weight_grads,
            "bias_grads": bias_grads,
            "eval": evaluated,
            "buffers": {
                k: v.clone()
                for k, v in layer.state_dict().items()
                if "running" in k or "num_batches" in k
            },
        }
    results["ddp-lenet"] = _lenet_ddp_worker(spec["ddp-lenet"], rank)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    distributed.teardown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every case on 2 ranks once; return the spec and each rank's results."""
    tmp = tmp_path_factory.mktemp("sync")
    spec = _spec()
    torch.save(spec, tmp / "spec.pt")
    exits = spawn_ranks(
        [sys.executable, __file__, str(tmp / "spec.pt"), str(tmp)],
        WORLD,
        timeout_s=120,
        env={"NORMLAB_DIST_TIMEOUT": "30"},
    )
    for e in exits:
        assert e.returncode == 0, f"rank {e.rank} failed:\n{e.output[-3000:]}"
    return spec, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_batch_norm_on_the_concatenated_batch(
    ranks: tuple[dict[str, Any], list[dict[str, Any]]], name: str
) -> None:
    spec, results = ranks
    case = spec[name]
    dims, c, split, kwargs, _ = CASES[name]
    oracle = TORCH_BN[dims](c, dtype=DT, **kwargs)
    for p, key in ((oracle.weight, "weight"), (oracle.bias, "bias")):
        if p is not None:
            p.data.copy_(case[key])
    stat_sums = torch.zeros((), dtype=DT)
    for step, (x, g) in enumerate(zip(case["inputs"], case["grads"], strict=True)):
        xi = x.clone().requires_grad_()
        y = oracle(xi)
        y.backward(g)
        ours_y = torch.cat([results[r][name]["outputs"][step] for r in range(WORLD)])
        ours_dx = torch.cat([results[r][name]["input_grads"][step] for r in range(WORLD)])
        terms, sums = _batch_norm_sums(x, g, oracle.weight, oracle.eps)
        output_sum = _as_input(sums.output, x)
        if oracle.bias is not None:
            output_sum = output_sum + _as_input(
                oracle.bias.detach().abs()[:, None].expand_as(sums.output), x
            )
        assert_close_sum(ours_y, y.detach(), terms=terms, abs_sum=output_sum)
        assert_close_sum(ours_dx, xi.grad, terms=terms, abs_sum=_as_input(sums.grad_input, x))
        # each running-statistics update: a mean of ``terms`` values of size |x| (and x^2)
        stat_sums = stat_sums + x.abs().max() + x.square().max()
        grad_sums = {
            "weight_grads": sums.weight_terms.sum(1),
            "bias_grads": g.abs().sum([d for d in range(g.dim()) if d != 1]),
        }
        for p, key in ((oracle.weight, "weight_grads"), (oracle.bias, "bias_grads")):
            if p is None:
                assert all(not results[r][name][key] for r in range(WORLD))
                continue
            # each rank holds the gradient of its slice; DDP would add (and average) them
            summed = sum(results[r][name][key][step] for r in range(WORLD))
            assert_close_sum(summed, p.grad, terms=terms, abs_sum=grad_sums[key])
            p.grad = None
    expected_buffers = {k: v for k, v in oracle.state_dict().items() if k not in ("weight", "bias")}
    for r in range(WORLD):
        buffers = results[r][name]["buffers"]
        assert set(buffers) == set(expected_buffers)
        for key, value in expected_buffers.items():
            if not value.is_floating_point():  # num_batches_tracked
                assert torch.equal(buffers[key], value)
                continue
            assert_close_sum(buffers[key], value, terms=terms, abs_sum=stat_sums + 1)
    oracle.eval()
    with torch.no_grad():
        if oracle.track_running_stats:  # running statistics: per example, rank-independent
            expected_eval = oracle(case["eval"])
        else:  # no running statistics: each rank normalises its own slice, as torch.nn does
            slices = [case["eval"][_bounds(split, r)] for r in range(WORLD) if split[r] > 0]
            expected_eval = torch.cat([oracle(part) for part in slices])
    ours_eval = torch.cat([results[r][name]["eval"] for r in range(WORLD)])
    x = case["eval"]
    weight = torch.ones(c, dtype=DT) if oracle.weight is None else oracle.weight.detach().abs()
    shape = (1, c, *[1] * (x.dim() - 2))
    if oracle.track_running_stats:  # fixed statistics: one term per value
        sigma = (oracle.running_var + oracle.eps).sqrt().view(shape)
        eval_sum = weight.view(shape) * (x.abs() + oracle.running_mean.abs().view(shape)) / sigma
    else:  # each rank's slice by its own statistics
        parts = [x[_bounds(split, r)] for r in range(WORLD) if split[r] > 0]
        eval_sum = torch.cat(
            [
                _as_input(_batch_norm_sums(p, p, oracle.weight, oracle.eps)[1].output, p)
                for p in parts
            ]
        )
    if oracle.bias is not None:
        eval_sum = eval_sum + oracle.bias.detach().abs().view(shape)
    assert_close_sum(ours_eval, expected_eval, terms=x.numel() // c, abs_sum=eval_sum)


def test_ddp_lenet_with_converted_layers_equals_one_process_on_the_whole_batch(
    ranks: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    spec, results = ranks
    case = spec["ddp-lenet"]
    torch.manual_seed(0)
    model = LeNet(norm="torch-batch", activation="relu").to(DT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for images, labels in zip(case["images"], case["labels"], strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()  # mean over all 12 = DDP's average
        optimizer.step()
    expected = model.state_dict()
    for r in range(WORLD):
        assert list(results[r]["ddp-lenet"]) == list(expected)
        for key, value in expected.items():
            # not one sum's bound: rounding accumulated over a float64 training trajectory
            # (steps of SGD with momentum through LeNet), ~1e7 u; a wrong gradient misses by O(1)
            torch.testing.assert_close(results[r]["ddp-lenet"][key], value, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------- one process


def _batch_norm_sums(
    x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[int, NormalizationSums]:
    """(values per channel, ``normalization_sums`` of batch norm in training): shapes
    ``(C, N * H * W)``, one row per channel."""
    rows, grads = (t.transpose(0, 1).reshape(t.shape[1], -1) for t in (x, g))
    w = None if weight is None else weight.detach()[:, None]
    return rows.shape[1], normalization_sums(rows, grads, eps, weight=w)


def _as_input(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(C, N * H * W)`` rows back into ``x``'s ``(N, C, H, W)``."""
    return rows.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)


def _assert_eval_close(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Evaluation (or a group of one): outputs within the bound of a normalization over the
    ``N * H * W`` values of each channel (evaluation: one term each, a smaller bound)."""
    with torch.no_grad():
        expected = reference(x)
        actual = ours(x)
    terms, sums = _batch_norm_sums(x, torch.zeros_like(x), reference.weight, reference.eps)
    output = _as_input(sums.output, x)
    if reference.bias is not None:
        output = output + reference.bias.detach().abs().view(1, -1, 1, 1)
    if not reference.training and reference.running_var is not None:  # fixed statistics
        sigma = (reference.running_var + reference.eps).sqrt().view(1, -1, 1, 1)
        output = output + (x.abs() + reference.running_mean.abs().view(1, -1, 1, 1)) / sigma
    assert_close_sum(actual, expected, terms=terms, abs_sum=output)


def _torch_and_ours(**kwargs: Any) -> tuple[nn.Module, nn.Module]:
    return nn.BatchNorm2d(3, dtype=DT, **kwargs), SyncBatchNorm(3, dtype=DT, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False}])
def test_without_torch_distributed_it_is_plain_batch_norm(kwargs: dict[str, Any]) -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    reference, ours = _torch_and_ours(**kwargs)
    torch.manual_seed(0)
    weight_sums: list[torch.Tensor] = []
    for _ in range(3):
        x = torch.randn(6, 3, 4, 4, dtype=DT) * 2 + 1
        g = torch.randn_like(x)
        xs = [x.clone().requires_grad_() for _ in range(2)]
        for layer, xi in zip((reference, ours), xs, strict=True):
            layer(xi).backward(g)
        terms, sums = _batch_norm_sums(x, g, reference.weight, reference.eps)
        grad_sum = _as_input(sums.grad_input, x)
        assert_close_sum(xs[1].grad, xs[0].grad, terms=terms, abs_sum=grad_sum)
        weight_sums.append(sums.weight_terms.sum(1))
    for key, value in reference.state_dict().items():
        # three updates of running statistics, each a mean of ``terms`` values of size |x|
        if key == "num_batches_tracked":
            assert ours.state_dict()[key] == value
            continue
        bound = 3 * (x.abs().max() + x.square().max())
        assert_close_sum(ours.state_dict()[key], value, terms=terms, abs_sum=bound)
    if reference.weight is not None:  # the weight gradient accumulates over the three calls
        assert_close_sum(
            ours.weight.grad, reference.weight.grad, terms=3 * terms, abs_sum=sum(weight_sums)
        )
    reference.eval()
    ours.eval()
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    _assert_eval_close(ours, reference, x)


def test_group_of_one_and_eval_mode_do_not_communicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    from normlab.functional import sync_batchnorm as sync

    def refuse(*args: Any) -> None:
        raise AssertionError("a collective was called")

    monkeypatch.setattr(sync.SyncBatchNormFunction, "apply", refuse)
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        reference, ours = _torch_and_ours()
        x = torch.randn(5, 3, 2, 2, dtype=DT)
        _assert_eval_close(ours, reference, x)
        torch.testing.assert_close(ours.running_var, reference.running_var)
    finally:
        dist.destroy_process_group()


def _trained(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        x = torch.randn(8, 1, 28, 28, dtype=next(model.parameters()).dtype)
        F.cross_entropy(model(x), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("norm", ["batch", "torch-batch"])
def test_convert_lenet_keeps_weights_buffers_and_flags(norm: str) -> None:
    model = _trained(LeNet(norm=norm).to(DT))
    model.layers[5].eval()  # a mixed training flag must survive
    model.layers[1].weight.requires_grad_(False)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_params = dict(model.named_parameters())
    flags = {name: m.training for name, m in model.named_modules()}
    x = torch.randn(4, 1, 28, 28, dtype=DT)
    model.eval()
    expected_eval = model(x)
    model.train()
    model.layers[5].eval()
    expected_train = model(x)
    model.load_state_dict(before_state)

    converted = convert_sync_batchnorm(model)
    assert converted is model
    norms = [m for _, m in converted.norm_layers()]
    assert len(norms) == 4 and all(type(m) is SyncBatchNorm for m in norms)
    assert {name: m.training for name, m in converted.named_modules()} == flags
    for name, p in converted.named_parameters():
        assert p is before_params[name]  # the same Parameter objects: optimizers stay valid
    assert not converted.layers[1].weight.requires_grad
    assert list(converted.state_dict()) == list(before_state)
    # not a rounding tolerance: the conversion keeps the very tensors, bit for bit
    torch.testing.assert_close(converted.state_dict(), before_state, rtol=0, atol=0)
    # normlab's layers give the same bits; torch.nn's kernels round differently
    tol = {"rtol": 0, "atol": 0} if norm == "batch" else {"rtol": 1e-10, "atol": 1e-12}
    converted.eval()
    torch.testing.assert_close(converted(x), expected_eval, **tol)
    converted.train()
    converted.layers[5].eval()
    torch.testing.assert_close(converted(x), expected_train, **tol)


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm1d(4, affine=False, track_running_stats=False),
        nnl.BatchNorm3d(4, eps=1e-3, momentum=None, bias=False),
        nn.BatchNorm2d(4, dtype=DT),
    ],
    ids=["torch-untracked", "normlab-no-bias", "torch-float64"],
)
def test_convert_a_single_layer_returns_a_new_sync_layer(layer: nn.Module) -> None:
    converted = SyncBatchNorm.convert_sync_batchnorm(layer, process_group=None)
    assert type(converted) is SyncBatchNorm
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        assert getattr(converted, attr) == getattr(layer, attr)
    assert (converted.bias is None) == (layer.bias is None)
    assert converted.weight is layer.weight
    assert converted.running_mean is layer.running_mean
    assert list(converted.state_dict()) == list(layer.state_dict())
    dtypes = [v.dtype for v in layer.state_dict().values()]
    assert [v.dtype for v in converted.state_dict().values()] == dtypes


def test_convert_leaves_other_norms_alone_and_rejects_non_modules() -> None:
    model = nn.Sequential(nn.InstanceNorm2d(3), nnl.InstanceNorm2d(3), nnl.GroupNorm(1, 3))
    converted = convert_sync_batchnorm(model)
    assert [type(m) for m in converted] == [nn.InstanceNorm2d, nnl.InstanceNorm2d, nnl.GroupNorm]
    with pytest.raises(TypeError, match=r"expects an nn\.Module, got list"):
        convert_sync_batchnorm([nn.BatchNorm2d(3)])  # type: ignore[arg-type]


def test_signature_state_dict_and_repr_match_torch() -> None:
    ours = inspect.signature(SyncBatchNorm.__init__).parameters
    theirs = inspect.signature(nn.SyncBatchNorm.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
    reference = nn.SyncBatchNorm(5, momentum=0.2)
    reference.running_mean.uniform_()
    ours_layer = SyncBatchNorm(5, momentum=0.2)
    ours_layer.load_state_dict(reference.state_dict())
    reference.load_state_dict(ours_layer.state_dict())
    assert list(ours_layer.state_dict()) == list(reference.state_dict())
    torch.testing.assert_close(ours_layer.running_mean, reference.running_mean)
    assert repr(ours_layer).replace("SyncBatchNorm", "") == repr(reference).replace(
        "SyncBatchNorm", ""
    )


def test_bad_inputs_raise_torch_errors() -> None:
    layer = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        SyncBatchNorm(0)(torch.randn(2, 0))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer(torch.randn(1, 3))


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
