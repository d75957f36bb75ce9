"""``normlab info``: what a bug report needs, as an aligned table or ``--json``.

Versions (normlab, torch, Python), the CPU capability torch dispatches to and its thread
count, which code path each device takes (normlab's C++ kernels on CPU, Triton on CUDA,
or the pure-tensor code), and where each dataset was found and whether it verifies.
:func:`gather` collects the facts into an :class:`Info`; :func:`format_table` and
:func:`to_json` present them. Always exits 0: missing data or kernels are facts to report.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from normlab.cli.data import DATASET_NAMES
from normlab.errors import UsageError


@dataclass(frozen=True)
class KernelsInfo:
    """normlab's fast paths: the CPU library and Triton, and which path each device takes."""

    library: str  # path of the compiled CPU kernels: make's, else the user cache's
    built: bool  # the library file exists
    stale: bool  # older than its sources (then it is not loaded)
    enabled: bool  # NORMLAB_KERNELS is not "0"
    loaded: bool  # normlab.kernels.ops() returned the operators
    triton: str | None  # Triton's version, None when not installed
    cuda: bool  # torch.cuda.is_available()
    cuda_version: str | None  # the CUDA torch was built with, None for CPU builds
    gpu: str | None  # name of CUDA device 0, None without CUDA
    cpu_path: str  # "C++ kernels" or "tensor code (<why>)"
    cuda_path: str  # "Triton kernels", "tensor code (<why>)" or "no CUDA device"


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset was found (the first complete folder) and whether its files verify."""

    name: str
    folder: str | None  # None: not found
    origin: str | None  # "--data-dir", "$NORMLAB_DATA", "Debian package", ...
    verified: bool | None  # None: not found, so nothing to verify
    problems: list[str]  # one line each (a failed file, or why the search failed)


@dataclass(frozen=True)
class Info:
    normlab: str
    torch: str
    python: str
    platform: str
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", ...
    threads: int  # torch.get_num_threads()
    kernels: KernelsInfo
    datasets: list[DatasetInfo]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="versions, code paths and datasets, for a bug report",
        description="Print what a bug report needs: versions, CPU capability, threads, "
        "which kernels each device uses, and the datasets found (verified).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--data-dir", type=Path, help="look for the datasets only in this folder")
    parser.set_defaults(func=run)
    return parser


REBUILD = "run `make kernels` in a checkout, else `python -m normlab.kernels.cpu --cache`"


def _cpu_path(built: bool, stale: bool, enabled: bool, loaded: bool) -> str:
    if loaded:
        return "C++ kernels"
    if not enabled:
        why = "NORMLAB_KERNELS=0"
    elif not built:
        why = f"kernels not built; {REBUILD}"
    elif stale:
        why = f"kernels older than their sources; {REBUILD}"
    else:
        why = f"kernels failed to load (built for another torch?); {REBUILD}"
    return f"tensor code ({why})"


def _cuda_path(cuda: bool, triton: str | None, enabled: bool) -> str:
    if not cuda:
        return "no CUDA device"
    if not enabled:
        return "tensor code (NORMLAB_KERNELS=0)"
    return "Triton kernels" if triton is not None else "tensor code (Triton not installed)"


def _triton_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


def gather_kernels() -> KernelsInfo:
    """The state of normlab's kernels in this process (loads the CPU library if it can)."""
    import os
    import warnings

    import torch

    from normlab import kernels
    from normlab.kernels.cpu import build

    enabled = os.environ.get("NORMLAB_KERNELS", "1") != "0"
    with warnings.catch_warnings():  # a stale library is reported in cpu_path instead
        warnings.simplefilter("ignore")
        loaded = kernels.ops() is not None  # may build them into the user cache, once
    library = build.find_library() or build.LIBRARY  # make's, else the user cache's
    built = library.is_file()
    stale = library == build.LIBRARY and built and build.is_stale()
    triton = _triton_version()
    cuda = torch.cuda.is_available()
    return KernelsInfo(
        library=str(library),
        built=built,
        stale=stale,
        enabled=enabled,
        loaded=loaded,
        triton=triton,
        cuda=cuda,
        cuda_version=torch.version.cuda,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        cpu_path=_cpu_path(built, stale, enabled, loaded),
        cuda_path=_cuda_path(cuda, triton, enabled),
    )


def gather_dataset(name: str, data_dir: Path | None = None) -> DatasetInfo:
    """Search for ``name`` and verify what is found, as ``normlab data status`` does."""
    from normlab.data import DataLocationError, dataset_status

    try:
        status = dataset_status(name, data_dir)
    except DataLocationError as error:  # $NORMLAB_DATA is not a folder: a fact to report
        return DatasetInfo(name, None, None, None, [str(error)])
    if status.found is None:
        return DatasetInfo(name, None, None, None, [])
    folder, origin = str(status.found.folder), status.found.origin
    return DatasetInfo(name, folder, origin, status.verified, status.problems)


def gather(data_dir: Path | None = None) -> Info:
    """Every fact ``normlab info`` reports, for this process and machine."""
    import platform
    import sys

    import torch

    from normlab import __version__

    return Info(
        normlab=__version__,
        torch=torch.__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(),
        kernels=gather_kernels(),
        datasets=[gather_dataset(name, data_dir) for name in DATASET_NAMES],
    )


def to_json(info: Info) -> str:
    return json.dumps(asdict(info), indent=2)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _dataset_line(dataset: DatasetInfo) -> str:
    if dataset.folder is None:
        return "not found" + (f": {dataset.problems[0]}" if dataset.problems else "")
    verdict = "verified" if dataset.verified else f"{len(dataset.problems)} file(s) FAILED"
    return f"{dataset.folder} ({dataset.origin}), {verdict}"


def rows(info: Info) -> list[tuple[str, str]]:
    """(label, value) pairs in the order printed."""
    k = info.kernels
    library = f"{k.library} (built: {_yes_no(k.built)}, loaded: {_yes_no(k.loaded)})"
    table = [
        ("normlab", info.normlab),
        ("torch", info.torch),
        ("python", info.python),
        ("platform", info.platform),
        ("cpu capability", info.cpu_capability),
        ("torch threads", str(info.threads)),
        ("cpu kernels", library),
        ("cpu path", k.cpu_path),
        ("triton", k.triton or "not installed"),
        ("cuda", f"{k.gpu} (CUDA {k.cuda_version})" if k.cuda else "not available"),
        ("cuda path", k.cuda_path),
    ]
    table += [(f"data {dataset.name}", _dataset_line(dataset)) for dataset in info.datasets]
    for dataset in info.datasets:
        if dataset.folder is not None:
            table += [("  problem", problem) for problem in dataset.problems]
    return table


def format_table(info: Info) -> str:
    pairs = rows(info)
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in pairs)


def run(args: argparse.Namespace) -> int:
    if args.data_dir is not None and not args.data_dir.expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder; give an existing one")
    info = gather(args.data_dir)
    print(to_json(info) if args.json else format_table(info))
    return 0
