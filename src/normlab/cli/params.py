"""``normlab params RUN_DIR``: the learned gamma/beta of every norm layer, as tables and a plot.

Loads the run's last checkpoint into its LeNet, prints one table for gamma (the scale,
initialised to 1) and one for beta (the shift, initialised to 0) with per-layer mean,
std, min, max and the first channels' values, and saves ``RUN_DIR/params.png`` with
every channel's gamma and beta.

Example::

    normlab params runs/lenet-batch-20250101-120000
"""

from __future__ import annotations

import argparse
from typing import Any

from normlab.errors import UsageError

PLOT_FILE = "params.png"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "params",
        help="show the learned gamma/beta of a run's normalization layers (table + plot)",
        description=(
            "Print the learned scale (gamma) and shift (beta) of every normalization layer "
            "in a run's last checkpoint, and save RUN_DIR/params.png."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from normlab train")
    parser.add_argument("--no-plot", action="store_true", help="print the tables only")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.lab.params import norm_parameters, params_table
    from normlab.train import engine
    from normlab.train.runs import Run

    the_run = Run.open(args.run_dir)
    config = the_run.config
    if config.norm == "none":
        raise UsageError(
            f"{the_run.path} trained with norm 'none': the model has no normalization "
            "layers, so there is no gamma/beta to show"
        )
    checkpoint = the_run.load_checkpoint()
    model = engine.build_model(config.replace(device="cpu", compile=False))
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise UsageError(
            f"{the_run.checkpoint_path} does not fit the run's model: {first}"
        ) from None
    layers = norm_parameters(model)
    if not any(p.gamma is not None or p.beta is not None for p in layers):
        raise UsageError(f"the normalization layers of {the_run.path} have no gamma/beta")
    epoch, step = int(checkpoint["epoch"]), int(checkpoint["step_in_epoch"])
    where = f"at epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
    print(f"{the_run.path}: norm={config.norm}, checkpoint {where} of {config.epochs}")
    print()
    print(params_table(layers, "gamma"))
    print()
    print(params_table(layers, "beta"))
    if not args.no_plot:
        from normlab.lab.params import params_figure
        from normlab.report.plots import save_png

        title = f"{the_run.name}: learned gamma and beta ({where})"
        path = save_png(params_figure(layers, title=title), the_run.path / PLOT_FILE)
        print()
        print(f"plot: {path}")
    return 0
