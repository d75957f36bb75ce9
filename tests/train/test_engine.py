"""The training engine against hand-written oracles: the tutorial's loop, whole-set
evaluation in float64, exact resume, divergence handling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normlab.data import Dataset, batches, normalize_images, synthetic_dataset
from normlab.errors import UsageError
from normlab.train.config import TrainConfig
from normlab.train.engine import (
    TIMING_FIELDS,
    EpochMetrics,
    History,
    StepInfo,
    TrainState,
    build_model,
    evaluate,
    fit,
    load_data,
    make_optimizer,
)
from normlab.train.runs import Run

# 8 steps of 32 per epoch: fast, and long enough for mid-epoch checkpoints.
SMALL = TrainConfig(
    dataset="synthetic",
    norm="torch-batch",
    epochs=2,
    batch_size=32,
    train_subset=256,
    test_subset=64,
    lr=0.1,
)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic_dataset(num_train=256, num_test=64, seed=0)


def without_timing(history: History) -> list[dict]:
    return [
        {k: v for k, v in e.to_dict().items() if k not in TIMING_FIELDS} for e in history.epochs
    ]


def tutorial_loop(config: TrainConfig, data: Dataset) -> tuple[list[float], torch.nn.Module]:
    """The oracle: the tutorial's train_and_evaluate loop, written out by hand."""
    model = build_model(config)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    losses = []
    for epoch in range(config.epochs):
        model.train()
        for images, labels in batches(data.train_images, data.train_labels,
                                      config.batch_size, shuffle=True, seed=config.seed,
                                      epoch=epoch):  # fmt: skip
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses, model


def test_fit_is_the_tutorials_loop(data: Dataset) -> None:
    history = fit(model := build_model(SMALL), data, SMALL, progress=False)
    losses, oracle = tutorial_loop(SMALL, data)
    assert history.step_losses == losses  # bit for bit
    for (name, ours), theirs in zip(model.state_dict().items(), oracle.state_dict().values(),
                                    strict=True):  # fmt: skip
        assert torch.equal(ours, theirs), name
    assert not history.diverged and history.diverged_at_step is None
    assert history.steps_per_epoch == 8 and len(history.epochs) == 2


def test_epoch_metrics_match_closed_forms(data: Dataset) -> None:
    history = fit(model := build_model(SMALL), data, SMALL, progress=False)
    first, last = history.epochs
    assert (first.epoch, last.epoch, first.steps, first.examples) == (1, 2, 8, 256)
    assert first.lr == SMALL.lr
    # train loss: the mean over examples of each step's (batch-mean) loss
    step_losses = history.step_losses[8:]
    assert last.train_loss == pytest.approx(sum(step_losses) * 32 / 256, rel=1e-12)
    assert 0 <= first.train_accuracy <= 1
    assert last.seconds == pytest.approx(last.train_seconds + last.eval_seconds)
    # test metrics: the final model in eval mode on the whole test set, in float64
    model.eval()
    with torch.no_grad():
        logits = model(normalize_images(data.test_images)).double()
    assert last.test_loss == pytest.approx(float(F.cross_entropy(logits, data.test_labels)),
                                           rel=1e-6)  # fmt: skip
    assert last.test_accuracy == float((logits.argmax(1) == data.test_labels).double().mean())
    assert last.train_loss < first.train_loss < math.log(10) + 0.1  # it learns


def test_train_accuracy_counts_correct_predictions(data: Dataset) -> None:
    config = SMALL.replace(epochs=1)
    history = fit(build_model(config), data, config, progress=False)
    # the oracle: count the predictions of each step's forward pass (pre-step weights)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    correct = 0
    for x, y in batches(data.train_images, data.train_labels, 32, shuffle=True, seed=0):
        optimizer.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        optimizer.step()
        correct += int((out.argmax(1) == y).sum())
    assert history.epochs[0].train_accuracy == correct / 256


def test_same_seed_same_numbers_other_seed_other_numbers(data: Dataset) -> None:
    a = fit(build_model(SMALL), data, SMALL, progress=False)
    b = fit(build_model(SMALL), data, SMALL, progress=False)
    assert a.step_losses == b.step_losses
    assert without_timing(a) == without_timing(b)
    other = SMALL.replace(seed=1)
    c = fit(build_model(other), data, other, progress=False)
    assert c.step_losses != a.step_losses
    assert without_timing(c) != without_timing(a)


def test_build_model_seeds_weights_the_same_for_every_norm() -> None:
    rng_before = torch.get_rng_state()
    models = {n: build_model(SMALL.replace(norm=n)) for n in ("none", "batch", "torch-group")}
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    reference = models["none"].state_dict()
    conv_linear = [k for k in reference if k.endswith(("weight", "bias"))]
    assert len(conv_linear) == 10  # 2 conv + 3 linear layers
    for name, model in models.items():
        state = model.state_dict()
        for key in conv_linear:
            assert torch.equal(state[key], reference[key]), (name, key)
    other = build_model(SMALL.replace(seed=1)).state_dict()
    assert not torch.equal(other["layers.0.weight"], reference["layers.0.weight"])


def test_evaluate_restores_the_mode_and_uses_running_statistics(data: Dataset) -> None:
    model = build_model(SMALL)
    model.train()
    x = normalize_images(data.train_images[:64])
    model(x)  # moves the running statistics away from 0/1
    loss, accuracy = evaluate(model, data.test_images, data.test_labels, batch_size=10)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(normalize_images(data.test_images)).double()
    assert loss == pytest.approx(float(F.cross_entropy(logits, data.test_labels)), rel=1e-6)
    assert accuracy == float((logits.argmax(1) == data.test_labels).double().mean())
    with pytest.raises(UsageError, match="empty"):
        evaluate(model, data.test_images[:0], data.test_labels[:0])


def test_on_step_and_on_epoch_see_every_step_and_epoch(data: Dataset) -> None:
    steps: list[tuple[int, int, int]] = []
    epochs: list[EpochMetrics] = []

    def on_step(info: StepInfo) -> None:
        assert info.inputs.shape == (32, 1, 28, 28)
        assert all(p.grad is not None for p in info.model.parameters())
        steps.append((info.step, info.epoch, info.step_in_epoch))

    history = fit(build_model(SMALL), data, SMALL, progress=False, on_step=on_step,
                  on_epoch=epochs.append)  # fmt: skip
    assert steps == [(e * 8 + s, e + 1, s) for e in range(2) for s in range(8)]
    assert epochs == history.epochs


def test_a_resumed_run_matches_an_uninterrupted_one_exactly(tmp_path: Path, data: Dataset) -> None:
    straight = fit(build_model(SMALL), data, SMALL, progress=False)

    run = Run.create(tmp_path, "crash", SMALL, checkpoint_every=3)

    def crash(info: StepInfo) -> None:
        if info.step == 12:  # epoch 2, step 5: after the checkpoint at its step 3
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(build_model(SMALL), data, SMALL, run=run, progress=False, on_step=crash)
    checkpoint = run.load_checkpoint()
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 3)
    run.append_metrics({"epoch": 99})  # a line written after the checkpoint is dropped

    resumed = fit(build_model(SMALL), data, SMALL, run=Run.open(run.path), progress=False)
    assert resumed.resumed_at_step == 11
    assert resumed.step_losses == straight.step_losses
    assert without_timing(resumed) == without_timing(straight)
    on_disk = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in run.read_metrics()]
    assert on_disk == without_timing(straight)
    assert run.read_summary()["status"] == "finished"
    # resuming a finished run trains nothing more
    again = fit(build_model(SMALL), data, SMALL, run=Run.open(run.path), progress=False)
    assert again.step_losses == straight.step_losses


def test_resume_with_another_config_is_refused(tmp_path: Path, data: Dataset) -> None:
    config = SMALL.replace(epochs=1)
    run = Run.create(tmp_path, "r", config)
    fit(build_model(config), data, config, run=run, progress=False)
    changed = config.replace(lr=0.5)
    with pytest.raises(UsageError, match=r"differs from .*config.json; pass the run's own"):
        fit(build_model(changed), data, changed, run=run, progress=False)
    # a run made for an experiment (a custom config) is checked against its checkpoint
    cell = Run.create(tmp_path, "cell", {"experiment": "sweep", "lr": 0.1})
    fit(build_model(config), data, config, run=cell, progress=False)
    with pytest.raises(UsageError, match=r"different config \(changed: lr\)"):
        fit(build_model(changed), data, changed, run=cell, progress=False)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                             data: Dataset) -> None:  # fmt: skip
    config = SMALL.replace(activation="relu", lr=1e6, epochs=1)
    run = Run.create(tmp_path, "nan", config, checkpoint_every=1)
    epochs: list[EpochMetrics] = []
    history = fit(build_model(config), data, config, run=run, progress=False,
                  on_epoch=epochs.append)  # fmt: skip
    assert history.diverged and epochs == [] and history.epochs == []
    step = history.diverged_at_step
    assert step is not None and 0 < step < 8
    # the losses end at the divergence: the last one is not finite, unless the weights went
    # non-finite first (then the loss of that step was never computed)
    assert all(math.isfinite(v) for v in history.step_losses[:step])
    ends_with_bad_loss = len(history.step_losses) == step + 1 and not math.isfinite(
        history.step_losses[-1]
    )
    assert ends_with_bad_loss or len(history.step_losses) == step
    state = run.load_checkpoint()
    assert state["step_in_epoch"] <= step
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor.double()).all(), name
    assert run.read_summary()["status"] == "diverged"
    assert run.read_summary()["diverged_at_step"] == step


def test_load_data_cuts_subsets() -> None:
    data = load_data(SMALL.replace(train_subset=100, test_subset=30))
    assert (len(data.train_labels), len(data.test_labels)) == (100, 30)
    assert data.name == "synthetic"


def test_until_step_continues_to_the_numbers_of_one_call(tmp_path: Path, data: Dataset) -> None:
    """Piece by piece, mid-epoch and at epoch ends (as the tutorial's workers train), equals
    one uninterrupted call. SMALL has 8 steps per epoch."""
    config = SMALL.replace(epochs=3)
    straight = fit(build_model(config), data, config, progress=False)
    run = Run.create(tmp_path, "steps", config, checkpoint_every=0)
    for step, epochs in ((5, 0), (8, 1), (13, 1), (20, 2), (24, 3)):
        history = fit(
            build_model(config), data, config, run=Run.open(run.path), progress=False,
            until_step=step,
        )  # fmt: skip
        assert len(history.epochs) == epochs
        assert len(history.step_losses) == step
        assert (run.path / "summary.json").exists() == (step == 24)
    assert history.step_losses == straight.step_losses
    assert without_timing(history) == without_timing(straight)


@pytest.mark.parametrize("until", [0, 25, 1.5])
def test_until_step_out_of_range_is_refused(tmp_path: Path, data: Dataset, until) -> None:
    config = SMALL.replace(epochs=3)
    run = Run.create(tmp_path, "bad", config)
    with pytest.raises(UsageError, match=r"until_step must be in 1\.\.24"):
        fit(build_model(config), data, config, run=run, progress=False, until_step=until)


def test_until_step_needs_a_run(data: Dataset) -> None:
    with pytest.raises(UsageError, match="until_step needs a run"):
        fit(build_model(SMALL), data, SMALL, progress=False, until_step=1)


@pytest.mark.parametrize("norm", ["batch", "torch-batch"])
def test_a_final_batch_of_one_image_is_dropped(norm: str) -> None:
    """65 images in batches of 32: 32 + 32 + 1. Batch norm cannot train on one image (its
    BatchNorm1d layers would see one value per channel), so that image is left out."""
    config = dataclasses.replace(SMALL, norm=norm, epochs=1, train_subset=65)
    data = synthetic_dataset(num_train=65, num_test=64, seed=0)
    history = fit(build_model(config), data, config, progress=False)
    assert history.steps_per_epoch == 2
    assert history.epochs[-1].steps == 2


def test_a_final_batch_of_two_images_is_kept() -> None:
    config = dataclasses.replace(SMALL, epochs=1, train_subset=66)
    data = synthetic_dataset(num_train=66, num_test=64, seed=0)
    assert fit(build_model(config), data, config, progress=False).steps_per_epoch == 3


def test_batch_size_one_with_batch_norm_is_refused_before_training() -> None:
    with pytest.raises(UsageError, match=r"--batch-size 1 .* use --batch-size 2 or more"):
        dataclasses.replace(SMALL, batch_size=1).validate()
    dataclasses.replace(SMALL, batch_size=1, norm="group").validate()  # per-sample: fine


def test_the_checkpoint_is_the_train_state(tmp_path: Path, data: Dataset) -> None:
    """A checkpoint holds TrainState's fields (plus its format and the RNG states), and
    restoring one gives a state whose checkpoint is the same, tensor for tensor."""
    run = Run.create(tmp_path, "state", SMALL, checkpoint_every=3)
    fit(build_model(SMALL), data, SMALL, run=run, progress=False, until_step=11)
    checkpoint = run.load_checkpoint()
    fields = {f.name for f in dataclasses.fields(TrainState)}
    assert set(checkpoint) == fields | {"format", "rng"}
    model = build_model(SMALL)
    state = TrainState.restore(checkpoint, model, make_optimizer(model, SMALL))
    assert (state.epoch, state.step_in_epoch, state.step) == (1, 3, 11)
    assert len(state.history.step_losses) == 11 and len(state.partial.sizes) == 3
    assert state.partial.losses == state.history.step_losses[8:]

    def same(a: object, b: object) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list | tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b

    assert same(state.to_checkpoint(), checkpoint)
