"""The plan: every experiment keeps the contract the runner, the report and the commands
rely on, so that adding one needs no other change."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing

import pytest

from normlab.cli._lab import PARSERS, experiments_of
from normlab.errors import UsageError
from normlab.lab.cells import config_dict
from normlab.lab.experiment import Curve, Experiment, SeedStats
from normlab.lab.plan import EXPERIMENTS, experiment_named, names
from normlab.lab.serialize import from_jsonable


def test_names_and_commands_are_unique() -> None:
    assert len(set(names())) == len(EXPERIMENTS)
    commands = [e.command for e in EXPERIMENTS]
    assert len(set(commands)) == len(commands)
    for experiment in EXPERIMENTS:
        assert isinstance(experiment, Experiment)
        assert experiment_named(experiment.name) is experiment
        assert experiment.title and experiment.introduction
        assert len(experiment.command) == (2 if experiment.command[0] == "sweep" else 1)
    with pytest.raises(UsageError, match="unknown experiment 'nope'; valid: compare, sweep-lr"):
        experiment_named("nope")


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=names())
def test_study_configs_validate_and_roundtrip(experiment: Experiment) -> None:
    for quick in (False, True):
        config = experiment.study_config(
            quick=quick, dataset="fashion-mnist", device="cpu", syncbn=False
        )
        assert isinstance(config, experiment.config_type)
        config.validate()
        stored = json.loads(json.dumps(config_dict(config)))
        assert from_jsonable(experiment.config_type, stored) == config
        assert experiment.cells(config) and all(
            c.experiment == experiment.name for c in experiment.cells(config)
        )


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=names())
def test_options_set_config_fields_with_known_parsers(experiment: Experiment) -> None:
    fields = {f.name for f in dataclasses.fields(experiment.config_type)}
    for option in experiment.options:
        assert option.flag.startswith("--") and option.field in fields, option
        assert option.parse in PARSERS, option
    assert experiment in experiments_of(experiment.command[0])


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=names())
def test_summaries_are_dataclasses_all_the_way_down(experiment: Experiment) -> None:
    """No dict read by string keys except dicts keyed by data (norm names, measures)."""
    assert dataclasses.is_dataclass(experiment.summary_type)
    allowed_leaves = (int, float, str, bool, type(None), SeedStats, Curve)

    def check(tp: object, where: str) -> None:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            for field in dataclasses.fields(tp):
                check(hints[field.name], f"{where}.{field.name}")
        elif origin is dict:
            assert args and args[0] is str, where
            check(args[1], where + "[key]")
        elif origin in (list, tuple, typing.Union, types.UnionType):
            for arg in args:
                if arg is not Ellipsis:
                    check(arg, where)
        else:
            assert tp in allowed_leaves, f"{where}: {tp!r}"

    check(experiment.summary_type, experiment.summary_type.__name__)


def test_the_plan_imports_neither_torch_nor_matplotlib() -> None:
    """The commands build their flags from the plan: ``normlab --help`` stays instant only
    while experiment modules import torch and matplotlib inside their functions."""
    code = (
        "import sys, normlab.lab.plan; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
