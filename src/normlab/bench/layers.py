"""``normlab bench layers``: forward+backward time and saved memory, normlab vs torch.nn.

For every layer and input shape, normlab's layer and its ``torch.nn`` twin (same
constructor arguments) run forward+backward on the same input and output gradient::

    step() = autograd.grad(layer(x), [x, *layer.parameters()], dy)

timed interleaved in one process (:mod:`normlab.bench.timing`). With ``compiled=True``
both layers are also wrapped in ``torch.compile`` and all four candidates (ours/torch x
eager/compiled) are measured in the same rounds. The ratios reported are times,
normlab over torch: below 1 means normlab is faster.

- ``eager``: ours eager / torch eager.
- ``compiled``: ours compiled / torch compiled.
- ``compiled/eager``: ours compiled / torch eager (what compiling buys a user of ours).

Plus the bytes each saves for backward (:mod:`normlab.bench.memory`).

Targets (issue 5): batch norm eager <= 1.25, compiled <= 1.0; the other layers eager
<= 1.5; saved bytes no larger than torch's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from normlab.bench.memory import saved_bytes
from normlab.bench.timing import Ratio, Summary, compare, measure
from normlab.errors import UsageError
from normlab.nn.registry import default_num_groups

Shape = tuple[int, ...]

SHAPE_SETS: dict[str, tuple[Shape, ...]] = {
    # the tutorial's LeNet on 64 Fashion-MNIST images: two conv features, two fc features
    "lenet": ((64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84)),
    # ResNet-like conv features: a CIFAR stage at batch 128, an ImageNet stage at batch 32
    "resnet": ((128, 64, 32, 32), (32, 256, 14, 14)),
}
SHAPE_SETS["all"] = SHAPE_SETS["lenet"] + SHAPE_SETS["resnet"]

EAGER_TARGET = {"batch": 1.25}  # every other layer: DEFAULT_EAGER_TARGET
DEFAULT_EAGER_TARGET = 1.5
COMPILED_TARGET = {"batch": 1.0}  # the issue sets no compiled target for the others

Builder = Callable[[ModuleType, Shape], nn.Module | None]


def _batch(lib: ModuleType, shape: Shape) -> nn.Module | None:
    return getattr(lib, f"BatchNorm{max(len(shape) - 2, 1)}d")(shape[1])


def _instance(lib: ModuleType, shape: Shape) -> nn.Module | None:
    if len(shape) < 3:
        return None  # one value per channel and sample: no instance statistics
    return getattr(lib, f"InstanceNorm{len(shape) - 2}d")(shape[1], affine=True)


def _layer(lib: ModuleType, shape: Shape) -> nn.Module | None:
    return lib.LayerNorm(list(shape[1:]))


def _group(lib: ModuleType, shape: Shape) -> nn.Module | None:
    return lib.GroupNorm(default_num_groups(shape[1]), shape[1])


def _rms(lib: ModuleType, shape: Shape) -> nn.Module | None:
    return lib.RMSNorm(list(shape[1:]))


def _lrn(lib: ModuleType, shape: Shape) -> nn.Module | None:
    if len(shape) < 3:
        return None  # torch's LocalResponseNorm needs (N, C, *) with at least one spatial dim
    return lib.LocalResponseNorm(5)  # AlexNet's size; torch's defaults for alpha, beta, k


LAYERS: dict[str, Builder] = {
    "batch": _batch,  # BatchNorm1d for (N, C), BatchNorm2d for (N, C, H, W)
    "instance": _instance,  # InstanceNorm2d(C, affine=True)
    "layer": _layer,  # LayerNorm(shape[1:]): over each sample's features
    "group": _group,  # GroupNorm(G, C), the registry's default G
    "rms": _rms,  # RMSNorm(shape[1:])
    "lrn": _lrn,  # LocalResponseNorm(5)
}


@dataclass(frozen=True)
class LayerResult:
    """One layer on one shape: timings (seconds per fwd+bwd), ratios, saved bytes."""

    layer: str
    module: str
    shape: Shape
    ours_eager: Summary
    torch_eager: Summary
    eager: Ratio
    saved_ours: int
    saved_torch: int
    ours_compiled: Summary | None = None
    torch_compiled: Summary | None = None
    compiled: Ratio | None = None
    compiled_vs_eager: Ratio | None = None

    @property
    def eager_target(self) -> float:
        return EAGER_TARGET.get(self.layer, DEFAULT_EAGER_TARGET)

    @property
    def compiled_target(self) -> float | None:
        return COMPILED_TARGET.get(self.layer)

    def targets_met(self) -> dict[str, bool]:
        """Each target that applies to this result -> whether it is met."""
        met = {
            "eager": self.eager.of_medians <= self.eager_target,
            "memory": self.saved_ours <= self.saved_torch,
        }
        if self.compiled is not None and self.compiled_target is not None:
            met["compiled"] = self.compiled.of_medians <= self.compiled_target
        return met


def select_layers(names: Sequence[str] | None) -> list[str]:
    """Validate ``--layers`` names (all when empty or None)."""
    if not names:
        return list(LAYERS)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise UsageError(f"unknown layer {unknown[0]!r}; valid: {', '.join(LAYERS)}")
    return list(dict.fromkeys(names))


def select_shapes(name: str) -> tuple[Shape, ...]:
    """The shape grid called ``name`` (``lenet``, ``resnet`` or ``all``)."""
    if name not in SHAPE_SETS:
        raise UsageError(f"unknown shape set {name!r}; valid: {', '.join(SHAPE_SETS)}")
    return SHAPE_SETS[name]


def cases(layers: Iterable[str], shapes: Iterable[Shape]) -> list[tuple[str, Shape]]:
    """Every (layer, shape) pair where the layer applies to the shape."""
    return [
        (layer, shape)
        for layer in layers
        for shape in shapes
        if LAYERS[layer](nn, shape) is not None
    ]


def fwd_bwd_step(
    module: Callable[..., torch.Tensor],
    params: list[nn.Parameter],
    x: torch.Tensor,
    dy: torch.Tensor,
) -> Callable[[], object]:
    """The unit ``bench layers`` times: ``step() = autograd.grad(module(x), [x, *params], dy)``
    (``params`` given apart, so that a compiled module shares its original's)."""
    inputs = [x, *params]

    def step() -> object:
        return torch.autograd.grad(module(x), inputs, dy)

    return step


def _twins(layer: str, shape: Shape, ours_lib: ModuleType) -> tuple[nn.Module, nn.Module]:
    ours, theirs = LAYERS[layer](ours_lib, shape), LAYERS[layer](nn, shape)
    if ours is None or theirs is None:
        raise UsageError(f"layer {layer!r} does not apply to shape {shape}")
    with torch.no_grad():  # same (non-trivial) affine parameters in both
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            p.uniform_(0.5, 1.5)
            q.copy_(p)
    return ours.train(), theirs.train()


def bench_case(
    layer: str,
    shape: Shape,
    ours_lib: ModuleType,
    compiled: bool = False,
    device: torch.device | str = "cpu",
    **timing: Any,
) -> LayerResult:
    """Measure one layer on one shape; ``timing`` goes to :func:`timing.measure`.

    The input is ``x ~ N(0.5, 2^2)`` (float32, requires grad) and the output gradient
    ``dy ~ N(0, 1)``, the same for both layers; their affine parameters are equal and
    drawn from U(0.5, 1.5). Both layers are in training mode.
    """
    device = torch.device(device)
    ours, theirs = (m.to(device) for m in _twins(layer, shape, ours_lib))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).mul_(2.0).add_(0.5)
    x = x.to(device).requires_grad_()
    dy = torch.randn(shape, generator=generator).to(device)
    if device.type == "cuda":
        timing.setdefault("sync", torch.cuda.synchronize)
    ours_params, torch_params = list(ours.parameters()), list(theirs.parameters())
    candidates = {
        "ours": fwd_bwd_step(ours, ours_params, x, dy),
        "torch": fwd_bwd_step(theirs, torch_params, x, dy),
    }
    if compiled:
        torch._dynamo.reset()  # a fresh cache: no recompile limit reached across cases
        candidates["ours-compiled"] = fwd_bwd_step(torch.compile(ours), ours_params, x, dy)
        candidates["torch-compiled"] = fwd_bwd_step(torch.compile(theirs), torch_params, x, dy)
    result = measure(candidates, **timing)
    saved_ours = saved_bytes(lambda: ours(x))
    saved_torch = saved_bytes(lambda: theirs(x))
    extra: dict[str, Any] = {}
    if compiled:
        extra = {
            "ours_compiled": result["ours-compiled"].summary,
            "torch_compiled": result["torch-compiled"].summary,
            "compiled": compare(result, "ours-compiled", "torch-compiled"),
            "compiled_vs_eager": compare(result, "ours-compiled", "torch"),
        }
    return LayerResult(
        layer=layer,
        module=type(theirs).__name__,
        shape=tuple(shape),
        ours_eager=result["ours"].summary,
        torch_eager=result["torch"].summary,
        eager=compare(result, "ours", "torch"),
        saved_ours=saved_ours,
        saved_torch=saved_torch,
        **extra,
    )


def geometric_mean(values: Iterable[float]) -> float:
    """exp(mean(log v)): the average of ratios that treats 2x and 0.5x symmetrically."""
    return statistics.geometric_mean(list(values))


def bench_layers(
    layers: Sequence[str],
    shapes: Sequence[Shape],
    ours_lib: ModuleType | None = None,
    compiled: bool = False,
    progress: bool = False,
    device: torch.device | str = "cpu",
    **timing: Any,
) -> list[LayerResult]:
    """Measure every applicable (layer, shape) pair; see :func:`bench_case`.

    Args:
        layers: names from :data:`LAYERS`.
        shapes: input shapes ``(N, C, *)``.
        ours_lib: the module holding our layers (default :mod:`normlab.nn`).
        compiled: also measure both layers under ``torch.compile``.
        progress: a tqdm bar on stderr.
        device: where the layers and tensors live.
        timing: passed to :func:`normlab.bench.timing.measure` (repeats, warmup, ...).
    """
    if ours_lib is None:
        import normlab.nn as ours_lib
    todo = cases(select_layers(layers), shapes)
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="bench layers", unit="case", leave=False)
    return [
        bench_case(layer, shape, ours_lib, compiled=compiled, device=device, **timing)
        for layer, shape in todo
    ]
