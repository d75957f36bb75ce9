"""Compile normlab's CPU kernels (``*.cpp`` here) into one shared library, with g++.

Two places hold a library, both linked against the installed torch (headers,
``libtorch``, ``libc10``, and the OpenMP runtime torch ships):

- ``python -m normlab.kernels.cpu`` (``make`` runs it) writes ``_kernels.so`` next to the
  sources, rebuilt only when a source is newer than it (:func:`build`);
- an installed normlab ships only the sources: on first use :func:`ensure_built` compiles
  them into a per-user cache (``$NORMLAB_KERNEL_CACHE``, else
  ``$XDG_CACHE_HOME/normlab/kernels`` or ``~/.cache/normlab/kernels``), in a folder keyed by
  the torch version, a hash of the sources and the CPU (the code is built with
  ``-march=native``), so a read-only install works and an upgrade or another machine gets
  its own build. A file lock makes a second process wait for the first's build instead of
  compiling too. It says so in one line on stderr; without a compiler (or a writable
  cache) it says that in one line instead, and normlab keeps to its pure-tensor code
  (:mod:`normlab.kernels`). A build that fails leaves the compiler's messages in
  ``build-failed.log`` in that folder and is not tried again by every process
  (``python -m normlab.kernels.cpu --cache`` tries again).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "_kernels.so"  # make's build, next to the sources
LIBRARY_NAME = LIBRARY.name
FAILURE_LOG = "build-failed.log"  # beside a cached library whose build failed: not retried
_noticed: set[str] = set()  # the notices given in this process (each once)


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


def _run(commands: list[list[str]], log: Path | None = None) -> None:
    """Run the commands at once (one per source: the cores compile in parallel); the
    compiler's messages of a failure go to ``log`` (appended), else to stderr."""
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    failed = None
    for process in running:
        _, errors = process.communicate()
        if process.returncode != 0:
            if log is None:
                sys.stderr.write(errors)
            else:
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(errors)
            failed = process.returncode
    if failed is not None:
        where = "above" if log is None else str(log)
        raise OSError(f"compiling the kernels failed (exit {failed}); see {where}")


def compiler() -> str:
    """The C++ compiler to use: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX", "g++")


def build(*, force: bool = False, quiet: bool = False) -> Path:
    """Compile the kernels next to the sources if stale (or ``force``); return the
    library's path."""
    if not force and not is_stale():
        return LIBRARY
    return compile_library(LIBRARY, quiet=quiet)


def compile_library(library: Path, *, quiet: bool = False, log: Path | None = None) -> Path:
    """Compile every source and link them into ``library``, which appears whole or not at
    all (built beside it, then renamed). Returns ``library``.

    Raises:
        OSError: no compiler, or compiling failed (the compiler's messages go to ``log``,
            else to stderr).
    """
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise OSError(f"no C++ compiler {cxx!r}; install g++ (or set CXX) to build kernels")
    compile_flags, link_flags = _torch_flags()
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        objects = [Path(scratch) / f"{source.stem}.o" for source in sources()]
        if not quiet:
            print(f"normlab: compiling {len(objects)} kernel sources with {cxx}", flush=True)
        _run(
            [
                [cxx, *compile_flags, "-c", str(source), "-o", str(obj)]
                for source, obj in zip(sources(), objects, strict=True)
            ],
            log,
        )
        partial = Path(scratch) / library.name
        _run([[cxx, *map(str, objects), *link_flags, "-o", str(partial)]], log)
        os.replace(partial, library)  # atomic: a half-written library is never loaded
    return library


# --------------------------------------------------------------------------- the user cache
def cache_root() -> Path:
    """``$NORMLAB_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/normlab/kernels`` (or
    ``~/.cache/normlab/kernels``)."""
    explicit = os.environ.get("NORMLAB_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "normlab" / "kernels"


def source_digest() -> str:
    """sha256 over the sources' and headers' names and contents."""
    digest = hashlib.sha256()
    for path in sorted([*sources(), *HERE.glob("*.h")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_signature() -> str:
    """A short hash of what ``-march=native`` compiles for: the architecture and, on Linux,
    the CPU's model name and feature flags."""
    facts = [platform.machine(), platform.processor()]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.partition(":")[0].strip()
            if key in ("model name", "flags", "Features", "CPU part"):
                facts.append(line)
            if not line.strip() and len(facts) > 2:  # the first processor is enough
                break
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:12]


def cached_library() -> Path:
    """Where :func:`ensure_built` keeps the library for this torch, these sources and this
    CPU: ``<cache_root>/torch-<version>-src-<hash>-cpu-<hash>/_kernels.so``."""
    import torch

    key = f"torch-{torch.__version__}-src-{source_digest()[:16]}-cpu-{cpu_signature()}"
    return cache_root() / key.replace(os.sep, "_") / LIBRARY_NAME


def find_library() -> Path | None:
    """The library to load without building: make's when it is up to date, else the
    cache's when built; None when neither."""
    if LIBRARY.is_file() and not is_stale():
        return LIBRARY
    cached = cached_library()
    return cached if cached.is_file() else None


def ensure_built() -> Path | None:
    """The library to load, compiled into the user cache on first use; None (after a
    one-line notice on stderr) when it cannot be built here."""
    found = find_library()
    if found is not None:
        return found
    library = cached_library()
    failure = library.with_name(FAILURE_LOG)
    if failure.is_file():  # these sources failed to build here before: do not retry
        _failed_before(failure)
        return None
    if shutil.which(compiler()) is None:
        notice(
            f"normlab: no C++ compiler ({compiler()}) to build the CPU kernels; using the "
            "tensor code (install g++ or set CXX for the faster path)"
        )
        return None
    try:
        with _build_lock(library.parent):
            if not library.is_file() and not failure.is_file():  # else done while we waited
                notice(
                    "normlab: building the CPU kernels for this machine, once (about half a "
                    f"minute), into {library.parent}"
                )
                compile_library(library, quiet=True, log=failure)
    except OSError as error:  # an unwritable cache, a failed compile: the tensor code runs
        notice(f"normlab: cannot build the CPU kernels ({error}); using the tensor code")
        return None
    if not library.is_file():  # another process's build failed while this one waited
        _failed_before(failure)
        return None
    return library


def _failed_before(failure: Path) -> None:
    notice(
        f"normlab: the CPU kernels failed to build here (see {failure}; "
        "`python -m normlab.kernels.cpu --cache` tries again); using the tensor code"
    )


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (created with ``folder``) while building."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def notice(message: str) -> None:
    """Print ``message`` on stderr, once per process."""
    if message not in _noticed:
        _noticed.add(message)
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m normlab.kernels.cpu"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="build into the per-user cache an installed normlab loads from (default: "
        "beside the sources, as make does)",
    )
    args = parser.parse_args(argv)
    try:
        if args.cache:
            path = cached_library()
            with _build_lock(path.parent):
                path.with_name(FAILURE_LOG).unlink(missing_ok=True)  # an earlier failure
                compile_library(path)
        else:
            path = build(force=args.force)
    except OSError as error:
        print(f"normlab kernels: {error}", file=sys.stderr)
        return 2
    print(f"normlab kernels: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
