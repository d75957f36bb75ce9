"""``normlab train``: train one LeNet, every choice a flag, into a run directory.

Examples::

    normlab train                                  # the tutorial: batch norm, 5 epochs
    normlab train --norm group --lr 0.1 --epochs 10
    normlab train --dataset synthetic --epochs 2   # a few seconds, no data files needed
    normlab train --resume runs/lenet-batch-20250101-120000   # continue a killed run

Exit codes: 0 trained, 1 diverged (the last good checkpoint is kept), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from normlab.config import DATASETS, TrainConfig
from normlab.errors import UsageError

DEFAULTS = TrainConfig()
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
        "--eval-batch-size",
        type=int,
        help=f"examples per evaluation step (default {DEFAULTS.eval_batch_size})",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help=f"{', '.join(DATASETS)} (default {DEFAULTS.dataset}); synthetic is tiny fake "
        "data for a smoke test",
    )
    data.add_argument("--data-dir", help="folder with the IDX files (default: search)")
    data.add_argument("--train-subset", type=int, help="use only the first N training images")
    data.add_argument("--test-subset", type=int, help="use only the first N test images")
    out = parser.add_argument_group("run directory")
    out.add_argument("--out", default="runs", help="parent folder of run directories (runs)")
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
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the flags describe (unset flags keep the defaults)."""
    changes = {
        field: getattr(args, field)
        for field in CONFIG_FLAGS.values()
        if getattr(args, field, None) is not None
    }
    return dataclasses.replace(DEFAULTS, **changes)


def run(args: argparse.Namespace) -> int:
    from normlab import engine
    from normlab.runs import DEFAULT_CHECKPOINT_EVERY, Run

    if args.resume is not None:
        given = [flag for flag, field in CONFIG_FLAGS.items() if getattr(args, field) is not None]
        given += [f for f, v in (("--name", args.name), ("--checkpoint-every",
                  args.checkpoint_every)) if v is not None]  # fmt: skip
        if given:
            raise UsageError(
                f"--resume continues the run with its own settings; drop {', '.join(given)}"
            )
        the_run = Run.open(args.resume)
        config = the_run.config
        config.validate()
        if _already_finished(the_run, config):
            return 0
        data_dir = args.data_dir if args.data_dir is not None else the_run.data_dir
    else:
        config = config_from_args(args)
        config.validate()
        every = DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every
        if every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0, got {every}")
        data_dir = args.data_dir
        the_run = None

    data = engine.load_data(config, data_dir=data_dir)
    if the_run is None:
        the_run = Run.create(
            args.out,
            args.name or f"lenet-{config.norm}",
            config,
            data_dir=data_dir,
            checkpoint_every=every,
        )
    model = engine.build_model(config)
    print(
        f"{'resuming' if args.resume else 'training'} LeNet norm={config.norm} "
        f"on {config.dataset} ({len(data.train_labels)} train, {len(data.test_labels)} test) "
        f"lr={config.lr} batch={config.batch_size} epochs={config.epochs} seed={config.seed} "
        f"-> {the_run.path}",
        flush=True,
    )
    for done in the_run.read_metrics() if args.resume else []:
        print(engine.format_epoch(engine.EpochMetrics.from_dict(done), config.epochs))

    def show(metrics: engine.EpochMetrics) -> None:
        print(engine.format_epoch(metrics, config.epochs), flush=True)

    with the_run.logging_to_file():
        history = engine.fit(
            model, data, config, run=the_run, progress=not args.no_progress, on_epoch=show
        )
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


def _already_finished(the_run: Any, config: TrainConfig) -> bool:
    """True (after printing its metrics) for a finished run; an error for a diverged one."""
    from normlab import engine

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
