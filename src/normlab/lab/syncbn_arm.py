"""The SyncBN arm of the batch-size sweep: P processes share each batch, with or without sync.

At sweep batch size ``B`` (the *global* batch, the learning rate's ``B``) the arm trains
with DistributedDataParallel on ``P`` processes of ``B / P`` examples each:

- ``syncbn``: batch norm statistics over all ``P`` processes (``normlab.nn.SyncBatchNorm``)
  -- every layer sees the ``B`` examples a single process at batch ``B`` would see;
- ``localbn``: each process's batch norm sees only its own ``B / P`` examples, as plain
  DDP does -- the gradient is the ``B``-batch's, the statistics are the small batch's.

So at the same ``B``, ``syncbn`` should track the one-process ``batch`` arm and ``localbn``
the ``batch`` arm at ``B / P``: small per-process batches hurt batch norm unless it is
synchronised (Wu & He 2018, section 2; the reason torch ships SyncBatchNorm).

Each call starts ``P`` fresh processes on 127.0.0.1 (gloo on CPU, NCCL with
``device="cuda"``) with
:func:`normlab.distributed.launch.spawn_ranks`; the data travel in a temporary
file, rank 0 writes the record. ``python -m normlab.lab.syncbn_arm JOB_DIR`` is the rank's side.

Example::

    >>> from normlab.lab.syncbn_arm import register_syncbn_arms
    >>> register_syncbn_arms()        # "syncbn" and "localbn" join BatchSizeSweepConfig.arms
    >>> run_experiment(BATCH_SIZE_SWEEP, BatchSizeSweepConfig(arms=("batch", "syncbn", "localbn")))
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from normlab.distributed.groups import RankFailure
from normlab.errors import UsageError
from normlab.train.config import TrainConfig

PROCESSES = 2  # processes per arm run: the smallest number that shows the effect
ARMS = {"syncbn": True, "localbn": False}  # arm name -> synchronise batch norm
DEFAULT_TIMEOUT_S = 3600.0  # one arm run, all ranks: far above any run of the sweep


def train_on_ranks(
    config: TrainConfig,
    data: Any,
    *,
    batch_stats_size: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Train ``build_model(config)`` on ``config.world_size`` processes; rank 0's record.

    Every rank builds the same model, takes its ``DistributedSampler`` shard of each
    epoch (``config.batch_size`` examples per step and process), and DDP averages the
    gradients; ``config.sync_bn`` decides whether batch norm synchronises.

    Args:
        config: the run; ``world_size >= 2``.
        data: a :class:`normlab.data.Dataset` (already cut to its subsets).
        batch_stats_size: if given, also measure the test accuracy with the statistics of
            test batches of this size (``batch_stats_accuracy``).
        timeout_s: deadline for the whole run; ranks still running are killed.

    Returns:
        :func:`normlab.lab.common.history_record` of the run (global per-step
        losses, per-epoch metrics, ``final`` or None when it diverged) plus
        ``batch_stats_accuracy`` (None unless asked for and finished).

    Raises:
        RankFailure: a rank failed or the deadline passed (with its last output line).
    """
    from normlab.distributed.launch import spawn_ranks

    config.validate()
    if config.world_size < 2:
        raise UsageError(f"train_on_ranks needs world_size >= 2, got {config.world_size}")
    with tempfile.TemporaryDirectory(prefix="normlab-arm-") as job:
        torch.save(
            {
                "config": config.to_dict(),
                "name": data.name,
                "train_images": data.train_images.cpu(),
                "train_labels": data.train_labels.cpu(),
                "test_images": data.test_images.cpu(),
                "test_labels": data.test_labels.cpu(),
                "classes": list(data.classes),
                "batch_stats_size": batch_stats_size,
            },
            Path(job) / "job.pt",
        )
        exits = spawn_ranks(
            [sys.executable, "-m", "normlab.lab.syncbn_arm", job],
            config.world_size,
            timeout_s=timeout_s,
        )
        for done in exits:
            if done.returncode != 0:
                lines = done.output.strip().splitlines() or ["(no output)"]
                what = "did not finish in time" if done.timed_out else "failed"
                raise RankFailure(f"rank {done.rank} of the arm run {what}: {lines[-1]}")
        result: dict[str, Any] = json.loads((Path(job) / "result.json").read_text())
        return result


def run_syncbn_arm(
    config: Any,
    data: Any,
    batch_size: int,
    seed: int,
    *,
    sync: bool,
    processes: int = PROCESSES,
) -> dict[str, Any]:
    """One cell of the batch-size sweep: global batch ``batch_size`` over ``processes``.

    The :data:`~normlab.lab.experiments.sweep_batch_size.BatchSizeArm` signature, plus
    ``sync`` and ``processes`` (bind them with ``functools.partial``; :func:`register_syncbn_arms`
    does). The learning rate is ``config.lr_for(batch_size)``, as the one-process arms at
    the same ``batch_size``.

    Returns:
        The record of :func:`train_on_ranks` plus ``processes``, ``per_process_batch`` and
        ``sync``. ``batch_stats_accuracy`` uses test batches of the size each batch norm
        saw in training (``batch_size`` with sync, ``batch_size / processes`` without). A
        combination that cannot train -- ``batch_size`` not a multiple of ``processes``,
        or one example per process without sync -- gives ``final = None`` and an
        ``unsupported`` reason.
    """
    from normlab.lab.common import train_config

    per_process, rest = divmod(batch_size, processes)
    reason = None
    if rest or per_process < 1:
        reason = f"batch {batch_size} does not split over {processes} processes"
    elif per_process < 2 and not sync:
        reason = f"{per_process} example per process: batch norm needs 2 without sync"
    if reason is not None:
        return _unsupported(reason, processes, per_process, sync)
    train = train_config(
        config,
        norm="batch",
        batch_size=per_process,
        lr=config.lr_for(batch_size),
        seed=seed,
        world_size=processes,
        sync_bn=sync,
    )
    record = train_on_ranks(train, data, batch_stats_size=batch_size if sync else per_process)
    record.update(processes=processes, per_process_batch=per_process, sync=sync)
    return record


def register_syncbn_arms(processes: int = PROCESSES) -> list[str]:
    """Add the ``syncbn`` and ``localbn`` arms to the batch-size sweep; their names."""
    from normlab.lab.experiments.sweep_batch_size import register_batch_size_arm

    for name, sync in ARMS.items():
        register_batch_size_arm(name, partial(run_syncbn_arm, sync=sync, processes=processes))
    return list(ARMS)


def _unsupported(reason: str, processes: int, per_process: int, sync: bool) -> dict[str, Any]:
    return {
        "epochs": [],
        "final": None,
        "diverged": False,
        "diverged_at_step": None,
        "steps": 0,
        "last_loss": None,
        "max_finite_loss": None,
        "loss_curve": [],
        "batch_stats_accuracy": None,
        "unsupported": reason,
        "processes": processes,
        "per_process_batch": per_process,
        "sync": sync,
    }


def _rank_main(job_dir: str) -> int:
    """One rank of :func:`train_on_ranks`: train, and on rank 0 write ``result.json``."""
    from normlab.data import Dataset
    from normlab.distributed import groups as distributed
    from normlab.lab.common import accuracy_with_batch_stats, history_record
    from normlab.train.engine import build_model, fit

    job = torch.load(Path(job_dir) / "job.pt", weights_only=True)
    config = TrainConfig.from_dict(job["config"])
    data = Dataset(
        name=job["name"],
        train_images=job["train_images"],
        train_labels=job["train_labels"],
        test_images=job["test_images"],
        test_labels=job["test_labels"],
        classes=tuple(job["classes"]),
        source=Path(job_dir),
    )
    with distributed.process_group(device=config.device) as context:
        config = replace(config, device=str(context.device))
        model = build_model(config)
        history = fit(
            model,
            data,
            config,
            progress=False,
            rank=context.rank,
            world_size=context.world_size,
            parallel=distributed.DataParallel(context),
        )
    if not context.is_main:
        return 0
    # the group is gone: SyncBatchNorm is plain batch norm again, safe on one rank
    record = history_record(history)
    size = job["batch_stats_size"]
    record["batch_stats_accuracy"] = (
        None
        if size is None or record["final"] is None
        else accuracy_with_batch_stats(
            model, data.test_images, data.test_labels, size, device=config.device
        )
    )
    temp = Path(job_dir) / "result.json.tmp"
    temp.write_text(json.dumps(record))
    os.replace(temp, Path(job_dir) / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
