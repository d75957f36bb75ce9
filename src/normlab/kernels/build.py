"""Compile normlab's CPU kernels (``*.cpp`` here) into one shared library, with g++.

``python -m normlab.kernels.build`` (``make`` runs it) writes ``_kernels.so`` next to the
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
    """True when the library is missing or older than a source file."""
    if not LIBRARY.is_file():
        return True
    built = LIBRARY.stat().st_mtime
    return any(source.stat().st_mtime > built for source in sources())


def compile_command(output: Path) -> list[str]:
    """The g++ command line for the installed torch."""
    import torch
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        os.environ.get("CXX", "g++"),
        "-O3",
        "-std=c++20",  # as torch is built,
        "-shared",
        "-fPIC",
        "-fopenmp",
        "-march=native",  # built where it runs (make builds it on each machine)
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *[f"-I{path}" for path in cpp_extension.include_paths()],
        *[str(source) for source in sources()],
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-l:libgomp.so.1",
        "-o",
        str(output),
    ]


def build(*, force: bool = False, quiet: bool = False) -> Path:
    """Compile the kernels if stale (or ``force``); return the library's path."""
    if not force and not is_stale():
        return LIBRARY
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise OSError(f"no C++ compiler {compiler!r}; install g++ (or set CXX) to build kernels")
    with tempfile.TemporaryDirectory(dir=HERE) as scratch:
        partial = Path(scratch) / LIBRARY.name
        command = compile_command(partial)
        if not quiet:
            print(f"normlab: compiling {len(sources())} kernel sources with {compiler}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise OSError(f"compiling the kernels failed (exit {done.returncode}); see above")
        os.replace(partial, LIBRARY)  # atomic: a half-written library is never loaded
    return LIBRARY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normlab.kernels.build", description=__doc__)
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
