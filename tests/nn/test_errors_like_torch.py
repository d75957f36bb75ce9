"""Bad inputs raise what torch.nn raises, side by side with torch.nn (the oracle).

For each layer, configuration, parameter dtype, input shape and input dtype the torch.nn
twin is called first; normlab must then raise an exception of torch's type (a subclass is
allowed: ``ShapeError`` is a ``RuntimeError`` and a ``ValueError``; ``DtypeError`` a
``NotImplementedError`` and a ``TypeError``), or succeed where torch succeeds. Where
torch raises ``RuntimeError`` for a channel count its message is kept word for word.

One deliberate difference: an *empty* integer input, which torch turns into an empty
float32 output, is refused like any integer input (not part of the grids below).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INPUT_DTYPES = [*FLOATS, torch.int64, torch.bool]
PARAM_DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _outcome(call: Callable[[], object]) -> type[BaseException] | None:
    """The exception type ``call`` raises, or None."""
    try:
        call()
    except Exception as error:  # the oracle's exception, whatever it is, is what we compare
        return type(error)
    return None


def _input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.ones(shape, dtype=dtype)


def _assert_same_outcome(build: Callable[[object], nn.Module], x: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the num_features warning of instance norm
        theirs = _outcome(lambda: build(nn)(x))
        ours = _outcome(lambda: build(ours_nn)(x))
    if theirs is None:
        assert ours is None
    else:
        assert ours is not None and issubclass(ours, theirs), (ours, theirs)


BATCH_SHAPES = {
    "BatchNorm1d": [(4, 3), (4, 5), (1, 3), (1, 5), (4, 3, 5), (2, 5, 1)],
    "BatchNorm2d": [(4, 3, 2, 2), (4, 5, 2, 2), (1, 3, 1, 1), (0, 5, 2, 2)],
    "SyncBatchNorm": [(4, 3, 2, 2), (4, 5, 2, 2), (4, 3)],
    "InstanceNorm1d": [(4, 3, 5), (4, 5, 5), (3, 5), (5, 5), (4, 3, 1), (3, 1), (4, 5, 1)],
    "InstanceNorm2d": [(4, 3, 2, 2), (4, 5, 2, 2), (3, 1, 1), (4, 3, 1, 1)],
}


@pytest.mark.parametrize(
    ("name", "affine", "track", "training"),
    [
        (name, *flags)
        for name in BATCH_SHAPES
        for flags in itertools.product([True, False], repeat=3)
    ],
)
def test_batch_and_instance_norm_raise_what_torch_raises(
    name: str, affine: bool, track: bool, training: bool
) -> None:
    for param_dtype, shape, dtype in itertools.product(
        PARAM_DTYPES, BATCH_SHAPES[name], INPUT_DTYPES
    ):
        if shape[0] == 0 and not dtype.is_floating_point:
            continue  # the deliberate difference (module docstring)

        def build(lib: object, p: torch.dtype = param_dtype) -> nn.Module:
            layer = getattr(lib, name)(3, affine=affine, track_running_stats=track)
            return layer.to(p).train(training)

        _assert_same_outcome(build, _input(shape, dtype))


FEATURE_LAYERS: dict[str, tuple[Callable[[object, bool], nn.Module], list[tuple[int, ...]]]] = {
    "GroupNorm": (lambda lib, a: lib.GroupNorm(3, 6, affine=a), [(4, 6, 5), (4, 9, 5), (0, 6, 5)]),
    "LayerNorm": (lambda lib, a: lib.LayerNorm(6, elementwise_affine=a), [(4, 6), (4, 5)]),
    "RMSNorm": (lambda lib, a: lib.RMSNorm(6, elementwise_affine=a), [(4, 6), (4, 5), (0, 6)]),
}


@pytest.mark.parametrize(("name", "affine"), list(itertools.product(FEATURE_LAYERS, [True, False])))
def test_feature_norms_raise_what_torch_raises(name: str, affine: bool) -> None:
    make, shapes = FEATURE_LAYERS[name]
    for param_dtype, shape, dtype in itertools.product(PARAM_DTYPES, shapes, INPUT_DTYPES):
        _assert_same_outcome(
            lambda lib, p=param_dtype: make(lib, affine).to(p), _input(shape, dtype)
        )


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda lib: lib.BatchNorm1d(3), (4, 5)),
        (lambda lib: lib.BatchNorm2d(3).eval(), (4, 5, 2, 2)),
        (lambda lib: lib.BatchNorm3d(3, track_running_stats=False), (2, 5, 2, 2, 2)),
        (lambda lib: lib.InstanceNorm2d(3, track_running_stats=True), (4, 5, 2, 2)),
    ],
    ids=["bn1d running_mean", "bn2d eval", "bn3d weight", "in2d running stats per sample"],
)
def test_wrong_channel_count_is_torchs_runtime_error_word_for_word(
    build: Callable[[object], nn.Module], shape: tuple[int, ...]
) -> None:
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError) as theirs:
            build(nn)(x)
        with pytest.raises(RuntimeError) as ours:
            build(ours_nn)(x)
    assert isinstance(ours.value, ValueError)  # also a ValueError: the CLI's one-line errors
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    ("build", "x"),
    [
        (lambda lib: lib.BatchNorm2d(3), torch.randn(2, 3, 4, 4, dtype=torch.float64)),
        (lambda lib: lib.InstanceNorm1d(3, affine=True), torch.randn(2, 3, 4, dtype=torch.float64)),
        (lambda lib: lib.BatchNorm1d(3).double(), torch.randn(4, 3).half()),
        (lambda lib: lib.BatchNorm1d(3), torch.ones(4, 3, dtype=torch.int64)),
    ],
    ids=["float64 input", "float64 input instance", "float64 params half input", "integer"],
)
def test_dtype_errors_keep_torchs_words_and_name_the_way_out(
    build: Callable[[object], nn.Module], x: torch.Tensor
) -> None:
    with pytest.raises(RuntimeError) as theirs:
        build(nn)(x)
    with pytest.raises(type(theirs.value)) as ours:
        build(ours_nn)(x)
    assert isinstance(ours.value, TypeError)
    torch_words = str(theirs.value).split(":")[0]  # "mixed dtype (CPU)", '"batch_norm" ...'
    assert str(ours.value).startswith(torch_words.split(" for ")[0])
    message = str(ours.value)
    assert "input.float()" in message or "cast" in message  # the way out


LAYOUTS = {
    "channels_last": (torch.randn(2, 3, 4, 5), torch.channels_last),
    "channels_last_3d": (torch.randn(2, 3, 2, 4, 5), torch.channels_last_3d),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "build",
    [
        lambda lib, x: lib.RMSNorm(x.shape[-1]),
        lambda lib, x: lib.GroupNorm(1, x.shape[1]),
        lambda lib, x: lib.LayerNorm(x.shape[-1]),
        lambda lib, x: lib.BatchNorm2d(3) if x.dim() == 4 else lib.BatchNorm3d(3),
        lambda lib, x: lib.InstanceNorm2d(3) if x.dim() == 4 else lib.InstanceNorm3d(3),
    ],
    ids=["RMSNorm", "GroupNorm", "LayerNorm", "BatchNorm", "InstanceNorm"],
)
def test_memory_format_of_the_output_is_torchs(
    build: Callable[[object, torch.Tensor], nn.Module], layout: str
) -> None:
    contiguous, memory_format = LAYOUTS[layout]
    x = contiguous.to(memory_format=memory_format)
    theirs, ours = build(nn, x)(x), build(ours_nn, x)(x)
    for fmt in (memory_format, torch.contiguous_format):
        assert ours.is_contiguous(memory_format=fmt) == theirs.is_contiguous(memory_format=fmt)
