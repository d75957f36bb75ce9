"""The CPU kernels of an installed normlab: compiled on first use into a per-user cache
keyed by torch, sources and CPU; one build at a time (a file lock); nothing written into a
read-only install; without a compiler, one notice and the tensor code.

Most tests use a stand-in compiler (a shell script that logs its calls and writes empty
outputs): what is checked is where and how often the build runs, not the C++ (the kernel
tests check that). One test compiles for real (``slow``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from subprocess import PIPE

import pytest

from normlab.kernels.cpu import build

# Run in a fresh interpreter: make's library is made to look absent, so the cache is used.
WITHOUT_MAKES_LIBRARY = (
    "from pathlib import Path\n"
    "from normlab.kernels.cpu import build\n"
    "build.LIBRARY = Path('/nonexistent/normlab/_kernels.so')\n"
)


@pytest.fixture
def fake_compiler(tmp_path: Path) -> tuple[Path, Path]:
    """``(compiler, log)``: a script that appends a line to ``log`` per call, waits a
    little (so two builds would overlap), and writes an empty file where ``-o`` says."""
    log = tmp_path / "compiler.log"
    script = tmp_path / "bin" / "fake-g++"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            out=""
            while [ $# -gt 0 ]; do
              if [ "$1" = "-o" ]; then out="$2"; fi
              shift
            done
            echo "$out" >> {log}
            sleep 0.2
            : > "$out"
            """
        )
    )
    script.chmod(0o755)
    return script, log


@pytest.fixture
def no_makes_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """make's library absent, the cache in ``tmp_path/cache``; returns the cache root."""
    monkeypatch.setattr(build, "LIBRARY", tmp_path / "package" / "_kernels.so")
    monkeypatch.setenv("NORMLAB_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_noticed", set())
    return tmp_path / "cache"


def test_the_cache_key_follows_torch_sources_and_cpu(
    no_makes_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    library = build.cached_library()
    assert library.parent.parent == no_makes_library and library.name == "_kernels.so"
    assert library.parent.name.startswith(f"torch-{torch.__version__}-src-")
    assert library.parent.name.endswith(f"-cpu-{build.cpu_signature()}")
    sources = tmp_path / "sources"
    shutil.copytree(build.HERE, sources, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    monkeypatch.setattr(build, "HERE", sources)
    assert build.cached_library() == library  # the same sources, the same key
    (sources / "batch_norm.cpp").write_text("// edited\n", encoding="utf-8")
    assert build.cached_library() != library
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert "torch-9.9.9-src-" in build.cached_library().parent.name


def test_the_first_use_builds_into_the_cache_once(
    no_makes_library: Path, fake_compiler: tuple[Path, Path], monkeypatch, capsys
) -> None:
    compiler, log = fake_compiler
    monkeypatch.setenv("CXX", str(compiler))
    library = build.ensure_built()
    assert library == build.cached_library() and library.is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == len(build.sources()) + 1  # each source, then the link
    assert calls[-1].endswith("/_kernels.so")
    err = capsys.readouterr().err
    assert err == (
        "normlab: building the CPU kernels for this machine, once (about half a minute), "
        f"into {library.parent}\n"
    )
    assert build.ensure_built() == library  # found: no second build, no second notice
    assert len(log.read_text().splitlines()) == len(calls)
    assert capsys.readouterr().err == ""
    assert not build.LIBRARY.parent.exists()  # nothing written beside the sources


def test_two_processes_build_once(tmp_path: Path, fake_compiler: tuple[Path, Path]) -> None:
    """Started together, one builds while the other waits on the lock, then finds the
    library: the compiler runs for one build only."""
    compiler, log = fake_compiler
    env = {**os.environ, "CXX": str(compiler), "NORMLAB_KERNEL_CACHE": str(tmp_path / "c")}
    code = WITHOUT_MAKES_LIBRARY + "print(build.ensure_built())"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], env=env, text=True, stdout=PIPE, stderr=PIPE)
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outcomes
    (library,) = {out.strip() for out, _ in outcomes}
    assert Path(library).is_file()
    assert len(log.read_text().splitlines()) == len(build.sources()) + 1
    assert sum("building the CPU kernels" in err for _, err in outcomes) == 1


def test_a_read_only_install_builds_into_the_cache(
    no_makes_library: Path, tmp_path: Path, fake_compiler, monkeypatch, capsys
) -> None:
    """The package folder cannot be written (an installed site-packages): its sources are
    read and the library goes to the cache; nothing in the package changes."""
    package = tmp_path / "site-packages" / "cpu"
    shutil.copytree(build.HERE, package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    before = sorted(p.name for p in package.iterdir())
    for path in [package, *package.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    monkeypatch.setattr(build, "HERE", package)
    monkeypatch.setattr(build, "LIBRARY", package / "_kernels.so")
    monkeypatch.setenv("CXX", str(fake_compiler[0]))
    try:
        library = build.ensure_built()
    finally:
        package.chmod(0o755)
    assert library is not None and library.is_relative_to(no_makes_library)
    assert sorted(p.name for p in package.iterdir()) == before
    assert "building the CPU kernels" in capsys.readouterr().err


def test_an_unwritable_cache_is_one_notice_and_the_tensor_code(
    no_makes_library: Path, tmp_path: Path, fake_compiler, monkeypatch, capsys
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NORMLAB_KERNEL_CACHE", str(blocker / "kernels"))
    monkeypatch.setenv("CXX", str(fake_compiler[0]))
    assert build.ensure_built() is None
    err = capsys.readouterr().err
    assert err.startswith("normlab: cannot build the CPU kernels (") and err.count("\n") == 1
    assert err.endswith("; using the tensor code\n")


def test_without_a_compiler_one_notice_and_the_tensor_code(tmp_path: Path) -> None:
    """PATH without a compiler: one line says so, and normlab's layers run on the tensor
    code, equal to torch.nn's."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env |= {"PATH": str(empty), "NORMLAB_KERNEL_CACHE": str(tmp_path / "cache")}
    code = WITHOUT_MAKES_LIBRARY + textwrap.dedent(
        """\
        import torch
        from normlab import kernels, nn
        assert kernels.ops() is None and kernels.ops() is None  # asked twice, told once
        x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
        ours, theirs = nn.BatchNorm2d(3).double(), torch.nn.BatchNorm2d(3).double()
        print(torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-12))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr == (
        "normlab: no C++ compiler (g++) to build the CPU kernels; using the tensor code "
        "(install g++ or set CXX for the faster path)\n"
    )
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(build.compiler()) is None, reason="needs a C++ compiler")
def test_a_real_build_into_the_cache_loads(tmp_path: Path) -> None:
    """Compiles the sources for real (about half a minute) into an empty cache, loads the
    library in that process, and finds it again in the next without building."""
    env = {**os.environ, "NORMLAB_KERNEL_CACHE": str(tmp_path / "cache")}
    code = WITHOUT_MAKES_LIBRARY + textwrap.dedent(
        """\
        from normlab import kernels
        ops = kernels.ops()
        print(ops is not None and hasattr(ops, "batch_norm_forward"), build.find_library())
        """
    )
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        for _ in range(2)
    )
    assert first.returncode == 0, first.stderr
    loaded, library = first.stdout.split()
    assert loaded == "True" and Path(library).is_relative_to(tmp_path / "cache")
    assert "building the CPU kernels" in first.stderr
    assert second.stdout.split() == ["True", library] and second.stderr == ""


def test_the_build_command_prebuilds_into_the_cache(
    no_makes_library: Path, fake_compiler: tuple[Path, Path], monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CXX", str(fake_compiler[0]))
    assert build.main(["--cache"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"normlab kernels: {build.cached_library()}"
    )
    assert build.find_library() == build.cached_library()
    assert build.ensure_built() == build.cached_library()  # no notice: nothing to build
    assert capsys.readouterr().err == ""


def test_a_failed_build_is_one_notice_kept_in_a_log_and_not_retried(
    no_makes_library: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Sources this compiler rejects: its messages go to a log beside the library, not to
    the user's terminal; the next process does not compile again; --cache tries again."""
    failing = tmp_path / "failing-g++"
    failing.write_text("#!/bin/sh\necho \"$0\" >> " + str(tmp_path / "calls") + "\n"
                       "echo 'error: this compiler rejects everything' >&2\nexit 1\n")  # fmt: skip
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    assert build.ensure_built() is None
    log = build.cached_library().with_name(build.FAILURE_LOG)
    assert "this compiler rejects everything" in log.read_text()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("normlab: building the CPU kernels") and len(err) == 2
    assert err[1] == f"normlab: cannot build the CPU kernels (compiling the kernels failed " \
                     f"(exit 1); see {log}); using the tensor code"  # fmt: skip
    calls = len((tmp_path / "calls").read_text().splitlines())
    monkeypatch.setattr(build, "_noticed", set())  # as a new process
    assert build.ensure_built() is None
    assert len((tmp_path / "calls").read_text().splitlines()) == calls  # not compiled again
    assert capsys.readouterr().err == (
        f"normlab: the CPU kernels failed to build here (see {log}; `python -m "
        "normlab.kernels.cpu --cache` tries again); using the tensor code\n"
    )
    assert build.main(["--cache"]) == 2  # tries again (and fails again, said on stderr)
    assert len((tmp_path / "calls").read_text().splitlines()) > calls
    assert "this compiler rejects everything" in capsys.readouterr().err
