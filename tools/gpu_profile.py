"""Where the time of normlab's CUDA layers goes: the host (Python, launches) or the GPU.

1. Host cost per call of batch norm's operators, modules and forward+backward, normlab
   and torch.nn, on an input so small that the GPU keeps up with the queued calls.
2. Batch norm's Triton operators alone on the bench shapes, forward+backward, for several
   launch plans (the current one, always split, always one launch, smaller tiles), timed
   by replaying a CUDA graph (no host cost), against torch.nn's graph-replayed step.
3. Batch, layer and group norm forward+backward as ``bench layers`` times it, per call:
   ``wall`` (calls queued back to back, one synchronisation at the end), ``gpu`` (the
   kernels' own time, ``torch.profiler``) and their difference (the host's share), with
   the kernels each side launches.

Run by tools/gpu-bench.sh (``PYTHONPATH=src``); prints a table per part; microseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import normlab.nn as lab
from normlab.bench.layers import FAMILIES, build_twins, cases, fwd_bwd_step
from normlab.kernels import triton as gpu
from normlab.kernels.triton import batch_norm as tbn

CONV_FAMILIES = [FAMILIES["lenet"], FAMILIES["resnet"]]  # the shapes of `bench layers`
SHAPES = [shape for family in CONV_FAMILIES for shape in family.shapes]
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


def part_plans() -> None:
    print("\n== batch norm Triton operators alone: forward+backward device time (graph), us")
    settings = {"now": {}, "split": {"ONE_PROGRAM_LIMIT": 0},
                "one": {"ONE_PROGRAM_LIMIT": 1 << 40}, "tile2k": {"TILE": 2048}}  # fmt: skip
    defaults = {k: getattr(tbn, k) for k in ("ONE_PROGRAM_LIMIT", "TILE")}
    for shape in SHAPES:
        x, dy = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
        c = shape[1]
        w, b = torch.rand(c, device=DEVICE) + 0.5, torch.randn(c, device=DEVICE)
        rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)

        def fwd_bwd(x=x, dy=dy, w=w, b=b, rm=rm, rv=rv) -> None:  # type: ignore[no-untyped-def]
            _, offset, invstd = gpu.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
            gpu.batch_norm_backward(dy, x, offset, invstd, w)

        cells = []
        for name, values in settings.items():
            for key, value in {**defaults, **values}.items():
                setattr(tbn, key, value)
            tbn.plan.cache_clear()
            p = tbn.plan(shape, torch.float32, DEVICE)
            try:
                cells.append(f"{name} {graph_us(fwd_bwd):6.1f} [{p.grid[0]}x{p.grid[1]}]")
            except Exception as exc:  # a diagnostic: report and go on
                cells.append(f"{name} error {type(exc).__name__}")
        for key, value in defaults.items():
            setattr(tbn, key, value)
        tbn.plan.cache_clear()
        ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1]).to(DEVICE)
        try:
            theirs = f"{graph_us(step_of(ref, x.clone().requires_grad_(), dy)):6.1f}"
        except Exception as exc:  # a diagnostic: report and go on
            theirs = f"error {type(exc).__name__}"
        print(f"{'x'.join(map(str, shape)):>14}  " + "  ".join(cells) + f"  torch.nn {theirs}")


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


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(torch.__version__, torch.cuda.get_device_name())
    part_host()
    part_plans()
    part_layers()
