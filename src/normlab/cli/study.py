"""``normlab study``: every lab experiment into one run directory with one report.

Examples::

    normlab study                       # everything (run times: docs/results/lab.md)
    normlab study --quick               # the same report on a reduced budget
    normlab study --seeds 5 --out results
    normlab study --only compare,sweep-lr
    normlab study --resume runs/study-20250101-120000   # finish an interrupted study

    torchrun --standalone --nproc-per-node 2 -m normlab study --out runs   # cells over 2 ranks

Every finished cell (one experiment x one setting x one seed) is saved as it ends, so
``--resume`` redoes nothing finished. Ctrl-C (exit 130) or SIGTERM (143) stops the study
within seconds, its worker processes ended, and prints the ``--resume`` command. Under
torchrun the ranks share the cells (docs/lab/several-machines.md). The last line printed
is the path of report.html.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from normlab.lab.plan import EXPERIMENTS, names

    parser = subparsers.add_parser(
        "study",
        help="all lab experiments into one run directory with one HTML report",
        description=(
            "Run every lab experiment ("
            + "; ".join(e.title.lower() for e in EXPERIMENTS)
            + ") into one run directory, and write one self-contained report.html (and "
            "report.md) whose conclusions are generated from the numbers and compared with "
            "the literature."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="the reduced budget (2 000 images, 1 epoch)"
    )
    parser.add_argument("--seeds", metavar="N", help="seeds per setting, for every experiment")
    parser.add_argument(
        "--only",
        metavar="A,B,...",
        help=f"a subset of: {', '.join(names())}",
    )
    parser.add_argument(
        "--syncbn",
        action="store_true",
        help="add the multi-process arms where an experiment has them (SyncBN, 2 processes)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted study in RUN_DIR"
    )
    parser.add_argument("--dataset", help="fashion-mnist (default) or mnist")
    parser.add_argument("--data-dir", metavar="DIR", help="where the dataset files are")
    parser.add_argument("--device", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument(
        "--out", metavar="DIR", help="parent of the run directory (default runs; not with --resume)"
    )
    parser.add_argument(
        "--workers", metavar="N", help="processes computing cells at once (default: 2 cores)"
    )
    parser.add_argument("--threads", metavar="N", help="torch threads per process (default 1)")
    parser.add_argument(
        "--run-name",
        metavar="NAME",
        help="under torchrun: the name every rank gives the run directory (default: "
        "torchrun's run id); see docs/lab/several-machines.md",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import (
        Resumable,
        parse_int,
        parse_list,
        print_summary,
        refuse_with_resume,
        run_options,
    )
    from normlab.errors import UsageError
    from normlab.lab.ranks import Share
    from normlab.lab.study import default_plan, default_workers, estimate_plan_seconds, run_study
    from normlab.report.stats import format_duration

    seeds = parse_int("--seeds", args.seeds)
    only = parse_list("--only", args.only)
    share = Share.from_env(args.run_name, named=args.resume is None)
    if args.run_name is not None and (share.world_size == 1 or args.resume is not None):
        raise UsageError("--run-name names a new run shared by several ranks (torchrun); drop it")
    options = run_options(args)
    if args.workers is None:
        options["workers"] = default_workers(share.local_world_size)
    run = Resumable("study")
    if share.world_size > 1:
        options["share"] = share
    if args.resume is not None:
        refuse_with_resume(
            [
                flag
                for flag, value in (
                    ("--quick", args.quick or None),
                    ("--seeds", seeds),
                    ("--only", only),
                    ("--syncbn", args.syncbn or None),
                    ("--dataset", args.dataset),
                    ("--device", args.device),
                )
                if value is not None
            ],
            args.out,
            args.resume,
            "a study",
        )
        print(f"normlab study: resuming {args.resume}", flush=True)
        with run.interruptible():
            result = run_study(
                resume=args.resume, data_dir=args.data_dir, on_start=run.started, **options
            )
    else:
        plan = default_plan(
            quick=args.quick,
            seeds=seeds,
            dataset=args.dataset or "fashion-mnist",
            device=args.device or "cpu",
            experiments=only,
            syncbn=args.syncbn,
        )
        cells = estimate_plan_seconds(plan)
        print(
            f"normlab study: {len(plan)} experiments, about {format_duration(cells)} of "
            f"training on one idle core, {options['workers']} worker(s)",
            flush=True,
        )
        with run.interruptible():
            result = run_study(
                plan,
                out=args.out or "runs",
                data_dir=args.data_dir,
                on_start=run.started,
                **options,
            )
    if result.report_html is None:  # a rank other than 0: its share is saved
        print(
            f"rank {share.rank} of {share.world_size}: {result.cells_computed} cells computed "
            f"in {format_duration(result.seconds)}; rank 0 writes the report in {result.run_dir}"
        )
        return 0
    print_summary(result.summaries, result.findings)
    print(
        f"{result.cells_computed} cells computed, {result.cells_loaded} already finished, "
        f"in {format_duration(result.seconds)}"
    )
    print(f"run directory: {result.run_dir}")
    print(result.report_html)
    return 0
