"""``normlab bench layers``: forward+backward time and saved memory, normlab vs its twin.

Every layer of normlab's registry (:mod:`normlab.nn.registry`, each name but ``none``
and the ``torch-`` copies) plus the layers it does not hold (:data:`EXTRA_LAYERS`) is
timed against a *twin*: the registry's ``torch-<name>`` where it exists (the same layer
from ``torch.nn``), else the straightforward torch code of the same formula
(:mod:`normlab.testing.references`, built by :mod:`normlab.bench.references`). Both run
forward+backward on the same input and output gradient::

    step() = autograd.grad(layer(x), [x, *layer.parameters()], dy)

timed interleaved in one process (:mod:`normlab.bench.timing`). With ``compiled=True``
both layers are also wrapped in ``torch.compile`` and all four candidates (ours/twin x
eager/compiled) are measured in the same rounds. Each thread count asked for is set
with ``torch.set_num_threads`` and the whole grid measured at it. The ratios are times,
normlab over the twin: below 1 means normlab is faster.

- ``eager``: ours eager / twin eager.
- ``compiled``: ours compiled / twin compiled.
- ``compiled/eager``: ours compiled / twin eager (what compiling buys a user of ours).

Plus the bytes each saves for backward (:mod:`normlab.bench.memory`).

Shape families (:data:`FAMILIES`): ``lenet`` (the tutorial's features), ``resnet``
(convolutional maps and the pooled features of ResNet-like networks), ``tokens``
(``(N, L, D)`` transformer tokens, normalised over ``D``: only layers whose
fully connected form has a ``normalized_shape``, i.e. layer/RMS/DyT-like),
``volumes`` (``(N, C, D, H, W)`` maps: the layers' 3-D forms) and, only when asked for,
``tiny`` (inputs so small that a call costs its fixed overhead alone: module, autograd
and dispatch).

Targets: per layer, the median eager ratio over its shapes <= 1.0 and no shape above
1.15; compiled, the median <= 1.0; saved bytes no larger than the twin's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import normlab.nn as normlab_nn
from normlab.bench.memory import saved_bytes
from normlab.bench.references import Reference, reference_for
from normlab.bench.timing import Ratio, Summary, compare, measure
from normlab.errors import UsageError
from normlab.nn.registry import CONVOLUTIONS, NORM_LAYERS, create_norm_layer

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeFamily:
    """Input shapes measured together; ``tokens``: ``(N, L, D)`` normalised over ``D``."""

    name: str
    shapes: tuple[Shape, ...]
    tokens: bool = False


FAMILIES: dict[str, ShapeFamily] = {
    # the tutorial's LeNet on 64 Fashion-MNIST images: two conv features, two fc features
    "lenet": ShapeFamily("lenet", ((64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84))),
    # a CIFAR stage at batch 128, an ImageNet stage at batch 32, ResNet-18's pooled
    # features at batch 256
    "resnet": ShapeFamily("resnet", ((128, 64, 32, 32), (32, 256, 14, 14), (256, 512))),
    # ViT-tiny-like tokens at batch 64, ViT-S/16 at 224 px, a 256-token GPT-2-small batch
    "tokens": ShapeFamily("tokens", ((64, 50, 128), (16, 197, 384), (8, 256, 768)), True),
    # 3-D maps (N, C, D, H, W): a video network's stage (8 clips of 8 frames at 28 x 28)
    # and a volumetric one (2 volumes of 32^3): the layers' 3d forms (BatchNorm3d, ...)
    "volumes": ShapeFamily("volumes", ((8, 64, 8, 28, 28), (2, 32, 32, 32, 32))),
    # a batch of 4 with 16 channels of 2 x 2 maps, or 16 features: the arithmetic is
    # negligible, so the time is each call's fixed cost (module, autograd, dispatch)
    "tiny": ShapeFamily("tiny", ((4, 16, 2, 2), (4, 16))),
}
# measured unless --shapes names others: tiny's fixed costs would weigh on the medians
DEFAULT_FAMILIES = ("lenet", "resnet", "tokens", "volumes")
# --quick: one small conv map and one fully connected shape, the smaller ResNet map, the
# smallest tokens
QUICK_SHAPES: dict[str, tuple[Shape, ...]] = {
    "lenet": ((64, 16, 8, 8), (64, 120)),
    "resnet": ((32, 256, 14, 14),),
    "tokens": ((64, 50, 128),),
    "volumes": ((2, 32, 32, 32, 32),),
    "tiny": ((4, 16, 2, 2),),
}

EAGER_MEDIAN_TARGET = 1.0
EAGER_SHAPE_LIMIT = 1.15
COMPILED_MEDIAN_TARGET = 1.0


def _lrn(lib: Any, channels: int, dims: int) -> nn.Module | None:
    # torch's LocalResponseNorm needs (N, C, *) with at least one spatial dim
    return lib.LocalResponseNorm(5) if dims >= 1 else None  # AlexNet's size


def _sync(lib: Any, channels: int, dims: int) -> nn.Module | None:
    return lib.SyncBatchNorm(channels)  # one process, no process group: local statistics


# normlab layers the registry does not hold: name -> builder(library, C, dims), built
# from normlab.nn and from torch.nn
EXTRA_LAYERS: dict[str, Callable[[Any, int, int], nn.Module | None]] = {
    "lrn": _lrn,
    "sync": _sync,
}


def _convolutions() -> dict[str, Callable[[int, int], nn.Module | None]]:
    """The registry's own convolutions (:data:`normlab.nn.registry.CONVOLUTIONS`, e.g. the
    weight-standardized one of ``group-ws``), each as ``<name>-conv``: a 3x3 convolution
    C -> C, padding 1, on convolutional features; timed against the torch code of its
    formula (:mod:`normlab.bench.references`)."""

    def builder(conv: type[nn.Module]) -> Callable[[int, int], nn.Module | None]:
        return lambda channels, dims: conv(channels, channels, 3, padding=1) if dims == 2 else None

    return {f"{name}-conv": builder(conv) for name, conv in CONVOLUTIONS.items()}


def layer_names() -> list[str]:
    """Every layer ``bench layers`` measures: the registry's, its convolutions, then
    :data:`EXTRA_LAYERS`."""
    registry = [n for n in NORM_LAYERS if n != "none" and not n.startswith("torch-")]
    return [*registry, *_convolutions(), *EXTRA_LAYERS]


def select_layers(names: Sequence[str] | None) -> list[str]:
    """Validate ``--layers`` names (all when empty or None)."""
    valid = layer_names()
    if not names:
        return valid
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UsageError(f"unknown layer {unknown[0]!r}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def select_families(names: Sequence[str] | None) -> list[ShapeFamily]:
    """Validate ``--shapes`` family names (:data:`DEFAULT_FAMILIES` when empty or None)."""
    if not names:
        return [FAMILIES[name] for name in DEFAULT_FAMILIES]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown shape family {unknown[0]!r}; valid: {', '.join(FAMILIES)}")
    return [FAMILIES[n] for n in dict.fromkeys(names)]


def quick(families: Iterable[ShapeFamily]) -> list[ShapeFamily]:
    """A few shapes of each family (:data:`QUICK_SHAPES`, else its first): a short run."""
    return [ShapeFamily(f.name, QUICK_SHAPES.get(f.name, f.shapes[:1]), f.tokens) for f in families]


@dataclass(frozen=True)
class Case:
    """One layer on one input shape."""

    layer: str
    shape: Shape
    family: str
    tokens: bool

    @property
    def features(self) -> int:
        """The layer's ``num_features``: C of ``(N, C, *)``, D of tokens ``(N, L, D)``."""
        return self.shape[-1] if self.tokens else self.shape[1]

    @property
    def dims(self) -> int:
        """The registry's ``dims``: spatial dimensions (0 for fully connected and tokens)."""
        return 0 if self.tokens else len(self.shape) - 2


def _build(layer: str, case: Case, torch_twin: bool) -> nn.Module | None:
    convolutions = _convolutions()
    if layer in convolutions:
        return convolutions[layer](case.features, case.dims)
    if layer in EXTRA_LAYERS:
        return EXTRA_LAYERS[layer](nn if torch_twin else normlab_nn, case.features, case.dims)
    name = f"torch-{layer}" if torch_twin else layer
    return create_norm_layer(name, case.features, dims=case.dims)


def ours(case: Case) -> nn.Module | None:
    """Our layer for ``case``, or None where it does not apply (tokens: only layers with a
    ``normalized_shape``; LRN: only convolutional features; layers the registry defines
    for images only, e.g. FRN, have no 3-D form)."""
    try:
        module = _build(case.layer, case, torch_twin=False)
    except ValueError:  # the registry's refusal of a dims the layer is not defined for
        return None
    if module is None or (case.tokens and not hasattr(module, "normalized_shape")):
        return None
    return module


def twin(layer: str, module: nn.Module, case: Case) -> nn.Module | None:
    """The module ``module`` is timed against: ``torch-<layer>`` (or ``torch.nn``'s for an
    extra layer), else the twin of a registry layer that builds the same module, else the
    registry entry's ``reference(module)``, else
    :func:`normlab.bench.references.reference_for`; None when there is none."""
    if layer in EXTRA_LAYERS or f"torch-{layer}" in NORM_LAYERS:
        return _build(layer, case, torch_twin=True)
    for other in NORM_LAYERS:  # the same module as a layer with a twin (group-ws's GroupNorm)
        if f"torch-{other}" in NORM_LAYERS and repr(_build(other, case, False)) == repr(module):
            return _build(other, case, torch_twin=True)
    own = getattr(NORM_LAYERS.get(layer), "reference", None)
    return own(module) if own is not None else reference_for(module)


def cases(layers: Iterable[str], families: Iterable[ShapeFamily]) -> list[Case]:
    """Every (layer, shape) pair where the layer applies, without repeats: a layer that is
    the same module as an earlier one on a shape (``instance`` of fully connected features
    is ``LayerNorm``, as ``layer`` is) is measured once."""
    grid, seen = [], set()
    for layer in layers:
        for family in families:
            for shape in family.shapes:
                case = Case(layer, tuple(shape), family.name, family.tokens)
                module = ours(case)
                if module is None or (shape, repr(module)) in seen:
                    continue
                seen.add((shape, repr(module)))
                grid.append(case)
    return grid


def missing_twins(layers: Iterable[str], families: Iterable[ShapeFamily]) -> list[str]:
    """Layers with a case but no twin to time against (add a reference for them)."""
    missing = []
    for case in cases(layers, families):
        module = ours(case)
        if module is not None and twin(case.layer, module, case) is None:
            missing.append(f"{case.layer} ({type(module).__name__})")
    return list(dict.fromkeys(missing))


@dataclass(frozen=True)
class LayerResult:
    """One layer on one shape at one thread count: seconds per fwd+bwd, ratios, saved bytes."""

    layer: str
    module: str
    twin: str
    shape: Shape
    family: str
    threads: int
    ours_eager: Summary
    torch_eager: Summary
    eager: Ratio
    saved_ours: int
    saved_torch: int
    ours_compiled: Summary | None = None
    torch_compiled: Summary | None = None
    compiled: Ratio | None = None
    compiled_vs_eager: Ratio | None = None

    def targets_met(self) -> dict[str, bool]:
        """This shape's own targets: eager ratio <= :data:`EAGER_SHAPE_LIMIT`, no more
        saved bytes than the twin (the medians' targets are per layer: :func:`summarize`)."""
        return {
            "eager": self.eager.of_medians <= EAGER_SHAPE_LIMIT,
            "memory": self.saved_ours <= self.saved_torch,
        }


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


def build_twins(case: Case) -> tuple[nn.Module, nn.Module]:
    """Our layer and its twin for ``case``, in training mode, with equal parameters drawn
    from U(0.5, 1.5) (not the default init, which hides a swapped weight and bias)."""
    mine = ours(case)
    if mine is None:
        raise UsageError(f"layer {case.layer!r} does not apply to shape {case.shape}")
    with torch.no_grad():
        for p in mine.parameters():
            p.uniform_(0.5, 1.5)
    theirs = twin(case.layer, mine, case)
    if theirs is None:
        raise UsageError(
            f"layer {case.layer!r} ({type(mine).__name__}) has no torch twin nor reference; "
            "add an oracle of that class name to normlab.testing.references"
        )
    with torch.no_grad():
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            q.copy_(p)
    return mine.train(), theirs.train()


def _twin_name(module: nn.Module) -> str:
    """``torch.nn.<class>``, or the name of the reference formula (a wrapper's too)."""
    for part in module.modules():
        if isinstance(part, Reference):
            return part.name
    return f"torch.nn.{type(module).__name__}"


def bench_case(
    case: Case,
    compiled: bool = False,
    device: torch.device | str = "cpu",
    **timing: Any,
) -> LayerResult:
    """Measure one case at the current thread count; ``timing`` goes to
    :func:`timing.measure`.

    The input is ``x ~ N(0.5, 2^2)`` (float32, requires grad) and the output gradient
    ``dy ~ N(0, 1)``, the same for both layers (see :func:`build_twins`).
    """
    device = torch.device(device)
    mine, theirs = (m.to(device) for m in build_twins(case))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=generator).mul_(2.0).add_(0.5)
    x = x.to(device).requires_grad_()
    dy = torch.randn(case.shape, generator=generator).to(device)
    if device.type == "cuda":
        timing.setdefault("sync", torch.cuda.synchronize)
    ours_params, torch_params = list(mine.parameters()), list(theirs.parameters())
    candidates = {
        "ours": fwd_bwd_step(mine, ours_params, x, dy),
        "torch": fwd_bwd_step(theirs, torch_params, x, dy),
    }
    if compiled:
        torch._dynamo.reset()  # a fresh cache: no recompile limit reached across cases
        candidates["ours-compiled"] = fwd_bwd_step(torch.compile(mine), ours_params, x, dy)
        candidates["torch-compiled"] = fwd_bwd_step(torch.compile(theirs), torch_params, x, dy)
    result = measure(candidates, **timing)
    extra: dict[str, Any] = {}
    if compiled:
        extra = {
            "ours_compiled": result["ours-compiled"].summary,
            "torch_compiled": result["torch-compiled"].summary,
            "compiled": compare(result, "ours-compiled", "torch-compiled"),
            "compiled_vs_eager": compare(result, "ours-compiled", "torch"),
        }
    return LayerResult(
        layer=case.layer,
        module=type(mine).__name__,
        twin=_twin_name(theirs),
        shape=case.shape,
        family=case.family,
        threads=torch.get_num_threads(),
        ours_eager=result["ours"].summary,
        torch_eager=result["torch"].summary,
        eager=compare(result, "ours", "torch"),
        saved_ours=saved_bytes(lambda: mine(x)),
        saved_torch=saved_bytes(lambda: theirs(x)),
        **extra,
    )


def geometric_mean(values: Iterable[float]) -> float:
    """exp(mean(log v)): the average of ratios that treats 2x and 0.5x symmetrically."""
    return statistics.geometric_mean(list(values))


def bench_layers(
    layers: Sequence[str],
    families: Sequence[ShapeFamily],
    threads: Sequence[int] = (),
    compiled: bool = False,
    progress: bool = False,
    device: torch.device | str = "cpu",
    **timing: Any,
) -> list[LayerResult]:
    """Measure every applicable (layer, shape) pair at each thread count; see
    :func:`bench_case`.

    Args:
        layers: names from :func:`layer_names`.
        families: shape families (:data:`FAMILIES`, or :func:`quick` of them).
        threads: ``torch.set_num_threads`` values, each measured in turn (empty: the
            current one); the current value is restored afterwards.
        compiled: also measure both layers under ``torch.compile``.
        progress: a tqdm bar on stderr.
        device: where the layers and tensors live.
        timing: passed to :func:`normlab.bench.timing.measure` (repeats, warmup, ...).

    Raises:
        UsageError: a thread count below 1.
    """
    for count in threads:
        if count < 1:
            raise UsageError(f"thread counts must be at least 1, got {count}")
    before = torch.get_num_threads()
    grid = [(count, case) for count in (threads or (before,)) for case in cases(layers, families)]
    todo: Iterable[tuple[int, Case]] = grid
    if progress:
        from tqdm import tqdm

        todo = tqdm(grid, desc="bench layers", unit="case", leave=False)
    results = []
    try:
        for count, case in todo:
            torch.set_num_threads(count)
            results.append(bench_case(case, compiled=compiled, device=device, **timing))
    finally:
        torch.set_num_threads(before)
    return results
