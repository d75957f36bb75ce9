"""Compile normlab's CPU kernels (``*.cpp`` here) into one shared library, with g++.

``python -m normlab.kernels.cpu`` (``make`` runs it) writes ``_kernels.so`` next to the
sources. It links against the installed torch (headers, ``libtorch``, ``libc10``, and the
OpenMP runtime torch ships) and rebuilds only when a source is newer than the library.
Without a compiler the build fails with a one-line message and normlab keeps using its
pure-tensor code (:mod:`normlab.kernels`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "_kernels.so"


def sources() -> list[Path]:
    return sorted(HERE.glob("*.cpp"))


def is_stale() -> bool:
    """True when the library is missing or older than a source or header."""
    if not LIBRARY.is_file():
        return True
    built = LIBRARY.stat().st_mtime
    return any(f.stat().st_mtime > built for f in [*sources(), *HERE.glob("*.h")])


def _torch_flags() -> tuple[list[str], list[str]]:
    """``(compile flags, link flags)`` for the installed torch."""
    import torch
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    compile_flags = [
        "-O3",
        "-std=c++20",  # as torch is built
        "-fPIC",
        "-fopenmp",  # at::parallel_for and `omp simd` loops; torch's own libgomp at run time
        "-march=native",  # built where it runs (make builds it on each machine)
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *[f"-I{path}" for path in cpp_extension.include_paths()],
    ]
    link_flags = [
        "-shared",
        "-fopenmp",
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-l:libgomp.so.1",
    ]
    return compile_flags, link_flags


def _run(commands: list[list[str]]) -> None:
    """Run the commands at once (one per source: the cores compile in parallel)."""
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    failed = None
    for process in running:
        _, errors = process.communicate()
        if process.returncode != 0:
            sys.stderr.write(errors)
            failed = process.returncode
    if failed is not None:
        raise OSError(f"compiling the kernels failed (exit {failed}); see above")


def build(*, force: bool = False, quiet: bool = False) -> Path:
    """Compile the kernels if stale (or ``force``); return the library's path."""
    if not force and not is_stale():
        return LIBRARY
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise OSError(f"no C++ compiler {compiler!r}; install g++ (or set CXX) to build kernels")
    compile_flags, link_flags = _torch_flags()
    with tempfile.TemporaryDirectory(dir=HERE) as scratch:
        objects = [Path(scratch) / f"{source.stem}.o" for source in sources()]
        if not quiet:
            print(f"normlab: compiling {len(objects)} kernel sources with {compiler}", flush=True)
        _run(
            [
                [compiler, *compile_flags, "-c", str(source), "-o", str(obj)]
                for source, obj in zip(sources(), objects, strict=True)
            ]
        )
        partial = Path(scratch) / LIBRARY.name
        _run([[compiler, *map(str, objects), *link_flags, "-o", str(partial)]])
        os.replace(partial, LIBRARY)  # atomic: a half-written library is never loaded
    return LIBRARY


def main(argv: list[str] | None = None) -> int:
    prog = "python -m normlab.kernels.cpu"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force)
    except OSError as error:
        print(f"normlab kernels: {error}", file=sys.stderr)
        return 2
    print(f"normlab kernels: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
