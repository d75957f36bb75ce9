"""normlab's fused CPU kernels: the same formulas as :mod:`normlab.functional`, in C++.

The pure-tensor code in :mod:`normlab.functional` is the reference: it runs everywhere
(CUDA, half precision, ``torch.compile``) and is what the docs explain. On CPU, eager mode,
float32/float64 and contiguous tensors, a few tens of small tensor operations per layer
cost more in dispatch than the arithmetic itself, so the same formulas also exist as loops
(``batch_norm.cpp``, ``layer_norm.cpp``, ``group_norm.cpp``, ``rms_norm.cpp``,
``frozen_batch_norm.cpp``): a few passes over the data each way, as ``torch.nn``'s own
kernels do, most of them one operator each with its backward registered for autograd in C++
(``autograd.cpp``, or the norm's own file): a backward node with typed fields for what it
saves, as torch's generated nodes have, so that a call's fixed cost is close to torch.nn's
(a ``torch::autograd::Function`` keeps them in a string-keyed map: several microseconds
more per forward+backward, measured on ``LayerNorm`` at 4x16); ``avg_pool.cpp`` is the 2x2
average pool of the tutorial's LeNet (:class:`normlab.models.lenet.AvgPool2d`);
``caching_allocator.cpp`` is a CPU allocator that reuses freed blocks
(:func:`cache_cpu_memory`). They are compiled by :mod:`normlab.kernels.cpu.build`: ``make``
prebuilds them into the package folder; otherwise the first use builds them into a per-user
cache (``NORMLAB_KERNEL_CACHE``, or ``python -m normlab.kernels.cpu --cache`` ahead of
time), with a one-line notice. They are registered as ``torch.ops.normlab.*``.

:func:`ops` returns that namespace, or None when the library cannot be built or loaded
(no compiler: one notice), is older than its sources (a warning says to rebuild) or
``NORMLAB_KERNELS=0`` is set; normlab then uses the pure-tensor code alone. Both paths
are tested against ``torch.nn``.

On CUDA, batch, instance (batch norm of a reshaped input), layer and group norm run as
Triton kernels (:mod:`normlab.kernels.triton`) when Triton is installed (it comes with
torch's CUDA builds): one or two launches each way instead of a dozen tensor operations.
With the CPU library loaded as well, the Triton kernels are registered as the CUDA
implementations of its operators (:func:`cuda_operators`), so that float32/float64 layers
call the same C++ autograd operators on either device (:func:`operators_apply`).
:func:`ops_for` picks the forward and backward kernels for given tensors.
:func:`run_triton_on_cpu` runs them on CPU tensors through Triton's interpreter, which is
how the test suite checks them on a machine without a GPU.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from normlab.kernels.cpu import build

if TYPE_CHECKING:
    from types import ModuleType

    from torch._ops import _OpNamespace

_FLOATS = (torch.float32, torch.float64)
_TRITON_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_UNLOADED = object()
_ops: Any = _UNLOADED  # torch.ops.normlab, None (off or not built), or not loaded yet
_triton: Any = _UNLOADED  # normlab.kernels.triton, None (off or no Triton), or not loaded yet
_triton_on_cpu = False  # run_triton_on_cpu() was called
_cuda_library: Any = _UNLOADED  # the Triton kernels' CUDA registration, None, or not yet


def ops() -> _OpNamespace | None:
    """``torch.ops.normlab`` when the kernels are built and enabled, else None."""
    global _ops
    if _ops is _UNLOADED:
        _ops = _load()
    return _ops


def loaded_ops() -> _OpNamespace | None:
    """``torch.ops.normlab`` if :func:`ops` has loaded it already, else None, without
    loading: safe inside a ``torch.compile`` trace, where loading (a file-system check,
    maybe a build) would break the graph. Any eager call of a normlab norm, or building one
    of normlab's modules, loads the kernels first."""
    return None if _ops is _UNLOADED else _ops


def _load() -> _OpNamespace | None:
    if os.environ.get("NORMLAB_KERNELS", "1") == "0":
        return None
    if build.LIBRARY.is_file() and build.is_stale():  # make's, from older sources: its
        warnings.warn(  # operators may not match this code
            "normlab's kernels are older than their sources; run `make kernels` to rebuild "
            "them (until then normlab uses its tensor code)",
            stacklevel=2,
        )
        return None
    library = build.ensure_built()  # make's library, else the user cache's (built once)
    if library is None:  # no compiler here (a notice said so)
        return None
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):  # built for another torch or machine: use the tensors
        return None
    return torch.ops.normlab


def triton_ops() -> ModuleType | None:
    """:mod:`normlab.kernels.triton` (the Triton operators) when Triton is installed and the
    kernels are on (``NORMLAB_KERNELS`` is not ``0``), else None. Imported on first use."""
    global _triton
    if _triton is _UNLOADED:
        _triton = _load_triton()
    return _triton


def _load_triton() -> ModuleType | None:
    if os.environ.get("NORMLAB_KERNELS", "1") == "0":
        return None
    try:
        from normlab.kernels import triton as gpu
    except ImportError:  # no Triton (torch's CPU builds come without it)
        return None
    return gpu


def set_enabled(enabled: bool, gpu: bool | None = None) -> None:
    """Turn the kernels on (if built or installed) or off in this process, e.g. to compare
    the paths; ``gpu`` (default: ``enabled``) sets the Triton kernels apart from the CPU's."""
    global _ops, _triton
    _ops = _load() if enabled else None
    _triton = _load_triton() if (enabled if gpu is None else gpu) else None


def run_triton_on_cpu(on: bool = True) -> bool:
    """Let the Triton kernels take CPU tensors, run by Triton's interpreter (numpy, slow):
    how the tests check them without a GPU (``on=False`` stops it). Call it before Triton
    is first imported in the process: the interpreter is chosen then. False, and nothing
    changed, when Triton is not installed."""
    global _triton_on_cpu, _triton
    if not on:
        _triton_on_cpu = False
        return True
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: it reads it then
    try:
        import triton.runtime.interpreter as interpreter
    except ImportError:
        del os.environ["TRITON_INTERPRET"]
        return False
    patch = interpreter._patch_lang_tensor
    if not getattr(patch, "normlab", False):
        # Triton 3.6's interpreter turns one-element arrays into loop bounds with int(),
        # an error since numpy 2.4; take the element instead.
        def patched(tensor: Any, scope: Any) -> None:
            patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda t: int(t.handle.data.reshape(-1)[0]))

        patched.normlab = True  # type: ignore[attr-defined]
        interpreter._patch_lang_tensor = patched
    _triton_on_cpu = True
    _triton = _UNLOADED
    return True


def runs_on(device: str | torch.device) -> bool:
    """True when normlab's kernels run on ``device``: the CPU kernels are built (and on) and
    it is the CPU, or it is a CUDA device and Triton is installed (and the kernels on)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and triton_ops() is not None
    return ops() is not None and device.type == "cpu"


def _traced() -> bool:
    """Under ``torch.compile`` (the compiler fuses the tensor code itself) or a ``torch.func``
    transform (``vmap``, ``grad``, ``jvp``, ...: the operators have no batching or
    forward-mode rules; the tensor code has torch's)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def applies(input: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when the kernels can take these tensors: eager mode (not ``torch.compile``, no
    ``torch.func`` transform), CPU, contiguous, one float32/float64 dtype (``None`` entries
    are optional arguments left out).

    Called on every forward and backward, so it is written to be cheap.
    """
    if _traced():
        return False
    if _ops is None or (_ops is _UNLOADED and ops() is None):
        return False
    dtype = input.dtype
    if dtype not in _FLOATS or not input.is_cpu or not input.is_contiguous():
        return False
    for other in others:
        if other is not None and (
            other.dtype != dtype or not other.is_cpu or not other.is_contiguous()
        ):
            return False
    return True


def cuda_operators() -> _OpNamespace | None:
    """``torch.ops.normlab`` with the Triton kernels registered as its CUDA implementations
    (:mod:`normlab.kernels.triton.operators`, once per process), when both the CPU library
    (which defines the operators and their C++ autograd) and Triton are loaded and on;
    else None."""
    global _cuda_library
    if ops() is None or triton_ops() is None:
        return None
    if _cuda_library is _UNLOADED:
        from normlab.kernels.triton import operators

        _cuda_library = operators.register("CUDA")
    return _ops


def operators_apply(input: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when the C++ autograd operators (``batch_norm_train``, ``layer_norm``,
    ``group_norm``) take these tensors: on the CPU where :func:`applies`; on CUDA in eager
    mode, contiguous, one float32/float64 dtype, one device, with :func:`cuda_operators`
    registered. Called on every forward, so cheap once the first call has registered."""
    if input.is_cpu:
        return applies(input, *others)
    dtype, device = input.dtype, input.device
    if not input.is_cuda or dtype not in _FLOATS or not input.is_contiguous() or _traced():
        return False
    registered = _cuda_library is not _UNLOADED and _ops is not None and _triton is not None
    if not registered and cuda_operators() is None:
        return False
    for other in others:
        if other is not None and (
            other.dtype != dtype or other.device != device or not other.is_contiguous()
        ):
            return False
    return True


def ops_for(input: torch.Tensor, *others: torch.Tensor | None) -> ModuleType | None:
    """The normalization operators (``batch_norm_*``, ``layer_norm_*``, ``group_norm_*``)
    for these tensors: the CPU kernels where :func:`applies`; on CUDA (eager and outside
    ``torch.func`` transforms, contiguous,
    any float dtype, parameters on the same device) the Triton kernels; else None (then
    normlab's tensor code runs)."""
    if applies(input, *others):
        return _ops
    if not (input.is_cuda or _triton_on_cpu) or _traced():
        return None
    gpu = triton_ops()
    if gpu is None or input.dtype not in _TRITON_FLOATS or not input.is_contiguous():
        return None
    for other in others:
        if other is not None and (other.device != input.device or not other.is_contiguous()):
            return None
    return gpu


DEFAULT_MAX_CACHED_BYTES = 1 << 30  # freed blocks kept for reuse, at most (1 GiB)


def cache_cpu_memory(max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES) -> bool:
    """Make torch's CPU allocator in this process cache freed blocks (``caching_allocator.cpp``).

    A training step allocates its activations and gradients afresh; with the default
    allocator a large block goes back to the operating system when freed and its pages
    fault again on the next step (LeNet's counts per step are in ``docs/results/``).
    Cached, they are reused without faulting. Blocks of 64 KiB and more are kept per
    size up to ``max_cached_bytes`` in all; the process's memory then stays near its peak.
    Tensors allocated before keep their own allocator. Returns False (and changes
    nothing) when the kernels are not built or are off (``NORMLAB_KERNELS=0``).
    """
    if not isinstance(max_cached_bytes, int) or max_cached_bytes < 0:
        raise ValueError(
            f"max_cached_bytes must be a non-negative integer, got {max_cached_bytes!r}"
        )
    library = ops()
    if library is None:
        return False
    library.use_caching_cpu_allocator(max_cached_bytes)
    return True


def cached_cpu_bytes() -> int:
    """Bytes of freed blocks the caching CPU allocator holds for reuse (0 without it)."""
    library = ops()
    return 0 if library is None else int(library.cached_cpu_bytes())
