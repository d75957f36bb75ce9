"""The re-created course pipeline keeps the course's architecture, data path and defects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.bench import original

# LeNet-5 as the course builds it: conv 1->6 5x5, BN(6), conv 6->16 5x5, BN(16),
# fc 256->120, BN(120), fc 120->84, BN(84), fc 84->10; a BN has gamma and beta per channel.
COURSE_PARAMETERS = (
    (1 * 6 * 25 + 6) + 2 * 6
    + (6 * 16 * 25 + 16) + 2 * 16
    + (256 * 120 + 120) + 2 * 120
    + (120 * 84 + 84) + 2 * 84
    + (84 * 10 + 10)
)  # fmt: skip


def test_the_scratch_lenet_has_the_courses_layers_and_parameter_count() -> None:
    model = original.BNLeNetScratch()
    assert sum(p.numel() for p in model.parameters()) == COURSE_PARAMETERS == 44878
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == [
        "Conv2d", "BatchNorm", "Sigmoid", "AvgPool2d",
        "Conv2d", "BatchNorm", "Sigmoid", "AvgPool2d",
        "Flatten",
        "Linear", "BatchNorm", "Sigmoid",
        "Linear", "BatchNorm", "Sigmoid",
        "Linear",
    ]  # fmt: skip
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_scratch_lenet_matches_torch_nn_bn_lenet_in_parameters() -> None:
    torch_lenet = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Linear(120, 84), nn.BatchNorm1d(84),
        nn.Linear(84, 10),
    )  # fmt: skip
    ours = [tuple(p.numel() for p in m.parameters()) for m in original.BNLeNetScratch().layers]
    theirs = [tuple(p.numel() for p in m.parameters()) for m in torch_lenet]
    assert [s for s in ours if s] == list(theirs)


def test_the_courses_batch_norm_defects_are_kept() -> None:
    torch.manual_seed(0)
    bn = original.BatchNorm(3, num_dims=4)
    x = (torch.randn(8, 3, 5, 5) * 2 + 1).requires_grad_()  # as if from a conv
    y = bn(x)  # grad enabled: batch statistics
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    expected = (x - mean.view(1, 3, 1, 1)) / (var.view(1, 3, 1, 1) + 1e-5).sqrt()
    torch.testing.assert_close(y, expected)
    # biased moving variance, and the moving averages hold on to the autograd graph
    torch.testing.assert_close(bn.moving_var.flatten(), 0.9 + 0.1 * var)
    assert bn.moving_mean.grad_fn is not None
    assert "moving_mean" not in bn.state_dict()
    with torch.no_grad():  # grad mode, not model.train()/eval(), picks the moving averages
        y_eval = bn.train()(x)
    moving_mean, moving_var = bn.moving_mean.detach(), bn.moving_var.detach()
    torch.testing.assert_close(y_eval, (x - moving_mean) / (moving_var + 1e-5).sqrt())


def test_the_courses_input_checks_are_an_assert_and_a_silent_batch_of_one() -> None:
    bn = original.BatchNorm(3, num_dims=4)
    with pytest.raises(AssertionError):
        bn(torch.randn(4, 3, 5))
    with torch.no_grad():
        bn.beta.fill_(0.25)
    y = bn(torch.randn(1, 3, 1, 1).requires_grad_())  # one value per channel: var = 0
    torch.testing.assert_close(y, torch.full((1, 3, 1, 1), 0.25), rtol=0, atol=0)


def test_the_dataset_does_totensor_and_normalize_per_sample() -> None:
    images = torch.arange(3 * 28 * 28).remainder(256).to(torch.uint8).view(3, 28, 28)
    labels = torch.tensor([4, 0, 9])
    data = original.TutorialFashionMNIST(images, labels)
    x, y = data[2]
    assert len(data) == 3 and y == 9 and isinstance(y, int)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], (images[2].double() / 255 - 0.5).div(0.5).float())


def test_the_loader_yields_shuffled_batches_of_64() -> None:
    images = torch.arange(100).to(torch.uint8).view(100, 1, 1).expand(100, 28, 28).contiguous()
    labels = torch.arange(100)
    torch.manual_seed(0)
    batches = list(original.tutorial_loader(images, labels))
    assert [len(y) for _, y in batches] == [64, 36]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(100)) and seen.tolist() != list(range(100))
    x, y = batches[0]
    torch.testing.assert_close(x[:, 0, 0, 0], (y.float() / 255 - 0.5) / 0.5)


def test_train_steps_runs_the_course_loop_across_epochs() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (100,))
    model, criterion, optimizer = original.tutorial_setup(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    batches = original.endless(original.tutorial_loader(images, labels))
    loss = original.train_steps(model, batches, criterion, optimizer, 5)  # 2.5 epochs
    assert loss.shape == () and torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert optimizer.param_groups[0]["lr"] == 0.03 and optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="uint8"):
        original.TutorialFashionMNIST(images.float(), labels)
