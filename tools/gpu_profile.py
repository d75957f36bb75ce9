"""Where the time of normlab's CUDA layers goes: the host (Python, launches) or the GPU.

1. Host cost per call of batch norm's operators, modules and forward+backward, normlab
   and torch.nn, on an input so small that the GPU keeps up with the queued calls.
   Then each module's forward+backward through the C++ autograd operators (the Triton
   kernels registered for CUDA) and through the Python ``autograd.Function`` they replaced.
2. Batch norm's Triton operators on ``bench bandwidth``'s shape, forward+backward, for
   several launch sizes, timed by replaying a CUDA graph (no host cost), as a share of
   the two-pass bound.
3. Batch, layer and group norm forward+backward as ``bench layers`` times it, per call:
   ``wall`` (calls queued back to back, one synchronisation at the end), ``gpu`` (the
   kernels' own time, ``torch.profiler``) and their difference (the host's share), with
   the kernels each side launches.

Run by tools/gpu-bench.sh (``PYTHONPATH=src``); prints a table per part; microseconds.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import normlab.nn as lab
from normlab import kernels
from normlab.bench.layers import FAMILIES, build_twins, cases, fwd_bwd_step
from normlab.kernels import triton as gpu
from normlab.kernels.triton import batch_norm as tbn

CONV_FAMILIES = [FAMILIES["lenet"], FAMILIES["resnet"]]  # the shapes of `bench layers`
DEVICE = torch.device("cuda")


def per_call_us(fn: Callable[[], object], calls: int = 200, rounds: int = 5) -> float:
    """Median over rounds of the wall time per call, calls queued back to back."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def gpu_us(fn: Callable[[], object], calls: int = 20) -> tuple[float, str]:
    """Device time per call (sum over kernels) and the kernels' names, from the profiler."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in kernels) / calls
    names = ", ".join(f"{e.key[:28]}x{e.count // calls}" for e in kernels)
    return total, names


def step_of(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    """``bench layers``' timed step for ``module`` and its own parameters."""
    return fwd_bwd_step(module, list(module.parameters()), x, dy)


def part_layers() -> None:
    print("\n== forward+backward per call, microseconds (wall / gpu / wall - gpu)")
    for case in cases(("batch", "layer", "group"), CONV_FAMILIES):  # bench layers' modules
        kind, shape = case.layer, case.shape
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        dy = torch.randn(shape, device=DEVICE)
        row = []
        kernels = []
        for module in build_twins(case):
            step = step_of(module.to(DEVICE), x, dy)
            wall = per_call_us(step)
            on_gpu, names = gpu_us(step)
            row.append((wall, on_gpu))
            kernels.append(names)
        (w1, g1), (w2, g2) = row
        print(f"{kind:<6} {'x'.join(map(str, shape)):>14}  normlab {w1:7.1f} {g1:7.1f} "
              f"{w1 - g1:7.1f} | torch {w2:7.1f} {g2:7.1f} {w2 - g2:7.1f} | ratio "
              f"{w1 / w2:5.2f}")  # fmt: skip
        print(f"       normlab: {kernels[0]}\n       torch:   {kernels[1]}")


def graph_us(fn: Callable[[], object], replays: int = 50) -> float:
    """Device time per call of ``fn`` by replaying a CUDA graph of it (no host cost)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def part_bandwidth_sweep() -> None:
    """Batch norm's Triton forward+backward on ``bench bandwidth``'s shape for several
    launch sizes: programs per multiprocessor (how many splits) and values per tile."""
    shape = (128, 256, 56, 56)
    print(f"\n== batch norm forward+backward, {shape} float32: device time (graph), us, "
          "and share of the two-pass bound (8 passes at the copy's speed)")  # fmt: skip
    x, dy = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    c = shape[1]
    w, b = torch.rand(c, device=DEVICE) + 0.5, torch.randn(c, device=DEVICE)
    out = torch.empty_like(x)
    copy = graph_us(lambda: out.copy_(x))  # two passes
    print(f"copy {copy:.1f} us: two-pass bound {4 * copy:.1f} us")

    def fwd_bwd() -> None:
        _, offset, invstd = gpu.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5)
        gpu.batch_norm_backward(dy, x, offset, invstd, w)

    defaults = (tbn.PROGRAMS_PER_SM, tbn.TILE)
    for per_sm in (4, 8, 16, 32):
        for tile in (1024, 2048, 4096):
            tbn.PROGRAMS_PER_SM, tbn.TILE = per_sm, tile
            tbn.plan.cache_clear()
            p = tbn.plan(shape, torch.float32, DEVICE)
            try:
                t = graph_us(fwd_bwd)
                cell = f"{t:8.1f} us  {4 * copy / t:6.1%}"
            except Exception as exc:  # a diagnostic: report and go on
                cell = f"error {type(exc).__name__}: {exc}"[:80]
            print(f"programs/SM {per_sm:>2} tile {tile:>5} grid {p.grid}: {cell}")
    tbn.PROGRAMS_PER_SM, tbn.TILE = defaults
    tbn.plan.cache_clear()


def part_host() -> None:
    print("\n== host cost per call, us (queued calls on a tiny input: the GPU keeps up)")
    shape = (8, 16, 4, 4)
    x, dy = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    c = shape[1]
    w, b = torch.rand(c, device=DEVICE) + 0.5, torch.randn(c, device=DEVICE)
    rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    _, offset, invstd = gpu.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
    ours, theirs = lab.BatchNorm2d(c).to(DEVICE), nn.BatchNorm2d(c).to(DEVICE)
    xg = x.clone().requires_grad_()
    rows = {
        "torch.empty(64)": lambda: torch.empty(64, device=DEVICE),
        "x.add_(0) (one torch launch)": lambda: x.add_(0.0),
        "gpu.batch_norm_forward (one launch)": lambda: gpu.batch_norm_forward(
            x, w, b, rm, rv, 0.1, 1e-5
        ),
        "gpu.batch_norm_backward (one launch)": lambda: gpu.batch_norm_backward(
            dy, x, offset, invstd, w
        ),
        "normlab BatchNorm2d forward": lambda: ours(xg),
        "torch BatchNorm2d forward": lambda: theirs(xg),
        "normlab forward+backward": step_of(ours, xg, dy),
        "torch forward+backward": step_of(theirs, xg, dy),
    }
    for name, fn in rows.items():
        print(f"{name:<40} {per_call_us(fn, calls=500):7.1f}")
    print("\n== module forward+backward per call, us: C++ autograd operator vs Python Function")
    modules = {
        "batch (8, 16, 4, 4)": (lab.BatchNorm2d(c), nn.BatchNorm2d(c), shape),
        "batch (64, 120)": (lab.BatchNorm1d(120), nn.BatchNorm1d(120), (64, 120)),
        "layer (64, 50, 128)": (lab.LayerNorm(128), nn.LayerNorm(128), (64, 50, 128)),
        "group (64, 16, 8, 8)": (lab.GroupNorm(4, 16), nn.GroupNorm(4, 16), (64, 16, 8, 8)),
    }
    for name, (mine, twin, size) in modules.items():
        xs = torch.randn(size, device=DEVICE, requires_grad=True)
        grad = torch.randn(size, device=DEVICE)
        mine, twin = mine.to(DEVICE), twin.to(DEVICE)
        times: dict[str, list[float]] = {"operator": [], "function": [], "torch": []}
        for _ in range(7):  # the three interleaved, round by round
            times["operator"].append(per_call_us(step_of(mine, xs, grad), rounds=1))
            with python_function_path():
                times["function"].append(per_call_us(step_of(mine, xs, grad), rounds=1))
            times["torch"].append(per_call_us(step_of(twin, xs, grad), rounds=1))
        operator, function, theirs = (statistics.median(t) for t in times.values())
        print(f"{name:<22} operator {operator:7.1f}  Function {function:7.1f}  "
              f"torch.nn {theirs:7.1f}  ratio {operator / theirs:5.2f} "
              f"(was {function / theirs:5.2f})")  # fmt: skip


def part_host_ops() -> None:
    """Where a call's host time goes, by operator, on every thread (the backward runs on
    autograd's CUDA thread): ``torch.profiler`` CPU times of normlab's and torch.nn's
    batch norm forward+backward at a LeNet and a ResNet shape."""
    for size in ((64, 16, 8, 8), (128, 64, 32, 32)):
        c = size[1]
        xs = torch.randn(size, device=DEVICE, requires_grad=True)
        grad = torch.randn(size, device=DEVICE)
        for name, module in (("normlab", lab.BatchNorm2d(c)), ("torch.nn", nn.BatchNorm2d(c))):
            step = step_of(module.to(DEVICE), xs, grad)
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(50):
                    step()
                torch.cuda.synchronize()
            print(f"\n== {name} BatchNorm2d {size}: host time by operator, us per call")
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            for event in events[:10]:
                print(f"{event.key[:48]:<48} self {event.self_cpu_time_total / 50:8.1f}  "
                      f"total {event.cpu_time_total / 50:8.1f}  x{event.count // 50}")  # fmt: skip


@contextlib.contextmanager
def python_function_path() -> Iterator[None]:
    """normlab's CUDA layers as before the operators had CUDA implementations: the Triton
    kernels under a Python ``autograd.Function``."""
    original = kernels.operators_apply
    kernels.operators_apply = lambda input, *others: input.is_cpu and original(input, *others)
    try:
        yield
    finally:
        kernels.operators_apply = original


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(torch.__version__, torch.cuda.get_device_name())
    print("C++ autograd operators on CUDA:", kernels.cuda_operators() is not None)
    part_host()
    part_host_ops()
    part_bandwidth_sweep()
    part_layers()
