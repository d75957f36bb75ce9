"""Every normlab layer equals its torch.nn twin over the parity grid; the checker catches bugs.

The table-driven test runs :func:`normlab.testing.parity.check` for every configuration of the grid
in float32 and float64: three training steps (outputs, input and parameter gradients,
buffers), an eval step and the state_dict round trip. The other tests break a layer on
purpose and show that the checker fails it, so a passing grid means something.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.errors import UsageError
from normlab.testing import parity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("config", parity.GRID, ids=lambda c: c.name)
def test_layer_matches_torch(config: parity.Config, dtype: torch.dtype, code_path: str) -> None:
    result = parity.check(config, dtype)
    assert result.passed, (result.error, result.details)
    assert result.state_dict_ok
    assert max(result.forward_diff, result.grad_diff, result.buffer_diff) <= result.tolerance


def test_grid_covers_every_layer_class() -> None:
    classes = {
        name
        for name in normlab.nn.__all__
        if isinstance(getattr(normlab.nn, name), type)
        and issubclass(getattr(normlab.nn, name), torch.nn.Module)
    }
    assert classes == set(parity.LAYERS)
    assert {config.layer for config in parity.GRID} == set(parity.LAYERS)
    for layer in parity.LAYERS:  # each layer with several configurations
        assert len(parity.configurations([layer])) >= 3, layer


def test_grid_exercises_every_constructor_option() -> None:
    """Every keyword of every constructor (torch's where it has the layer, else ours; but
    device/dtype) appears off its default."""
    import inspect

    for layer in parity.LAYERS:
        library = torch.nn if hasattr(torch.nn, layer) else normlab.nn  # no twin: our options
        signature = inspect.signature(getattr(library, layer).__init__)
        options = {
            name
            for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
            and name not in ("device", "dtype", "process_group")
        }
        used = {key for config in parity.configurations([layer]) for key, _ in config.kwargs}
        assert options <= used, (layer, options - used)


def test_unknown_layer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"unknown layer 'Bogus'; valid layers: BatchNorm1d"):
        parity.configurations(["LayerNorm", "Bogus"])


def test_run_grid_and_summary() -> None:
    results = parity.run_grid(["LayerNorm", "RMSNorm"], dtypes=(torch.float64,))
    assert len(results) == len(parity.configurations(["LayerNorm", "RMSNorm"]))
    assert all(r.passed for r in results)
    rows = parity.summarize(results)
    assert [(r.layer, r.dtype) for r in rows] == [
        ("LayerNorm", torch.float64),
        ("RMSNorm", torch.float64),
    ]
    assert rows[0].configurations == len(parity.configurations(["LayerNorm"]))
    assert rows[0].failed == 0
    assert rows[0].forward_diff == max(
        r.forward_diff for r in results if r.config.layer == "LayerNorm"
    )
    assert torch.get_num_threads() == 1  # restored to the fixture's setting


def test_difference() -> None:
    ref = torch.tensor([0.5, -2.0, 4.0], dtype=torch.float64)
    assert parity.difference(ref + 1e-3, ref) == pytest.approx(1e-3 / 4.0)
    small = torch.tensor([1e-3, 0.0])
    assert parity.difference(small + 1e-4, small) == pytest.approx(1e-4, rel=1e-3)
    assert parity.difference(None, None) == 0.0
    assert parity.difference(ref, None) == math.inf
    assert parity.difference(ref.float(), ref) == math.inf  # dtype differs
    assert parity.difference(ref[:2], ref) == math.inf  # shape differs
    nan = torch.tensor([float("nan"), 1.0])
    assert parity.difference(nan, nan) == 0.0
    assert parity.difference(torch.tensor([0.0, 1.0]), nan) == math.inf


# ---------------------------------------------------------------------------------------------
# The checker catches broken layers (negative controls)
# ---------------------------------------------------------------------------------------------


def _first(layer: str, **kwargs: object) -> parity.Config:
    return next(
        c
        for c in parity.configurations([layer])
        if all(dict(c.kwargs).get(k) == v for k, v in kwargs.items())
    )


def test_catches_a_small_forward_error(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = normlab.nn.LayerNorm.forward
    monkeypatch.setattr(normlab.nn.LayerNorm, "forward", lambda self, x: forward(self, x) + 1e-4)
    result = parity.check(_first("LayerNorm"), torch.float32)
    assert not result.passed
    assert 1e-5 < result.forward_diff <= 1e-4  # 1e-4 relative to outputs of size ~1 to 4
    assert any("output" in d for d in result.details)


def test_catches_a_wrong_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
            return g * 1.01

    forward = normlab.nn.GroupNorm.forward
    monkeypatch.setattr(
        normlab.nn.GroupNorm, "forward", lambda self, x: Scale.apply(forward(self, x))
    )
    result = parity.check(_first("GroupNorm"), torch.float64)
    assert not result.passed
    assert result.grad_diff > 1e-3
    assert "training step 1 input grad" in result.details[0]
    # the first forward agrees; later ones differ once SGD used the wrong gradients
    assert not any("training step 1 output" in d for d in result.details)


def test_catches_a_biased_running_variance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Storing the biased batch variance (the tutorial's bug) shows up in the buffers."""
    forward = normlab.nn.BatchNorm1d.forward

    def biased(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        if self.training:  # turn the unbiased update into the biased one
            with torch.no_grad():
                dims = [0, *range(2, x.dim())]
                n = x.numel() // x.shape[1]
                unbiased = x.var(dims, correction=1)
                self.running_var.sub_(self.momentum * unbiased / n)
        return out

    monkeypatch.setattr(normlab.nn.BatchNorm1d, "forward", biased)
    result = parity.check(_first("BatchNorm1d"), torch.float64)
    assert not result.passed
    assert result.buffer_diff > 1e-4
    assert any("running_var" in d for d in result.details)


def test_catches_a_renamed_state_dict_key(monkeypatch: pytest.MonkeyPatch) -> None:
    original = normlab.nn.RMSNorm.__init__

    def renamed(self: torch.nn.Module, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        if self.weight is not None:
            self.gamma = self.weight
            del self.weight

    monkeypatch.setattr(normlab.nn.RMSNorm, "__init__", renamed)
    result = parity.check(_first("RMSNorm"), torch.float64)
    assert not result.passed
    assert "state_dict keys differ" in (result.error or "")


def test_a_layer_that_raises_is_a_failure_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaputt\nsecond line")

    monkeypatch.setattr(normlab.nn.LocalResponseNorm, "forward", broken)
    result = parity.check(_first("LocalResponseNorm"), torch.float64)
    assert not result.passed
    assert result.error == "RuntimeError: kaputt"
    assert result.forward_diff == math.inf


def test_configs_the_installed_torch_cannot_build_are_skipped_not_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch before 2.12 has no ``bias=`` on its norm layers: those configurations are
    reported as skipped, and the others still compared."""

    class OldBatchNorm2d(nn.BatchNorm2d):
        def __init__(self, *args: object, **kwargs: object) -> None:
            if "bias" in kwargs:
                raise TypeError("__init__() got an unexpected keyword argument 'bias'")
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nn, "BatchNorm2d", OldBatchNorm2d)
    results = parity.run_grid(["BatchNorm2d"], (torch.float64,))
    skipped = [r for r in results if r.skipped is not None]
    assert skipped and len(skipped) < len(results)
    assert all("bias" in dict(r.config.kwargs) for r in skipped)
    assert all("takes no argument 'bias'" in r.skipped for r in skipped)  # type: ignore[operator]
    assert all(r.passed for r in results)
    (row,) = parity.summarize(results)
    assert row.skipped == len(skipped) and row.failed == 0 and row.forward_diff < 1e-10

    from normlab.cli.main import main

    argv = ["check", "--layers", "BatchNorm2d", "--dtype", "float64", "--code", "tensors"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"pass, {len(skipped)} skipped" in out and f"{len(skipped)} skipped: torch " in out


def test_layers_torch_lacks_name_their_oracle() -> None:
    """A layer without a torch.nn twin is compared with what it reduces to or its formula,
    and the row says which."""
    names: dict[str, set[str]] = {}
    for c in parity.GRID:
        if not hasattr(torch.nn, c.layer):
            names.setdefault(c.layer, set()).add(c.oracle_name)
    assert names["FrozenBatchNorm2d"] == {"torch.nn.functional.batch_norm, eval"}
    formula = "the paper's formula (normlab.testing.references)"
    assert names["BatchRenorm2d"] == {"torch.nn.BatchNorm2d", formula}
    assert names["GhostBatchNorm1d"] == {"torch.nn.BatchNorm1d", formula}
    assert names["StdConv2d"] == {"torch.nn.functional.batch_norm of the weight, conv2d"}
    for layer in ("FilterResponseNorm2d", "EvoNorm2dB0", "EvoNorm2dS0", "DynamicTanh"):
        assert names[layer] == {formula}
    for config in parity.GRID:
        assert config.oracle in parity.ORACLES
        if hasattr(torch.nn, config.layer):
            assert config.oracle_name == f"torch.nn.{config.layer}"


@pytest.mark.parametrize(
    "layer",
    [
        "FrozenBatchNorm2d",
        "BatchRenorm2d",
        "GhostBatchNorm1d",
        "StdConv2d",
        "FilterResponseNorm2d",
        "EvoNorm2dB0",
        "EvoNorm2dS0",
        "DynamicTanh",
    ],
)
def test_checker_fails_a_broken_layer_without_a_torch_twin(
    layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = getattr(normlab.nn, layer)
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: forward(self, x) * (1 + 1e-6))
    result = parity.check(parity.configurations([layer])[0], torch.float64)
    assert not result.passed
    assert "training step 1 output" in result.details[0]
