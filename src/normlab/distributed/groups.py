"""Process groups from torchrun's environment, bounded waits, and the collectives normlab uses.

``torchrun`` (``torch.distributed.run``) starts one process per rank and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads
them and joins the group: gloo for CPU tensors, NCCL for CUDA ones. Every wait is bounded
by a timeout (:data:`DEFAULT_TIMEOUT_S`, or ``$NORMLAB_DIST_TIMEOUT`` seconds): a rank
that dies or stops answering makes the others raise :class:`RankFailure`, a one-line
``ConnectionError`` naming the rank, the collective and the way out, instead of hanging.

Outside torchrun (no ``WORLD_SIZE``) :func:`setup` returns a one-process context and
nothing here communicates.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from normlab.errors import UsageError

DEFAULT_TIMEOUT_S = 120.0  # a live peer answers in well under a second; a dead one never
TIMEOUT_ENV = "NORMLAB_DIST_TIMEOUT"

CPU = torch.device("cpu")
_timeout_s: float = DEFAULT_TIMEOUT_S  # the timeout of the group set up by this process


class RankFailure(ConnectionError):
    """Another rank died, was killed, or did not answer a collective in time."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group.

    Attributes:
        rank: this process's rank in ``0 .. world_size - 1`` (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine; picks the GPU with NCCL.
        backend: ``"gloo"``, ``"nccl"``, or ``None`` when not distributed.
        device: the device this rank computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = CPU

    @property
    def distributed(self) -> bool:
        """True when there are several ranks to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the one that writes files and prints."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def env_ranks() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None outside it.

    Raises:
        UsageError: malformed or inconsistent variables.
    """
    world_size = _env_int("WORLD_SIZE")
    if world_size is None:
        return None
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")
    rank = 0 if rank is None else rank
    local_rank = rank if local_rank is None else local_rank
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise UsageError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}; launch with torchrun or normlab train --nproc-per-node"
        )
    return rank, world_size, local_rank


def timeout_seconds(timeout_s: float | None = None) -> float:
    """The timeout to use: the argument, else ``$NORMLAB_DIST_TIMEOUT``, else the default."""
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw:
            try:
                timeout_s = float(raw)
            except ValueError:
                raise UsageError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
        else:
            timeout_s = DEFAULT_TIMEOUT_S
    if not timeout_s > 0:
        raise UsageError(f"the distributed timeout must be a positive number, got {timeout_s!r}")
    return float(timeout_s)


def _pick_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def setup(
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Uses ``init_process_group(backend, init_method="env://", timeout=...)`` then a barrier
    (gloo: ``monitored_barrier``, which names the ranks that did not arrive). Idempotent:
    an already initialised group is reused.

    Args:
        device: ``"cpu"``, ``"cuda"`` (rank r uses ``cuda:LOCAL_RANK``) or None (cuda when
            available with NCCL, else cpu).
        backend: ``"gloo"`` or ``"nccl"``; default: NCCL for CUDA, gloo for CPU.
        timeout_s: bound on every wait; default :func:`timeout_seconds`.

    Returns:
        The :class:`DistContext`; a one-process one when ``WORLD_SIZE`` is not set.

    Raises:
        UsageError: bad environment or backend. RankFailure: the group could not form.
    """
    global _timeout_s
    ranks = env_ranks()
    wanted = torch.device(device) if device is not None else None
    if ranks is None:
        return DistContext(device=wanted or torch.device("cpu"))
    rank, world_size, local_rank = ranks
    if wanted is None:
        cuda = torch.cuda.is_available() and (backend in (None, "nccl"))
        wanted = torch.device("cuda") if cuda else torch.device("cpu")
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available; use cpu")
        wanted = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(wanted)
    backend = backend or _pick_backend(wanted)
    if backend not in ("gloo", "nccl"):
        raise UsageError(f"unknown distributed backend {backend!r}; use gloo or nccl")
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed; install a build with it")
    _timeout_s = timeout_seconds(timeout_s)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise UsageError(f"{var} is not set; launch with torchrun, which sets it")
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        with translate_failures(f"joining the process group at {where}", rank, world_size):
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=_timeout_s),
            )
    context = DistContext(rank, world_size, local_rank, dist.get_backend(), wanted)
    barrier(context, "the start-up barrier")
    return context


def teardown() -> None:
    """Leave the process group (if any); safe to call twice."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> Iterator[DistContext]:
    """``with process_group() as ctx:`` = :func:`setup`, then :func:`teardown` on the way out."""
    context = setup(device, backend, timeout_s)
    try:
        yield context
    finally:
        if context.distributed:
            teardown()


@contextmanager
def translate_failures(what: str, rank: int | None = None, world_size: int | None = None):
    """Turn a collective's ``RuntimeError`` into a one-line :class:`RankFailure`.

    Gloo reports a dead peer as "Connection closed by peer" at once and a silent one as
    "Timed out waiting ...ms" after the group's timeout; both become::

        rank 0 of 2: <what> failed: <gloo's first line>; another rank probably crashed or
        stopped answering (timeout 120 s): look at its output
    """
    try:
        yield
    except RankFailure:
        raise
    except RuntimeError as error:  # DistBackendError, DistStoreError, gloo/NCCL errors
        if rank is None and dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        who = f"rank {rank} of {world_size}" if rank is not None else "this rank"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[.../pair.cc:537] " prefix
        first = first.split(" GLHF")[0].rstrip()
        raise RankFailure(
            f"{who}: {what} failed: {first}; another rank probably crashed or stopped "
            f"answering (timeout {_timeout_s:g} s): look at its output"
        ) from error


def barrier(context: DistContext, what: str = "a barrier") -> None:
    """Wait for every rank, at most the timeout; gloo names the ranks that did not come."""
    if not context.distributed:
        return
    with translate_failures(what, context.rank, context.world_size):
        if context.backend == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=_timeout_s), wait_all_ranks=True)
        elif context.device.type == "cuda":
            dist.barrier(device_ids=[context.device.index or 0])
        else:
            dist.barrier()


def group_size(group: Any | None = None) -> int:
    """Number of ranks in ``group`` (default: the world); 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def resolve_group(group: Any | None) -> Any | None:
    """``group``, or the world group when None; None when torch.distributed is not set up."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return group if group is not None else dist.group.WORLD


def all_gather_stacked(tensor: Tensor, group: Any, what: str = "all_gather") -> Tensor:
    """Every rank's ``tensor`` stacked in rank order: one ``all_gather``.

    Shape:
        ``(*S)`` on each of P ranks -> ``(P, *S)`` on every rank.
    """
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    with translate_failures(what):
        dist.all_gather(parts, tensor, group=group)
    return torch.stack(parts)


def all_reduce_sum(tensor: Tensor, group: Any, what: str = "all_reduce") -> Tensor:
    """The elementwise sum of ``tensor`` over the ranks of ``group`` (a new tensor)."""
    total = tensor.clone().contiguous()
    with translate_failures(what):
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def sum_across_ranks(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sums of Python numbers over all ranks (float64, one all_reduce); identity alone.

    Reduce *sums and counts*, then divide: ``loss = sum_loss / count`` is the global mean
    even when ranks hold different numbers of examples.

    Example:
        >>> loss_sum, correct, seen = sum_across_ranks([loss_sum, correct, seen])
    """
    if group_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    return [float(v) for v in all_reduce_sum(tensor, None, "reducing metrics").tolist()]


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` on every rank (pickled); identity when alone."""
    if group_size() == 1:
        return value
    box = [value]
    with translate_failures("broadcasting from rank 0"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


class DataParallel:
    """What :func:`normlab.train.engine.fit` needs to train on several processes.

    ``wrap(model)`` puts the model in ``DistributedDataParallel`` (gradients averaged over
    the ranks in backward; with NCCL on this rank's GPU). ``reduce_step(loss, correct,
    size)`` all-reduces ``[loss * size, correct, size]`` (float64, one small collective per
    step) and returns the global batch's mean loss, correct count and size: every rank
    then records the same numbers, decides divergence at the same step, and rank 0's
    checkpoint is every rank's.

    With equal per-rank batches, DDP's averaged gradient is the gradient of the mean loss
    over the global batch, so a step on P ranks x B examples equals one process's step on
    the P x B examples (exactly, with ``sync_bn``; without it each rank's batch norm uses
    its own B examples' statistics).

    Args:
        context: this process's :class:`DistContext` (from :func:`setup`).
    """

    def __init__(self, context: DistContext) -> None:
        if not context.distributed:
            raise UsageError("DataParallel needs several processes; launch with torchrun")
        self.context = context

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)``: parameters and buffers broadcast from rank 0."""
        from torch.nn.parallel import DistributedDataParallel

        device = self.context.device
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        rank, world_size = self.context.rank, self.context.world_size
        with translate_failures("wrapping the model in DDP", rank, world_size):
            return DistributedDataParallel(model, device_ids=ids)

    def reduce_step(self, loss: Tensor, correct: Tensor, size: int) -> tuple[Tensor, Tensor, int]:
        """The global batch's ``(mean loss, correct count, size)`` from this rank's."""
        packed = torch.stack(
            [loss.detach().double() * size, correct.double(), loss.new_tensor(size).double()]
        )
        total = all_reduce_sum(packed, None, "reducing the step's loss")
        count = int(total[2])
        return (total[0] / count).to(loss.dtype), total[1].round().to(correct.dtype), count


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
