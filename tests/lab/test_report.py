"""The study report's subtitle: the networks, datasets and experiments of the run, read
from the configs run (a fixed "LeNet on ..." would misname the transformer and depth
experiments)."""

from __future__ import annotations

from normlab.lab.experiments.compare import COMPARE, CompareConfig
from normlab.lab.experiments.depth import DEPTH, DepthConfig
from normlab.lab.experiments.transformer import TRANSFORMER, TransformerConfig
from normlab.lab.plan import EXPERIMENTS
from normlab.lab.report import study_subtitle


def test_subtitle_names_the_models_of_the_experiments_run() -> None:
    subtitle = study_subtitle({
        "compare": CompareConfig(),
        "transformer": TransformerConfig(),
        "depth": DepthConfig(depths=(4, 16)),
    })  # fmt: skip
    assert subtitle == (
        "LeNet, vision transformer, next-row transformer and plain and residual CNNs "
        "(depths 4 to 16) on Fashion-MNIST; "
        f"{COMPARE.title.lower()}, {TRANSFORMER.title.lower()}, {DEPTH.title.lower()}"
    )


def test_subtitle_follows_the_config_not_the_experiment() -> None:
    # no batch norm: no LeNet reference; no causal norms: no next-row model
    config = TransformerConfig(norms=("layer",), causal_norms=(), dataset="synthetic")
    assert study_subtitle({"transformer": config}) == (
        f"vision transformer on synthetic; {TRANSFORMER.title.lower()}"
    )
    assert study_subtitle({"depth": DepthConfig(depths=(8,))}).startswith(
        "plain and residual CNNs (depth 8) on Fashion-MNIST;"
    )


def test_lenet_only_runs_say_lenet_once() -> None:
    assert study_subtitle({"compare": CompareConfig()}).startswith("LeNet on Fashion-MNIST;")


def test_every_experiment_names_its_models() -> None:
    for experiment in EXPERIMENTS:
        config = experiment.study_config(quick=True, dataset="synthetic", device="cpu",
                                         syncbn=False)  # fmt: skip
        models = experiment.models(config)
        assert models and all(isinstance(m, str) and m for m in models), experiment.name
