"""``normlab train``: train one LeNet, every choice a flag, into a run directory.

Examples::

    normlab train                                  # the tutorial: batch norm, 5 epochs
    normlab train --norm group --lr 0.1 --epochs 10
    normlab train --dataset synthetic --epochs 2   # a few seconds, no data files needed
    normlab train --resume runs/lenet-batch-20250101-120000   # continue a killed run
    normlab train --nproc-per-node 2 --sync-bn    # 2 processes (DDP), synchronised BN
    torchrun --nproc-per-node 2 -m normlab train --sync-bn   # the same, launched by hand

Exit codes: 0 trained, 1 diverged (the last good checkpoint is kept), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from normlab.errors import UsageError
from normlab.train.config import DATASETS, InvalidSetting, TrainConfig

DEFAULTS = TrainConfig()
DEFAULT_OUT = "runs"
ALL = "all"  # --train-subset all: every image
# flag -> config field, for every flag that changes the numbers (not allowed with --resume)
CONFIG_FLAGS = {
    "--dataset": "dataset",
    "--norm": "norm",
    "--activation": "activation",
    "--pool": "pool",
    "--placement": "placement",
    "--lr": "lr",
    "--momentum": "momentum",
    "--batch-size": "batch_size",
    "--epochs": "epochs",
    "--seed": "seed",
    "--device": "device",
    "--train-subset": "train_subset",
    "--test-subset": "test_subset",
    "--eval-batch-size": "eval_batch_size",
    "--compile": "compile",
    "--cuda-graphs": "cuda_graphs",
    "--nproc-per-node": "world_size",
    "--sync-bn": "sync_bn",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one LeNet (any norm, activation, lr, ...) into a run directory",
        description=(
            "Train the tutorial's LeNet with the normalization and hyper-parameters you "
            "choose. Defaults are the tutorial's. Writes runs/<name>-<time>/ with "
            "config.json, metrics.jsonl, train.log and an atomic checkpoint; --resume "
            "continues a killed run exactly where it stopped."
        ),
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--norm",
        help=f"normalization layer (default {DEFAULTS.norm}): batch, layer, group, instance, "
        "rms, none, or torch-<name> for torch.nn's",
    )
    model.add_argument(
        "--activation", help=f"sigmoid, relu, tanh, gelu (default {DEFAULTS.activation})"
    )
    model.add_argument("--pool", help=f"avg or max (default {DEFAULTS.pool})")
    model.add_argument(
        "--placement", help=f"norm before or after the activation (default {DEFAULTS.placement})"
    )
    training = parser.add_argument_group("training")
    training.add_argument("--lr", type=float, help=f"SGD learning rate (default {DEFAULTS.lr})")
    training.add_argument(
        "--momentum", type=float, help=f"SGD momentum (default {DEFAULTS.momentum})"
    )
    training.add_argument(
        "--batch-size", type=int, help=f"examples per step (default {DEFAULTS.batch_size})"
    )
    training.add_argument("--epochs", type=int, help=f"epochs (default {DEFAULTS.epochs})")
    training.add_argument(
        "--seed", type=int, help=f"weights and batch order (default {DEFAULTS.seed})"
    )
    training.add_argument("--device", help=f"cpu, cuda, cuda:N, mps (default {DEFAULTS.device})")
    training.add_argument(
        "--compile", action="store_const", const=True, help="torch.compile the model"
    )
    training.add_argument(
        "--cuda-graphs", action="store_const", const=True,
        help="replay each training step from a CUDA graph (CUDA only): the host's cost per "
        "kernel launch disappears",
    )  # fmt: skip
    training.add_argument(
        "--eval-batch-size",
        type=int,
        help=f"examples per evaluation step (default {DEFAULTS.eval_batch_size})",
    )
    parallel = parser.add_argument_group("several processes (torch.distributed)")
    parallel.add_argument(
        "--nproc-per-node",
        dest="world_size",
        type=int,
        metavar="N",
        help="train on N processes of this machine with DistributedDataParallel, launched "
        "through torchrun's engine; --batch-size is per process (default 1)",
    )
    parallel.add_argument(
        "--sync-bn",
        dest="sync_bn",
        action="store_const",
        const=True,
        help="batch norm statistics over all processes (normlab.nn.SyncBatchNorm)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help=f"{', '.join(DATASETS)} (default {DEFAULTS.dataset}); synthetic is tiny fake "
        "data for a smoke test",
    )
    data.add_argument(
        "--data-dir", metavar="DIR", help="folder with the IDX files (default: search)"
    )
    data.add_argument(
        "--train-subset",
        type=subset,
        metavar="N",
        help="use only the first N training images ('all': every one, the default)",
    )
    data.add_argument(
        "--test-subset",
        type=subset,
        metavar="N",
        help="use only the first N test images ('all': every one, the default)",
    )
    out = parser.add_argument_group("run directory")
    out.add_argument(
        "--out", help=f"parent folder of run directories (default {DEFAULT_OUT}; not with --resume)"
    )
    out.add_argument("--name", help="run name (default lenet-<norm>)")
    out.add_argument(
        "--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint"
    )
    out.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps between mid-epoch checkpoints (default 200; 0: only at epoch ends)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, trains=True)
    return parser


def subset(text: str) -> int | str:
    """``--train-subset``/``--test-subset``: a number of images, or ``all`` (kept as
    ``"all"`` so that ``--resume`` can tell the flag was given; the config holds None)."""
    if text.strip().lower() == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: give a number of images or 'all'"
        ) from None


def validate_with_flags(config: Any, flags: dict[str, str]) -> None:
    """``config.validate()``, an out-of-range value named by its flag (``flags``: flag ->
    field), not by the config field the user never typed."""
    try:
        config.validate()
    except InvalidSetting as error:
        flag = next((f for f, field in flags.items() if field == error.field), None)
        if flag is None:
            raise
        raise UsageError(f"{flag} {error.detail}") from None


def config_changes(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """The config fields the given ``flags`` (flag -> field) set; ``all`` subsets are None."""
    return {
        field: None if getattr(args, field) == ALL else getattr(args, field)
        for field in flags.values()
        if getattr(args, field, None) is not None
    }


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the flags describe (unset flags keep the defaults)."""
    return dataclasses.replace(DEFAULTS, **config_changes(args, CONFIG_FLAGS))


def run(args: argparse.Namespace) -> int:
    from normlab.distributed import groups as distributed
    from normlab.train import engine
    from normlab.train.runs import DEFAULT_CHECKPOINT_EVERY, Run

    if args.resume is not None:
        given = [flag for flag, field in CONFIG_FLAGS.items() if getattr(args, field) is not None]
        given += [f for f, v in (("--name", args.name), ("--checkpoint-every",
                  args.checkpoint_every)) if v is not None]  # fmt: skip
        if given:
            raise UsageError(
                f"--resume continues the run with its own settings; drop {', '.join(given)}"
            )
        if args.out is not None:
            raise UsageError(
                f"--resume continues the run in its own directory {args.resume}; drop --out "
                "(a run cannot move)"
            )
        the_run = Run.open(args.resume)
        config = the_run.config
        config.validate()
        if _already_finished(the_run, config):
            return 0
        data_dir = args.data_dir if args.data_dir is not None else the_run.data_dir
    else:
        config = config_from_args(args)
        validate_with_flags(config, CONFIG_FLAGS)
        every = DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every
        if every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0, got {every}")
        data_dir = args.data_dir
        the_run = None

    ranks = distributed.env_ranks()  # None unless started by torchrun
    if ranks is None and config.world_size > 1:
        engine.load_data(config, data_dir=data_dir)  # bad data: one message, not N
        distributed.timeout_seconds()  # and a bad $NORMLAB_DIST_TIMEOUT
        return _relaunch(args, config.world_size)
    if ranks is not None:
        if args.resume is None and args.world_size is None:
            config = dataclasses.replace(config, world_size=ranks[1])
        if config.world_size != ranks[1]:
            raise UsageError(
                f"this run needs {config.world_size} processes but torchrun started "
                f"{ranks[1]}; use --nproc-per-node {config.world_size}"
            )
    data = engine.load_data(config, data_dir=data_dir)
    root = out_root(args.out) if the_run is None else the_run.path.parent
    with distributed.process_group(device=config.device) as context:
        return _train(args, config, data, data_dir, the_run, root, context)


def out_root(out: str | Path | None) -> Path:
    """``--out`` (default ``runs``), made if missing; a file or a folder that cannot be
    written is refused in one line."""
    from normlab.train.runs import unwritable_reason

    root = Path(DEFAULT_OUT if out is None else out)
    reason = unwritable_reason(root)
    if reason is not None:
        raise UsageError(f"--out {root} {reason}; pass --out with a folder you can write to")
    return root


def _train(
    args: argparse.Namespace,
    config: TrainConfig,
    data: Any,
    data_dir: str | None,
    the_run: Any,
    root: Path,
    context: Any,
) -> int:
    """Train on this process: alone, or as one rank of ``context`` (only rank 0 writes)."""
    from normlab.distributed import groups as distributed
    from normlab.train import engine
    from normlab.train.runs import DEFAULT_CHECKPOINT_EVERY, Run

    if the_run is None:  # rank 0 creates the run directory, the others open it
        every = DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every
        name = args.name or f"lenet-{config.norm}"
        created = None
        if context.is_main:
            created = Run.create(root, name, config, data_dir=data_dir, checkpoint_every=every)
        path = distributed.broadcast_object(str(created.path) if created is not None else None)
        the_run = created if created is not None else Run.open(path)
    parallel = distributed.DataParallel(context) if context.distributed else None
    model = engine.build_model(config)
    if not context.is_main:  # the other ranks train in silence; rank 0 prints and writes
        with distributed.translate_failures("training", context.rank, context.world_size):
            history = engine.fit(
                model,
                data,
                config,
                run=the_run,
                progress=False,
                rank=context.rank,
                world_size=context.world_size,
                parallel=parallel,
            )
        return 1 if history.diverged else 0
    ranks_note = f" on {context.world_size} processes" if context.distributed else ""
    print(
        f"{'resuming' if args.resume else 'training'} LeNet norm={config.norm} "
        f"on {config.dataset} ({len(data.train_labels)} train, {len(data.test_labels)} test) "
        f"lr={config.lr} batch={config.batch_size} epochs={config.epochs} seed={config.seed}"
        f"{ranks_note}{' sync-bn' if config.sync_bn else ''} -> {the_run.path}",
        flush=True,
    )
    for done in the_run.read_metrics() if args.resume else []:
        print(engine.format_epoch(engine.EpochMetrics.from_dict(done), config.epochs))

    def show(metrics: engine.EpochMetrics) -> None:
        print(engine.format_epoch(metrics, config.epochs), flush=True)

    try:
        with (
            the_run.logging_to_file(),
            distributed.translate_failures("training", context.rank, context.world_size)
            if context.distributed
            else contextlib.nullcontext(),
        ):
            history = engine.fit(
                model,
                data,
                config,
                run=the_run,
                progress=not args.no_progress,
                on_epoch=show,
                rank=context.rank,
                world_size=context.world_size,
                parallel=parallel,
            )
    except KeyboardInterrupt as interrupt:  # the checkpoint on disk is whole (atomic writes)
        interrupt.add_note(f"to continue: {resume_command(the_run.path)}")
        raise
    if history.diverged:
        print(
            f"normlab train: diverged at step {history.diverged_at_step}: the loss is not "
            f"finite with lr={config.lr}; try a lower --lr. The last good checkpoint is kept "
            f"in {the_run.path}",
            file=sys.stderr,
        )
        print(f"run directory: {the_run.path}")
        return 1
    print(f"run directory: {the_run.path}")
    return 0


def resume_command(run_dir: Any) -> str:
    """The command that continues the run in ``run_dir`` from its last checkpoint."""
    return f"normlab train --resume {shlex.quote(str(run_dir))}"


def _relaunch(args: argparse.Namespace, world_size: int) -> int:
    """Run this same command as ``world_size`` ranks through torchrun's engine."""
    from normlab.distributed.launch import launch_torchrun

    argv = ["train"]
    if args.resume is not None:
        argv += ["--resume", args.resume]
    else:
        for flag, field in CONFIG_FLAGS.items():
            value = getattr(args, field)
            if field == "world_size" or value is None:
                continue
            argv += [flag] if value is True else [flag, str(value)]
        if args.out is not None:
            argv += ["--out", args.out]
        for flag, value in (("--name", args.name), ("--checkpoint-every", args.checkpoint_every)):
            if value is not None:
                argv += [flag, str(value)]
    if args.data_dir is not None:
        argv += ["--data-dir", args.data_dir]
    if args.no_progress:
        argv.append("--no-progress")
    return launch_torchrun(world_size, argv)


def _already_finished(the_run: Any, config: TrainConfig) -> bool:
    """True (after printing its metrics) for a finished run; an error for a diverged one."""
    from normlab.train import engine

    summary = the_run.read_summary()
    if summary is None:
        return False
    if summary.get("status") == "diverged":
        raise UsageError(
            f"{the_run.path} diverged at step {summary.get('diverged_at_step')}; resuming "
            "would diverge again; start a new run with a lower --lr"
        )
    for done in the_run.read_metrics():
        print(engine.format_epoch(engine.EpochMetrics.from_dict(done), config.epochs))
    print(f"{the_run.path} already finished all {config.epochs} epochs; nothing to resume")
    print(f"run directory: {the_run.path}")
    return True
