"""``normlab bench``: normlab against torch.nn, timed interleaved in one process.

``normlab bench layers`` times forward+backward of every normlab layer against its
``torch.nn`` twin (eager, and with ``--compile`` also compiled) and the bytes each saves
for backward; ``normlab bench train`` measures training images/second of the tutorial's
LeNet with normlab's batch norm, with torch's, and with the tutorial's original pipeline;
``normlab bench bandwidth`` measures the memory bandwidth batch norm's passes achieve.
Ratios are normlab over torch in time for ``layers`` (below 1: normlab is faster) and in
speed for ``train`` (above 1: the first named is faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

SHAPE_FAMILIES = ("lenet", "resnet", "tokens", "volumes", "tiny")  # bench.layers.FAMILIES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark normlab against torch.nn (layers, training, bandwidth)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    which = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    layers = which.add_parser(
        "layers",
        help="forward+backward time and saved memory of each layer vs its torch twin",
        description="Forward+backward time of every layer of normlab's registry against its "
        "twin (the torch.nn layer of the same name, else the plain torch code of the same "
        "formula), interleaved in one process, as time ratios normlab/twin (median "
        "[min-max] over repeats), per layer the median over shapes and the worst shape, "
        "plus the bytes each saves for backward.",
    )
    layers.add_argument(
        "--shapes", default=None, metavar="FAMILIES",
        help=f"comma-separated shape families: {', '.join(SHAPE_FAMILIES)} "
        "(default: all but tiny); tokens only for layers over the last dimension "
        "(layer, RMS, DyT-like); volumes (N, C, D, H, W) for the layers' 3-D forms; "
        "tiny for the fixed cost of a call",
    )  # fmt: skip
    layers.add_argument(
        "--layers", default=None, metavar="LAYERS",
        help="comma-separated layers (default: every layer of the registry, plus lrn, sync)",
    )  # fmt: skip
    layers.add_argument(
        "--thread-counts", default=None, metavar="COUNTS",
        help="comma-separated torch thread counts, each measured in turn, e.g. 1,2 "
        "(default: the current count, normlab --threads)",
    )  # fmt: skip
    layers.add_argument(
        "--compile", action="store_true",
        help="also measure both layers under torch.compile (slow the first time: compiling)",
    )  # fmt: skip
    layers.add_argument(
        "--repeats", type=int, default=None, help="timings per candidate (default: 9; quick: 3)"
    )
    layers.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, blind to other "
        "jobs' load on a shared machine (with 2+ threads it adds up their CPU times)",
    )  # fmt: skip
    layers.add_argument(
        "--write-results", default=None, metavar="PATH",
        help="also write the tables as a Markdown section of the page PATH (replacing the "
        "section of the same --label)",
    )  # fmt: skip
    layers.add_argument(
        "--label", default=None,
        help="the section's title in --write-results (default: the settings and the date)",
    )  # fmt: skip
    layers.add_argument("--note", default="", help="a sentence printed under the section's title")
    _common(layers, quick="a few short repeats on the first shapes of each family (smoke test)")
    layers.set_defaults(func=run, trains=True)

    train = which.add_parser(
        "train",
        help="training images/second: normlab's BN, torch's BN, the tutorial's pipeline",
        description="Training throughput of the tutorial's LeNet with normlab's batch norm, "
        "with torch's (same lean loop) and with the tutorial's original pipeline, in chunks "
        "of steps that take turns.",
    )
    train.add_argument(
        "--steps", type=int, default=None,
        help="timed steps per candidate (default: 600; quick: 40)",
    )  # fmt: skip
    train.add_argument(
        "--chunk", type=int, default=None,
        help="steps per timed chunk; candidates alternate every chunk (default: 25; quick: 10)",
    )  # fmt: skip
    train.add_argument(
        "--data", choices=("auto", "fashion-mnist", "synthetic"), default="auto",
        help="training images: Fashion-MNIST, generated ones, or auto (Fashion-MNIST when "
        "found, else synthetic; the default)",
    )  # fmt: skip
    train.add_argument("--data-dir", default=None, help="look for Fashion-MNIST here first")
    train.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    train.add_argument(
        "--compile", action="store_true",
        help="also measure normlab's LeNet under torch.compile (slow the first time: compiling)",
    )  # fmt: skip
    train.add_argument(
        "--cuda-graphs", action="store_true",
        help="also measure both LeNets with each training step replayed from a CUDA graph "
        "(CUDA only): the kernels' speed without the host's cost per launch",
    )  # fmt: skip
    _common(train)
    train.set_defaults(func=run, trains=True)

    bandwidth = which.add_parser(
        "bandwidth",
        help="achieved memory bandwidth (GB/s) of batch norm's training passes",
        description="Batch norm forward and forward+backward, normlab and torch.nn, timed "
        "interleaved with a plain copy of the same tensor: the bytes each pass must move "
        "at the least over its time (GB/s), as a share of the copy's and of the GPU's "
        "datasheet peak.",
    )
    bandwidth.add_argument(
        "--shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), default=None,
        help="input shape (default: 128 256 56 56 on CUDA, 32 64 56 56 on the CPU)",
    )  # fmt: skip
    bandwidth.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
        help="input dtype (parameters stay float32; default float32)",
    )  # fmt: skip
    bandwidth.add_argument(
        "--compile", action="store_true", help="also measure both layers under torch.compile"
    )
    bandwidth.add_argument(
        "--repeats", type=int, default=None, help="timings per candidate (default: 9; quick: 3)"
    )
    _common(bandwidth)
    bandwidth.set_defaults(func=run, trains=True)

    fusion = which.add_parser(
        "fusion",
        help="LeNet inference with batch norms folded into conv/linear vs unfused",
        description="The tutorial's LeNet in evaluation mode against normlab.nn."
        "fuse_batch_norms of it (batch norms folded into the layers before them), normlab's "
        "and torch's batch norm, timed interleaved per batch size, as time ratios "
        "fused/unfused (below 1: fused is faster) with the largest logit difference.",
    )
    fusion.add_argument(
        "--batch-sizes", default=None, metavar="SIZES",
        help="comma-separated batch sizes (default: 1,64,1024; quick: 1,64)",
    )  # fmt: skip
    fusion.add_argument(
        "--repeats", type=int, default=None, help="timings per candidate (default: 9; quick: 3)"
    )
    _common(fusion)
    fusion.set_defaults(func=run, trains=True)
    return parser


def _common(
    parser: argparse.ArgumentParser,
    quick: str = "a few short repeats (smoke test, noisy numbers)",
) -> None:
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")


def _positive(name: str, value: int | None) -> None:
    from normlab.errors import UsageError

    if value is not None and value < 1:
        raise UsageError(f"--{name} must be at least 1, got {value}")


def _device(name: str) -> Any:
    import torch

    from normlab.errors import UsageError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return device


def _threads() -> str:
    import torch

    return f"{torch.get_num_threads()} torch thread(s) (normlab --threads N bench ...)"


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "layers":
        return _run_layers(args)
    if args.benchmark == "bandwidth":
        return _run_bandwidth(args)
    if args.benchmark == "fusion":
        return _run_fusion(args)
    return _run_train(args)


def _run_layers(args: argparse.Namespace) -> int:
    _positive("repeats", args.repeats)
    device = _device(args.device)
    from normlab.bench import layers, report
    from normlab.cli._lab import parse_int_list, parse_list

    families = layers.select_families(parse_list("--shapes", args.shapes))
    if args.quick:
        families = layers.quick(families)
    names = layers.select_layers(parse_list("--layers", args.layers))
    threads = parse_int_list("--thread-counts", args.thread_counts) or ()
    for count in threads:
        _positive("thread-counts", count)
    results_page = _results_page(args.write_results)  # checked before the long run
    timing: dict[str, Any] = {
        "repeats": args.repeats or (3 if args.quick else 9),
        "warmup": 1 if args.quick else 3,
        "target_seconds": 0.002 if args.quick else 0.04,
        "clock": args.clock,
    }
    results = layers.bench_layers(
        names,
        families,
        threads=threads,
        compiled=args.compile,
        progress=not args.json,
        device=device,
        **timing,
    )
    settings = {"shapes": [f.name for f in families], "layers": names, "compile": args.compile,
                "device": str(device), "quick": args.quick, **timing}  # fmt: skip
    if results_page is not None:
        label = (
            args.label or f"{datetime.date.today().isoformat()}: {', '.join(settings['shapes'])}"
        )
        section = report.layers_markdown(results, settings, label, note=args.note)
        report.write_section(results_page, label, section)
    if args.json:
        json.dump(report.layers_json(results, settings), sys.stdout, indent=1)
        print()
        return 0
    print(
        f"normlab / twin, forward+backward, {args.clock} time ratio median [min-max] over "
        f"{timing['repeats']} interleaved repeats (below 1: normlab is faster); "
        + (f"thread counts {', '.join(map(str, threads))}" if threads else _threads())
    )
    print(report.layers_table(results))
    print()
    print(report.layers_summary(results))
    return 0


def _results_page(path: str | None) -> Path | None:
    """``--write-results``' page; a folder or a missing parent folder is refused."""
    from normlab.errors import UsageError

    if path is None:
        return None
    page = Path(path)
    if page.is_dir():
        raise UsageError(f"--write-results names a folder, not a file: {page}")
    if not page.parent.is_dir():
        raise UsageError(f"--write-results: no folder {page.parent}; create it first")
    return page


def _run_train(args: argparse.Namespace) -> int:
    _positive("steps", args.steps)
    _positive("chunk", args.chunk)
    device = _device(args.device)
    from normlab.bench import report, train

    steps = args.steps or (40 if args.quick else 600)
    chunk = args.chunk or (10 if args.quick else 25)
    result = train.bench_train(
        steps=steps,
        chunk=chunk,
        device=str(device),
        data=args.data,
        data_dir=args.data_dir,
        seed=args.seed,
        progress=not args.json,
        compiled=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    if args.json:
        settings = {"steps": steps, "chunk": chunk, "device": str(device), "seed": args.seed,
                    "data": args.data, "compile": args.compile,
                    "cuda_graphs": args.cuda_graphs}  # fmt: skip
        json.dump(report.train_json(result, settings), sys.stdout, indent=1)
        print()
        return 0
    print(
        f"training the tutorial's LeNet, batch {train.BATCH_SIZE}, on {result.data}: "
        f"{result.steps} steps each, in chunks of {result.chunk} that take turns; {_threads()}"
    )
    print(report.train_table(result))
    return 0


def _run_bandwidth(args: argparse.Namespace) -> int:
    _positive("repeats", args.repeats)
    device = _device(args.device)
    from normlab.bench import bandwidth, report

    shape = bandwidth.check_shape(args.shape or bandwidth.default_shape(device))
    timing: dict[str, Any] = {
        "repeats": args.repeats or (3 if args.quick else 9),
        "warmup": 1 if args.quick else 3,
        "target_seconds": 0.002 if args.quick else 0.05,
    }
    result = bandwidth.bench_bandwidth(
        shape, dtype=args.dtype, device=device, compiled=args.compile, **timing
    )
    if args.json:
        settings = {"shape": list(shape), "dtype": args.dtype, "device": str(device),
                    "compile": args.compile, **timing}  # fmt: skip
        json.dump(report.bandwidth_json(result, settings), sys.stdout, indent=1)
        print()
        return 0
    peak = result.datasheet_gbps
    print(
        f"batch norm, training, {'x'.join(map(str, shape))} {args.dtype} on {device}: "
        f"bytes each pass must move / median time over {timing['repeats']} interleaved "
        f"repeats; copy = out.copy_(x), the ceiling measured here"
        + (f"; datasheet peak {peak:,.0f} GB/s" if peak else "")
        + f"; {_threads()}"
    )
    print(report.bandwidth_table(result))
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in report.bandwidth_ratios(result).items())
    print(f"\nnormlab / torch.nn time: {ratios} (below 1: normlab is faster)")
    return 0


def _run_fusion(args: argparse.Namespace) -> int:
    _positive("repeats", args.repeats)
    device = _device(args.device)
    from normlab.bench import fusion
    from normlab.cli._lab import parse_int_list

    sizes = parse_int_list("--batch-sizes", args.batch_sizes)
    sizes = sizes or (fusion.QUICK_BATCH_SIZES if args.quick else fusion.BATCH_SIZES)
    for size in sizes:
        _positive("batch-sizes", size)
    timing: dict[str, Any] = {
        "repeats": args.repeats or (3 if args.quick else 9),
        "warmup": 1 if args.quick else 3,
        "target_seconds": 0.002 if args.quick else 0.05,
    }
    result = fusion.bench_fusion(sizes, device=device, progress=not args.json, **timing)
    if args.json:
        settings = {"batch_sizes": list(sizes), "device": str(device), **timing}
        json.dump(fusion.fusion_json(result, settings), sys.stdout, indent=1)
        print()
        return 0
    print(
        f"LeNet inference (evaluation mode), fused / unfused in time, median [min-max] over "
        f"{timing['repeats']} interleaved repeats (below 1: fused is faster); {_threads()}"
    )
    print(fusion.fusion_table(result))
    return 0
