"""Starting several ranks: through torchrun's engine, or directly for tests and sweeps.

- :func:`torchrun_command` / :func:`launch_torchrun`: ``python -m torch.distributed.run
  --standalone --nproc-per-node N -m normlab <args>``, what ``normlab train
  --nproc-per-node N`` runs. torchrun's agent restarts nothing (``--max-restarts 0``) and
  stops every rank when one fails.
- :func:`spawn_ranks`: start ``world_size`` copies of a command with torchrun's environment
  variables on 127.0.0.1 and wait for them, with a deadline after which the survivors are
  killed. Unlike torchrun it lets each rank find out by itself that a peer died, which is
  what the failure tests check, and it returns each rank's exit code and output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from normlab.distributed.groups import free_port
from normlab.errors import UsageError


@dataclass(frozen=True)
class RankExit:
    """How one rank of :func:`spawn_ranks` ended.

    Attributes:
        rank: the rank.
        returncode: its exit status; None when it was killed at the deadline.
        output: its stdout and stderr, interleaved.
        seconds: wall time from the start of all ranks to this one's end.
    """

    rank: int
    returncode: int | None
    output: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        """True when the rank was still running at the deadline and was killed."""
        return self.returncode is None


def rank_environment(
    rank: int, world_size: int, port: int, host: str = "127.0.0.1"
) -> dict[str, str]:
    """The variables torchrun sets for one rank on a single machine."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "MASTER_ADDR": host,
        "MASTER_PORT": str(port),
    }


def spawn_ranks(
    argv: Sequence[str],
    world_size: int,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> list[RankExit]:
    """Run ``argv`` as ``world_size`` ranks on 127.0.0.1; wait at most ``timeout_s``.

    Each process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and a free
    ``MASTER_PORT`` (plus ``env``; ``OMP_NUM_THREADS`` defaults to 1 as under torchrun).
    Ranks still running at the deadline are killed and reported with ``returncode=None``.

    Args:
        argv: the command, e.g. ``[sys.executable, "-m", "normlab", "train", ...]``.
        world_size: number of ranks, at least 1.
        timeout_s: deadline for all ranks together.
        env: extra environment variables for every rank.
        cwd: working directory of the ranks.

    Returns:
        One :class:`RankExit` per rank, in rank order.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise UsageError(f"world_size must be a positive integer, got {world_size!r}")
    port = free_port()
    base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    base.update(env or {})
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="normlab-ranks-") as logs:
        files = [open(Path(logs) / f"rank{r}.log", "w+") for r in range(world_size)]  # noqa: SIM115
        procs = [
            subprocess.Popen(
                list(argv),
                env={**base, **rank_environment(r, world_size, port)},
                stdout=files[r],
                stderr=subprocess.STDOUT,
                cwd=cwd,
            )
            for r in range(world_size)
        ]
        ended: dict[int, float] = {}
        try:
            while len(ended) < world_size and time.monotonic() - start < timeout_s:
                for r, proc in enumerate(procs):
                    if r not in ended and proc.poll() is not None:
                        ended[r] = time.monotonic() - start
                time.sleep(0.05)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        results = []
        for r, (proc, file) in enumerate(zip(procs, files, strict=True)):
            file.seek(0)
            output = file.read()
            file.close()
            code = proc.returncode if r in ended else None
            results.append(RankExit(r, code, output, ended.get(r, time.monotonic() - start)))
    return results


def torchrun_args(nproc_per_node: int, module_args: Sequence[str]) -> list[str]:
    """torchrun's arguments to run ``normlab <module_args>`` as N ranks on this machine."""
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int):
        raise UsageError(f"--nproc-per-node must be a positive integer, got {nproc_per_node!r}")
    if nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be a positive integer, got {nproc_per_node!r}")
    return [
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "--max-restarts=0",
        "-m",
        "normlab",
        *module_args,
    ]


def torchrun_command(nproc_per_node: int, module_args: Sequence[str]) -> list[str]:
    """The shell equivalent: ``python -m torch.distributed.run --standalone ... -m normlab``."""
    args = torchrun_args(nproc_per_node, module_args)
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch_torchrun(
    nproc_per_node: int,
    module_args: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``normlab <module_args>`` as ``nproc_per_node`` ranks through torchrun's engine.

    torchrun's agent runs in a child process (``python -m normlab.distributed.launch``, see
    :func:`main`), so its signal handlers never touch the caller. The ranks' output goes to
    this process's stdout/stderr.

    Returns:
        0 when every rank succeeded, else the exit code of the rank that failed first
        (1 when it was killed by a signal).
    """
    module = "normlab.distributed.launch"
    command = [sys.executable, "-m", module, *torchrun_args(nproc_per_node, module_args)]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N ranks share the cores
    return subprocess.call(command, env=full_env)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m normlab.distributed.launch <torchrun args>``: torchrun, with a one-line
    failure summary.

    torchrun's own entry point prints a traceback when a rank fails; this prints which rank
    failed first and returns its exit code (2 for a usage error, 1 for divergence).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        code = failure.exitcode
        how = f"exit code {code}" if code > 0 else f"signal {-code}"
        print(
            f"normlab: rank {rank} of {args.nproc_per_node} failed first ({how}); "
            "its message is above",
            file=sys.stderr,
        )
        return code if 0 < code < 128 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
