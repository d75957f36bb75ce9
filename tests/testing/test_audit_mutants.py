"""Each check of the audit fails on a layer built with exactly its defect.

:class:`PlainBatchNorm2d` is batch norm in plain tensor operations, correct: the whole
audit passes on it (and on ``torch.nn.BatchNorm2d``). Each mutant below overrides one
method to bring in one defect, and the check that catches that defect must fail.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from normlab.testing import audit
from normlab.testing.auditing import CHECKS

DIMS = (0, 2, 3)


def _channel(values: Tensor) -> Tensor:
    return values.view(1, -1, 1, 1)


class PlainBatchNorm2d(nn.Module):
    """``BatchNorm2d(num_features, eps, momentum)`` in plain tensor operations."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got {x.shape[1]}")
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError("Expected more than 1 value per channel when training")

    def uses_batch_statistics(self) -> bool:
        return self.training

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x.mean(DIMS)
        return mean, (x - _channel(mean)).square().mean(DIMS)

    def momentum_now(self) -> float:
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def running_variance_of(self, var: Tensor, count: int) -> Tensor:
        return var * count / (count - 1)

    def update(self, mean: Tensor, var: Tensor, count: int) -> None:
        with torch.no_grad():
            self.num_batches_tracked += 1
            factor = self.momentum_now()
            self.running_mean.mul_(1 - factor).add_(factor * mean)
            self.running_var.mul_(1 - factor).add_(factor * self.running_variance_of(var, count))

    def evaluation_input(self, x: Tensor) -> Tensor:
        return x

    def evaluation_statistics(self) -> tuple[Tensor, Tensor]:
        return self.running_mean, self.running_var

    def scale(self, var: Tensor) -> Tensor:
        return torch.sqrt(var + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.uses_batch_statistics():
            mean, var = self.batch_statistics(x)
            self.update(mean, var, x.numel() // x.shape[1])
        else:
            x = self.evaluation_input(x)
            mean, var = self.evaluation_statistics()
        x_hat = (x - _channel(mean)) / _channel(self.scale(var))
        return x_hat * _channel(self.weight) + _channel(self.bias)


class EpsOutsideTheRoot(PlainBatchNorm2d):
    def scale(self, var: Tensor) -> Tensor:
        return torch.sqrt(var) + self.eps


class DetachedBatchStatistics(PlainBatchNorm2d):
    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = super().batch_statistics(x)
        return mean.detach(), var.detach()


class RunningStdAsVariance(PlainBatchNorm2d):
    def evaluation_statistics(self) -> tuple[Tensor, Tensor]:
        return self.running_mean, self.running_var.sqrt()


class EvaluationCutsTheGraph(PlainBatchNorm2d):
    def evaluation_input(self, x: Tensor) -> Tensor:
        return x.detach()


class MomentumWeighsTheOldValue(PlainBatchNorm2d):
    def momentum_now(self) -> float:
        return 1 - super().momentum_now()


class BiasedRunningVariance(PlainBatchNorm2d):
    def running_variance_of(self, var: Tensor, count: int) -> Tensor:
        return var


class FixedMomentum(PlainBatchNorm2d):
    def momentum_now(self) -> float:
        return 0.1


class MomentumNoneAsDefault(PlainBatchNorm2d):
    def momentum_now(self) -> float:
        return 0.1 if self.momentum is None else self.momentum


class GradModeDecidesTraining(PlainBatchNorm2d):
    def uses_batch_statistics(self) -> bool:
        return self.training and torch.is_grad_enabled()


class GradModeDecidesEvaluation(PlainBatchNorm2d):
    def uses_batch_statistics(self) -> bool:
        return self.training or torch.is_grad_enabled()


class RefusesOneSample(PlainBatchNorm2d):
    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[0] < 2:
            raise ValueError("need at least two samples")


class StatisticsNotSaved(PlainBatchNorm2d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        for name in ("running_mean", "running_var"):
            self.register_buffer(name, getattr(self, name), persistent=False)


class EpsAsPlainTensor(PlainBatchNorm2d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        self.eps_tensor = torch.tensor(eps)  # not a buffer: .to() leaves it float32

    def scale(self, var: Tensor) -> Tensor:
        return torch.sqrt(var + self.eps_tensor)


class AveragesKeepTheGraph(PlainBatchNorm2d):
    def update(self, mean: Tensor, var: Tensor, count: int) -> None:
        factor = self.momentum_now()
        self.running_mean = (1 - factor) * self.running_mean + factor * mean
        self.running_var = (1 - factor) * self.running_var + factor * var * count / (count - 1)


class OnePassVarianceInFloat32(PlainBatchNorm2d):
    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        wide = x.float()
        mean = wide.mean(DIMS)
        return mean.to(x.dtype), (wide.square().mean(DIMS) - mean.square()).to(x.dtype)


class OnePassVarianceInInputDtype(PlainBatchNorm2d):
    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x.mean(DIMS)
        return mean, x.square().mean(DIMS) - mean.square()


class NoEps(PlainBatchNorm2d):
    def scale(self, var: Tensor) -> Tensor:
        return torch.sqrt(var)


class AssertsTheShape(PlainBatchNorm2d):
    def check_input(self, x: Tensor) -> None:
        assert x.dim() == 4, "expected 4D input"


class DiffersWhenCompiled(PlainBatchNorm2d):
    def scale(self, var: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return 2 * super().scale(var)
        return super().scale(var)


class ItemInForward(PlainBatchNorm2d):
    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.abs().max().item() == float("inf"):
            raise ValueError("infinite input")


MUTANTS: dict[str, type[nn.Module]] = {
    "forward, training mode": EpsOutsideTheRoot,
    "gradients, training mode": DetachedBatchStatistics,
    "forward, evaluation mode": RunningStdAsVariance,
    "gradients, evaluation mode": EvaluationCutsTheGraph,
    "running mean (momentum 0.1)": MomentumWeighsTheOldValue,
    "running variance is unbiased": BiasedRunningVariance,
    "momentum=0.3": FixedMomentum,
    "momentum=None (cumulative average)": MomentumNoneAsDefault,
    "training mode under torch.no_grad()": GradModeDecidesTraining,
    "evaluation mode with gradients enabled": GradModeDecidesEvaluation,
    "one sample in evaluation": RefusesOneSample,
    "state_dict with the twin, both ways": StatisticsNotSaved,
    "follows .to(dtype)": EpsAsPlainTensor,
    "memory flat over 300 steps": AveragesKeepTheGraph,
    "float32 far from zero (mean 1e4, std 1e-2)": OnePassVarianceInFloat32,
    "bfloat16 (mean 16, std 1)": OnePassVarianceInInputDtype,
    "constant channel stays finite": NoEps,
    "bad input raises an exception": AssertsTheShape,
    "torch.compile": DiffersWhenCompiled,
    "torch.func.vmap": ItemInForward,
}


def test_every_check_has_a_mutant() -> None:
    assert sorted(MUTANTS) == sorted(check.name for check in CHECKS)


@pytest.mark.parametrize("factory", [PlainBatchNorm2d, nn.BatchNorm2d], ids=["plain", "torch"])
def test_the_correct_layers_pass_every_check(factory: type[nn.Module]) -> None:
    result = audit(factory, "batch2d")
    result.assert_passes()
    assert result.count(result.checks[0].status) == len(CHECKS)  # all passed, none skipped


@pytest.mark.parametrize("name", list(MUTANTS))
def test_each_mutant_fails_its_check(name: str) -> None:
    mutant = MUTANTS[name]
    result = audit(mutant, "batch2d", checks=[name])
    (row,) = result.checks
    assert row.failed and row.required, f"{mutant.__name__}: {row.status.value} {row.measured}"
    assert row.pitfall
    assert not result.passed
    torch_row = audit(nn.BatchNorm2d, "batch2d", checks=[name]).checks[0]
    assert not torch_row.failed
