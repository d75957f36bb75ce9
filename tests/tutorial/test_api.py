"""normlab.tutorial.api: the course tutorial's API, corrected, against torch.nn and the original."""

from __future__ import annotations

import io
import itertools
import os

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn
from normlab.bench import original
from normlab.testing.auditing.checks import graph_nodes
from normlab.testing.tolerance import assert_close_sum, normalization_sums
from normlab.tutorial import api as T


def _batch_norm_sums(
    X: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    gradient: bool = False,
    eps: float = 1e-5,
) -> tuple[int, dict[str, torch.Tensor]]:
    """(values per channel ``N * H * W``, ``sum |terms|`` of batch norm's output ``y``,
    its gradients ``dx, dw, db`` for the upstream ``linspace(-1, 1)`` and one update of the
    moving statistics ``moving``, shape ``(2, C)``): training normalizes by the batch's
    statistics (``normalization_sums``), evaluation by ``stats`` (one term per value)."""
    c = X.shape[1]
    rows = X.double().transpose(0, 1).reshape(c, -1)
    grads = torch.linspace(-1, 1, X.numel(), dtype=X.dtype).view(X.shape)
    grads = grads.transpose(0, 1).reshape(c, -1).abs() if gradient else torch.zeros_like(rows)
    w = gamma.double().abs().reshape(c, 1)
    if stats is None:
        sums = normalization_sums(rows, grads, eps, weight=w)
        output, grad_input, weight_terms = sums.output, sums.grad_input, sums.weight_terms
    else:
        sigma = (stats[1].double().reshape(c, 1) + eps).sqrt()
        condition = (rows.abs() + stats[0].double().abs().reshape(c, 1)) / sigma
        output, grad_input, weight_terms = w * condition, w * grads / sigma, grads * condition
    output = output + beta.double().abs().reshape(c, 1)
    as_x = lambda t: t.reshape(c, X.shape[0], *X.shape[2:]).transpose(0, 1)  # noqa: E731
    centred = (rows - rows.mean(1, keepdim=True)).abs()
    mean_terms = rows.abs().mean(1, keepdim=True)
    variance = (centred * (centred + 2 * mean_terms)).mean(1) * 2  # n / (n - 1) <= 2
    return rows.shape[1], {
        "y": as_x(output),
        "dx": as_x(grad_input),
        "dw": weight_terms.sum(1),
        "db": grads.sum(1),
        "moving": torch.stack([mean_terms[:, 0], variance]),
    }


def _assert_mean_zero(Y: torch.Tensor, X: torch.Tensor) -> None:
    """Training normalizes by the batch's statistics: each channel's mean is 0 within the
    rounding of ``Y`` and of the mean (two sums of ``N`` terms of ``Y``'s magnitudes)."""
    ones, zeros = torch.ones(X.shape[1]), torch.zeros(X.shape[1])
    terms, sums = _batch_norm_sums(X, ones, zeros)
    assert_close_sum(Y.mean(0), torch.zeros_like(Y[0]), terms=terms, abs_sum=2 * sums["y"].mean(0))


# The negative control for the defects the corrected module fixes: the course's original
# layer, re-created in normlab.bench.original.


# ---------------------------------------------------------------------------------------------
# batch_norm: equal to torch.nn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "reference"), [((8, 3, 4, 5), nn.BatchNorm2d), ((10, 3), nn.BatchNorm1d)]
)
def test_batch_norm_equals_torch_nn_including_unbiased_moving_var(
    shape: tuple[int, ...], reference: type[nn.Module]
) -> None:
    g = torch.Generator().manual_seed(0)
    ref = reference(3, momentum=0.2, dtype=torch.float64)
    param_shape = (1, 3, 1, 1) if len(shape) == 4 else (1, 3)
    gamma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    beta = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(gamma)
        ref.bias.copy_(beta)
    mm = torch.zeros(param_shape, dtype=torch.float64)
    mv = torch.ones(param_shape, dtype=torch.float64)
    stat_sums = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(3):
        X = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
        Y, mm, mv = T.batch_norm(
            X, gamma.view(param_shape), beta.view(param_shape), mm, mv, momentum=0.2
        )
        terms, sums = _batch_norm_sums(X, gamma, beta)
        assert_close_sum(Y, ref(X), terms=terms, abs_sum=sums["y"])
        stat_sums = stat_sums + sums["moving"]
    assert_close_sum(mm.view(-1), ref.running_mean, terms=terms, abs_sum=stat_sums[0])
    assert_close_sum(mv.view(-1), ref.running_var, terms=terms, abs_sum=stat_sums[1] + 1)
    ref.eval()
    X = torch.randn(shape, generator=g, dtype=torch.float64)
    Y, mm2, mv2 = T.batch_norm(
        X, gamma.view(param_shape), beta.view(param_shape), mm, mv, training=False
    )
    terms, sums = _batch_norm_sums(X, gamma, beta, (ref.running_mean, ref.running_var))
    assert_close_sum(Y, ref(X), terms=terms, abs_sum=sums["y"])
    assert mm2 is mm and mv2 is mv  # evaluation leaves the moving statistics alone


def test_the_course_original_stores_the_biased_variance() -> None:
    """Negative control: the original's moving variance differs from torch.nn's."""
    X = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    ones, zeros = torch.ones(1, 3, 1, 1, dtype=X.dtype), torch.zeros(1, 3, 1, 1, dtype=X.dtype)
    _, _, course_var = original.batch_norm_by_grad_mode(X, ones, zeros, zeros, ones)
    _, _, our_var = T.batch_norm(X, ones, zeros, zeros, ones)
    ref = nn.BatchNorm2d(3, dtype=X.dtype)
    ref(X)
    torch.testing.assert_close(our_var.view(-1), ref.running_var)
    assert not torch.allclose(course_var.view(-1), ref.running_var)


def test_training_is_decided_by_the_argument_not_grad_mode() -> None:
    X = torch.randn(16, 3) * 4 + 2
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    with torch.no_grad():
        Y, mm, _ = T.batch_norm(X, ones, zeros, zeros, ones, training=True)
        course_Y, course_mm, _ = original.batch_norm_by_grad_mode(X, ones, zeros, zeros, ones)
    _assert_mean_zero(Y, X)  # batch statistics
    assert not torch.equal(mm, zeros)  # and the moving statistics moved
    torch.testing.assert_close(course_Y, X / torch.sqrt(torch.tensor(1 + 1e-5)))  # the bug
    assert torch.equal(course_mm, zeros)
    Xg = X.clone().requires_grad_()
    Y, mm, _ = T.batch_norm(Xg, ones, zeros, zeros, ones, training=False)  # grad on, eval
    torch.testing.assert_close(Y, Xg / torch.sqrt(torch.tensor(1 + 1e-5)))
    assert torch.equal(mm, zeros)


def test_moving_statistics_carry_no_graph() -> None:
    X = torch.randn(8, 3, 2, 2, requires_grad=True)
    gamma = torch.ones(1, 3, 1, 1, requires_grad=True)
    beta = torch.zeros(1, 3, 1, 1, requires_grad=True)
    zeros, ones = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    Y, mm, mv = T.batch_norm(X, gamma, beta, zeros, ones)
    assert Y.grad_fn is not None
    assert mm.grad_fn is None and mv.grad_fn is None
    assert not mm.requires_grad and not mv.requires_grad
    _, course_mm, _ = original.batch_norm_by_grad_mode(X, gamma, beta, zeros, ones)
    assert course_mm.grad_fn is not None  # the original's moving mean drags the graph along


@pytest.mark.parametrize(
    ("shape", "kwargs", "text"),
    [
        ((2, 3, 4), {}, "2D \\(N, C\\) or 4D"),
        ((1, 3), {}, "Expected more than 1 value per channel when training"),
        ((4, 3), {"eps": 0.0}, "eps must be positive"),
        ((4, 5), {}, "moving_mean has 3 elements but X has 5 channels"),
    ],
)
def test_batch_norm_errors_are_value_errors(
    shape: tuple[int, ...], kwargs: dict[str, float], text: str
) -> None:
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    with pytest.raises(ValueError, match=text):
        T.batch_norm(torch.randn(shape), ones, zeros, zeros, ones, **kwargs)


def test_one_value_per_channel_message_equals_torch() -> None:
    X = torch.randn(1, 3)
    with pytest.raises(ValueError) as ref:
        nn.BatchNorm1d(3)(X)
    with pytest.raises(ValueError) as ours:
        T.BatchNorm(3, num_dims=2)(X)
    assert str(ours.value) == str(ref.value)


# ---------------------------------------------------------------------------------------------
# BatchNorm: the module
# ---------------------------------------------------------------------------------------------


def test_module_matches_torch_over_training_and_eval() -> None:
    g = torch.Generator().manual_seed(1)
    ours = T.BatchNorm(4, num_dims=4).double()
    ref = nn.BatchNorm2d(4, dtype=torch.float64)
    for step in range(4):
        for m in (ours, ref):
            m.train(step < 3)
        X = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64) * 2 + 1
        results = []
        for m in (ours, ref):
            x = X.clone().requires_grad_()
            y = m(x)
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
            grads = [p.grad.reshape(-1).clone() for p in m.parameters()]
            m.zero_grad()
            results.append([y.detach(), x.grad, *grads])
        stats = None if step < 3 else (ref.running_mean, ref.running_var)
        weight = ref.weight.detach()
        terms, sums = _batch_norm_sums(X, weight, ref.bias.detach(), stats, gradient=True)
        for a, b, key in zip(*results, ("y", "dx", "dw", "db"), strict=True):
            assert_close_sum(a, b, terms=terms, abs_sum=sums[key])
    torch.testing.assert_close(ours.moving_mean.view(-1), ref.running_mean)
    torch.testing.assert_close(ours.moving_var.view(-1), ref.running_var)


def test_moving_statistics_are_buffers() -> None:
    bn = T.BatchNorm(3, num_dims=4)
    bn(torch.randn(4, 3, 2, 2) + 5)
    state = bn.state_dict()
    assert sorted(state) == ["beta", "gamma", "moving_mean", "moving_var"]
    fresh = T.BatchNorm(3, num_dims=4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.moving_mean, bn.moving_mean)
    assert not torch.equal(fresh.moving_mean, torch.zeros(1, 3, 1, 1))
    moved = fresh.to(torch.float64).to("meta")  # .to() moves buffers with the parameters
    assert moved.moving_mean.dtype == torch.float64 and moved.moving_var.device.type == "meta"
    assert "moving_mean" not in original.BatchNorm(3, 4).state_dict()  # the original lost them


def test_module_train_eval_from_self_training_not_grad_mode() -> None:
    bn = T.BatchNorm(3, num_dims=2)
    X = torch.randn(32, 3) * 3 + 4
    with torch.no_grad():
        Y = bn(X)  # training mode: batch statistics, even without grad
    _assert_mean_zero(Y, X)
    moved = bn.moving_mean.clone()
    bn.eval()
    Y = bn(X.requires_grad_())  # eval mode: moving statistics, even with grad
    expected = (X - bn.moving_mean) / torch.sqrt(bn.moving_var + 1e-5)
    torch.testing.assert_close(Y, expected)
    assert torch.equal(bn.moving_mean, moved)


def test_module_errors() -> None:
    with pytest.raises(ValueError, match=r"num_dims=2 after nn\.Linear"):
        T.BatchNorm(3, num_dims=3)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        T.BatchNorm(3, num_dims=4)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="positive integer"):
        T.BatchNorm(0, num_dims=2)


# ---------------------------------------------------------------------------------------------
# Memory: flat for the corrected layer, growing graph for the original
# ---------------------------------------------------------------------------------------------


def _train(bn: nn.Module, steps: int) -> list[int]:
    """Train a scale -> norm pipeline; return the graph size held by the layer's statistics."""
    torch.manual_seed(0)
    scale = nn.Parameter(torch.ones(1, 6, 1, 1))
    opt = torch.optim.SGD([scale, *bn.parameters()], lr=0.01)
    x = torch.randn(32, 6, 12, 12)
    sizes = []
    for _ in range(steps):
        loss = bn(x * scale).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sizes.append(graph_nodes([bn.moving_mean, bn.moving_var]))
    return sizes


def test_memory_stays_flat_and_the_original_grows() -> None:
    rss = []
    bn = T.BatchNorm(6, num_dims=4)
    for _ in range(3):
        assert _train(bn, 100) == [0] * 100
        try:
            with open("/proc/self/statm") as f:
                rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except OSError:
            pass
    if len(rss) == 3:  # Linux: resident memory flat over the last 200 steps
        assert rss[2] - rss[0] < 4e6
    course = _train(original.BatchNorm(6, 4), 50)  # negative control: one more graph per step
    assert course[-1] >= course[0] + 49 and all(b > a for a, b in itertools.pairwise(course))


# ---------------------------------------------------------------------------------------------
# The LeNets and print_bn_parameters
# ---------------------------------------------------------------------------------------------


def test_lenets_use_the_tutorial_layers() -> None:
    scratch, reference = T.BNLeNetScratch(), T.BNLeNet(num_classes=7)
    dims = [m.num_dims for _, m in scratch.norm_layers()]
    assert dims == [4, 4, 2, 2]
    assert all(isinstance(m, T.BatchNorm) for _, m in scratch.norm_layers())
    kinds = [type(m) for _, m in reference.norm_layers()]
    assert kinds == [nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.BatchNorm1d]
    assert reference(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert "layers.1.moving_mean" in scratch.state_dict()


def test_scratch_lenet_equals_torch_lenet() -> None:
    """Same weights in float64: the scratch and the torch.nn LeNet train and infer alike."""
    torch.manual_seed(2)
    scratch, reference = T.BNLeNetScratch().double(), T.BNLeNet().double()
    state = {
        k: v.view(-1) if ".gamma" in k or ".beta" in k else v
        for k, v in scratch.state_dict().items()
    }
    renamed = {
        k.replace("gamma", "weight").replace("beta", "bias"): v
        for k, v in state.items()
        if "moving" not in k
    }
    reference.load_state_dict(renamed, strict=False)
    X = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    for train in (True, True, False):
        scratch.train(train)
        reference.train(train)
        # not one sum's bound: float64 rounding carried through LeNet's convolutions, pools
        # and norms (~1e6 u); a wrong normalization misses by O(1)
        torch.testing.assert_close(scratch(X), reference(X), rtol=1e-10, atol=1e-10)


def test_print_bn_parameters_table() -> None:
    model = T.BNLeNetScratch()
    with torch.no_grad():
        model.layers[5].gamma.copy_(torch.linspace(0.5, 2.0, 16).view(1, 16, 1, 1))
    out = io.StringIO()
    T.print_bn_parameters(model, file=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + 4  # two header lines, one line per norm layer
    row = next(line for line in lines if line.startswith("layers.5 "))
    fields = row.split()
    assert fields[1:3] == ["BatchNorm", "16"]
    # not a rounding tolerance: the table prints the mean of linspace(0.5, 2, 16) to 4 decimals
    assert float(fields[3]) == pytest.approx(1.25, abs=1e-4)
    assert float(fields[5]) == pytest.approx(0.5) and float(fields[6]) == pytest.approx(2.0)


def test_print_bn_parameters_works_for_any_norm_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 5), ours_nn.BatchNorm1d(5), nn.LayerNorm(5), nn.ReLU())
    out = io.StringIO()
    T.print_bn_parameters(model, file=out)
    names = [line.split()[0] for line in out.getvalue().splitlines()[2:]]
    assert names == ["1", "2"]  # the linear layer's 2D weight is not a norm's gamma
    out = io.StringIO()
    T.print_bn_parameters(nn.Linear(2, 2), file=out)
    assert "no normalization layers" in out.getvalue()


def test_train_and_evaluate_prints_the_epoch_mean_loss_and_returns_accuracy() -> None:
    import copy

    from normlab.data import batches, synthetic_dataset

    data = synthetic_dataset(num_train=96, num_test=40, seed=1)
    train = list(batches(data.train_images, data.train_labels, 32, shuffle=True, seed=3))
    test = list(batches(data.test_images, data.test_labels, 16, shuffle=False))
    torch.manual_seed(0)
    model = T.BNLeNetScratch()
    twin = copy.deepcopy(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    out = io.StringIO()
    accuracy = T.train_and_evaluate(model, train, test, criterion, optimizer, 1, file=out)

    # the same step by step, by hand: the printed loss is the mean over examples
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.03, momentum=0.9)
    twin.train()
    losses = []
    for x, y in train:
        twin_optimizer.zero_grad()
        loss = criterion(twin(x), y)
        loss.backward()
        twin_optimizer.step()
        losses.append(loss.item())
    assert f"Loss: {sum(losses) / len(losses):.4f}" in out.getvalue()
    twin.eval()
    with torch.no_grad():
        correct = sum(int((twin(x).argmax(1) == y).sum()) for x, y in test)
    assert accuracy == pytest.approx(100 * correct / 40)
    assert f"Accuracy: {accuracy:.2f}%" in out.getvalue()
    assert not model.training
    with pytest.raises(ValueError, match="num_epochs"):
        T.train_and_evaluate(model, train, test, criterion, optimizer, 0)
