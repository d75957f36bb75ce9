"""Training and evaluation: the tutorial's loop, lean, deterministic and resumable.

``fit`` trains with SGD with momentum on the cross-entropy loss
``L = -1/B sum_i log softmax(f(x_i))[y_i]`` over in-memory batches from
:func:`normlab.data.batches`, whose order depends only on ``(seed, epoch)``. Per epoch it
reports the mean training loss and accuracy over the epoch's examples, the test loss and
accuracy (:func:`evaluate`, eval mode) and the wall time.

With a :class:`~normlab.train.runs.Run`, ``fit`` checkpoints every ``run.checkpoint_every``
steps and at the end of every epoch, and resumes from the run's checkpoint when there is
one. The checkpoint is a :class:`TrainState`: model, optimizer, the batches already done,
the history and the partial sums of the epoch, with the RNG states; restored, a killed
run produces exactly (bit for bit) the metrics of an uninterrupted one.

``fit`` reads as its steps: prepare the call (:class:`_Loop`), start or restore the state,
then per epoch train its remaining batches (:func:`_train_epoch`: one SGD step, then read
the losses and checkpoint when due) and finish it (:func:`_finish_epoch`: evaluate, record,
checkpoint); a loss or weight that stops being finite ends training
(:func:`_record_divergence`).

Example::

    >>> config = TrainConfig(dataset="synthetic", epochs=2)
    >>> history = fit(build_model(config), load_data(config), config, progress=False)
    >>> history.final.test_accuracy  # a float in [0, 1]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.data import (
    Dataset,
    batches,
    final_batch_size,
    load_dataset,
    num_batches,
    synthetic_dataset,
)
from normlab.errors import UsageError
from normlab.models.lenet import LeNet
from normlab.train.config import TrainConfig
from normlab.train.cuda_graphs import GraphedStep

if TYPE_CHECKING:
    from tqdm import tqdm

    from normlab.distributed.groups import DataParallel
    from normlab.train.runs import Run

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())  # the CLI prints; train.log records (runs.py)

CHECKPOINT_FORMAT = 1  # bump when the checkpoint's layout changes
READ_EVERY = 50  # steps between reads of the losses (finite check, progress bar postfix)
TIMING_FIELDS = ("seconds", "train_seconds", "eval_seconds")  # differ between equal runs


@dataclass
class EpochMetrics:
    """The numbers of one finished epoch (``epoch`` counts from 1)."""

    epoch: int
    train_loss: float  # mean cross-entropy over the epoch's training examples
    train_accuracy: float  # fraction in [0, 1] of training examples classified right
    test_loss: float  # mean cross-entropy over the test set, eval mode
    test_accuracy: float  # fraction in [0, 1], eval mode
    seconds: float  # train_seconds + eval_seconds
    lr: float  # the learning rate used in this epoch
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    steps: int = 0  # optimizer steps in this epoch
    examples: int = 0  # training examples seen in this epoch (this rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EpochMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class History:
    """What ``fit`` produced: per-epoch metrics and the loss of every step.

    ``step_losses[k]`` is the training loss of global step ``k`` (0-based; step ``k`` is
    step ``k % steps_per_epoch`` of epoch ``k // steps_per_epoch + 1``). When training
    diverged, ``diverged_at_step`` is the first step whose loss is not finite (or whose
    weights are not) and ``step_losses`` ends with that step's loss when it was computed.
    """

    epochs: list[EpochMetrics] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_at_step: int | None = None
    steps_per_epoch: int = 0
    resumed_at_step: int | None = None  # the global step a resume started from, if any

    @property
    def final(self) -> EpochMetrics | None:
        """The last finished epoch's metrics (None if no epoch finished)."""
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [e.to_dict() for e in self.epochs],
            "step_losses": list(self.step_losses),
            "diverged": self.diverged,
            "diverged_at_step": self.diverged_at_step,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_at_step": self.resumed_at_step,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> History:
        return cls(
            epochs=[EpochMetrics.from_dict(e) for e in values.get("epochs", [])],
            step_losses=[float(v) for v in values.get("step_losses", [])],
            diverged=bool(values.get("diverged", False)),
            diverged_at_step=values.get("diverged_at_step"),
            steps_per_epoch=int(values.get("steps_per_epoch", 0)),
            resumed_at_step=values.get("resumed_at_step"),
        )


@dataclass
class StepInfo:
    """What ``on_step`` sees after each optimizer step.

    ``model``'s parameters are already updated; their ``.grad`` still holds this step's
    gradients (taken at the weights before the update). ``loss`` is the detached loss
    tensor (reading it with ``float()`` costs a device sync on GPUs).
    """

    step: int  # global step, 0-based
    epoch: int  # 1-based
    step_in_epoch: int  # 0-based
    loss: torch.Tensor
    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor  # the batch, (B, 1, 28, 28)
    targets: torch.Tensor  # (B,)


def build_model(config: TrainConfig) -> LeNet:
    """The LeNet ``config`` describes, initialised from ``config.seed``, on ``config.device``.

    The global RNG is left untouched (``torch.random.fork_rng``). Norm layers initialise
    without randomness, so the same seed gives the same conv/linear weights for every
    norm (including ``none``).
    """
    config.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LeNet(
            norm=config.norm,
            activation=config.activation,
            pool=config.pool,
            placement=config.placement,
        )
    if config.sync_bn:  # batch statistics over every process (plain batch norm when alone)
        from normlab.nn import convert_sync_batchnorm

        convert_sync_batchnorm(model)
    return model.to(config.device)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """The tutorial's optimizer: ``SGD(lr=config.lr, momentum=config.momentum)``.

    ``foreach=True`` (torch's default on CUDA, not on CPU): one multi-tensor operation per
    update for all parameters instead of a Python loop over them; the same numbers bit for
    bit (tested), and less time per step on CPU.
    """
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, foreach=True)


def load_data(config: TrainConfig, data_dir: str | None = None) -> Dataset:
    """The :class:`normlab.data.Dataset` ``config`` names, cut to its subsets.

    ``dataset="synthetic"`` builds the small learnable fake data (seed 0, so every model
    seed sees the same data); its sizes are the subsets when given.
    """
    config.validate()
    if config.dataset == "synthetic":
        sizes = {}
        if config.train_subset is not None:
            sizes["num_train"] = config.train_subset
        if config.test_subset is not None:
            sizes["num_test"] = config.test_subset
        dataset = synthetic_dataset(**sizes, seed=0)
    else:
        dataset = load_dataset(config.dataset, data_dir=data_dir)
    if config.train_subset is not None or config.test_subset is not None:
        dataset = dataset.subset(train=config.train_subset, test=config.test_subset)
    return dataset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in [0, 1]) of ``model`` in eval mode, without grad.

    Args:
        images: uint8 images ``(N, 28, 28)``, normalised per batch as in training.
        labels: int64 labels ``(N,)``.
        batch_size: examples per forward pass.

    The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    count = len(labels)
    if count == 0:
        raise UsageError("cannot evaluate on an empty set of examples")
    was_training = model.training
    model.eval()
    try:
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for x, y in batches(images, labels, batch_size, shuffle=False, device=device):
            out = model(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    return float(total_loss) / count, int(correct) / count


def drops_last_image(train_count: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether an epoch leaves out its final batch because it would hold one image.

    Batch statistics over one image are undefined (torch.nn raises), and whatever the norm,
    every arm of a comparison must see the same batches: so a final batch of one image is
    dropped for every norm (never with ``batch_size == 1``, where every batch has one).
    """
    last = final_batch_size(train_count, batch_size, world_size=world_size)
    return last == 1 and batch_size > 1


def steps_per_epoch(
    train_count: int, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> int:
    """Optimizer steps in one epoch of ``train_count`` examples (see :func:`drops_last_image`)."""
    drop_last = drops_last_image(train_count, batch_size, world_size)
    return num_batches(
        train_count, batch_size, rank=rank, world_size=world_size, drop_last=drop_last
    )


@dataclass
class PartialEpoch:
    """The running sums of the unfinished epoch, kept in checkpoints for exact resumes."""

    losses: list[float] = field(default_factory=list)  # this epoch's step losses so far
    sizes: list[int] = field(default_factory=list)  # batch size of each of those steps
    correct: int = 0  # training examples classified right so far
    train_seconds: float = 0.0  # training time of this epoch so far

    def to_state(self) -> dict[str, object]:
        """The checkpoint's ``partial``: the losses are not repeated (they end the history's)."""
        return {
            "sizes": torch.tensor(self.sizes, dtype=torch.int64),
            "correct": self.correct,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], step_losses: list[float]) -> PartialEpoch:
        sizes = [int(n) for n in state["sizes"].tolist()]
        losses = step_losses[len(step_losses) - len(sizes) :] if sizes else []
        return cls(losses, sizes, int(state["correct"]), float(state["train_seconds"]))


@dataclass
class TrainState:
    """Where a training run stands: exactly what its checkpoint holds.

    :meth:`to_checkpoint` writes these fields (the model and optimizer as state dicts, the
    history's step losses as one float64 tensor) plus the process's global RNG states
    (torch, Python, NumPy, CUDA), which live in the process rather than here; :meth:`restore`
    reads them all back. Training from a restored state gives, bit for bit, the numbers of
    a run that was never stopped.
    """

    config: TrainConfig
    train_count: int  # training examples (a resume on other data is refused)
    steps_per_epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    epoch: int = 0  # epochs finished, i.e. the 0-based index of the epoch in progress
    step_in_epoch: int = 0  # optimizer steps done in the epoch in progress
    partial: PartialEpoch = field(default_factory=PartialEpoch)

    @property
    def step(self) -> int:
        """Optimizer steps done over the whole run."""
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def to_checkpoint(self) -> dict[str, object]:
        """The checkpoint: tensors and plain containers only (``weights_only``-safe)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "train_count": self.train_count,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_states(),
            "history": _history_to_state(self.history),
            "partial": self.partial.to_state(),
        }

    @classmethod
    def restore(
        cls, checkpoint: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> TrainState:
        """The state ``checkpoint`` holds: loads ``model`` and ``optimizer`` and sets the
        process's RNG states."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _set_rng_states(checkpoint["rng"])
        history = _history_from_state(checkpoint["history"])
        return cls(
            config=TrainConfig.from_dict(checkpoint["config"]),
            train_count=int(checkpoint["train_count"]),
            steps_per_epoch=int(checkpoint["steps_per_epoch"]),
            model=model,
            optimizer=optimizer,
            history=history,
            epoch=int(checkpoint["epoch"]),
            step_in_epoch=int(checkpoint["step_in_epoch"]),
            partial=PartialEpoch.from_state(checkpoint["partial"], history.step_losses),
        )


def saved_history(run: Run) -> History:
    """The :class:`History` in ``run``'s checkpoint (empty without one): its finished epochs,
    and one loss per optimizer step done (a checkpoint follows a read of every loss)."""
    if not run.has_checkpoint():
        return History()
    return _history_from_state(run.load_checkpoint()["history"])


def fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    run: Run | None = None,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    parallel: DataParallel | None = None,
    until_step: int | None = None,
) -> History:
    """Train ``model`` on ``data`` as ``config`` says; resume from ``run``'s checkpoint if any.

    Args:
        model: usually ``build_model(config)``; moved to ``config.device``.
        data: a :class:`normlab.data.Dataset` (uint8 images, int64 labels).
        config: the hyper-parameters; ``config.epochs`` is the total, resumed or not.
        run: a :class:`normlab.train.runs.Run`; checkpoints and metrics go there (rank 0 only).
            If it holds a checkpoint, training continues from it.
        progress: tqdm bars per epoch (rank 0 only).
        on_step: called after every optimizer step with a :class:`StepInfo`.
        on_epoch: called with each finished epoch's :class:`EpochMetrics`.
        rank, world_size: this process's shard of each epoch's batches (DistributedSampler
            semantics); gradient averaging across processes is the caller's (DDP).
        parallel: with several processes, a :class:`normlab.distributed.groups.DataParallel`:
            ``parallel.wrap(model)`` (DDP) runs the training steps, and
            ``parallel.reduce_step(loss, correct, size)`` turns each step's numbers into the
            global batch's, so losses, accuracies and checkpoints are the same on every rank.
        until_step: stop once this many optimizer steps of the whole run are done (mid-epoch
            or at an epoch's end), after a checkpoint there; a later call with the same
            ``run`` continues from it, to exactly the numbers of one uninterrupted call.
            None: train to the end of ``config.epochs``.

    Returns:
        The :class:`History`. If a loss is not finite, training stops there with
        ``diverged=True``; the model's weights are then not finite, and the run's last
        good checkpoint is kept.
    """
    config.validate()
    loop = _Loop.prepare(
        model, data, config, run,
        progress=progress, on_step=on_step, on_epoch=on_epoch,
        rank=rank, world_size=world_size, parallel=parallel, until_step=until_step,
    )  # fmt: skip
    state = _start_state(loop, model, run)
    model.train()
    try:
        while state.epoch < config.epochs and state.step < loop.stop:
            if _train_epoch(loop, state):
                return state.history  # stopped mid-epoch at until_step, after a checkpoint
            _finish_epoch(loop, state)
    except _Diverged as diverged:
        return _record_divergence(loop, state, diverged)
    if loop.writer is not None and loop.stop == loop.total_steps:
        loop.writer.write_summary(_summary("finished", state.history))
    return state.history


# --------------------------------------------------------------------------- fit's steps
@dataclass
class _Loop:
    """What one ``fit`` call holds fixed: the network, the data on the device, the stop
    step, where checkpoints go and who is told about progress."""

    config: TrainConfig
    device: torch.device
    net: nn.Module  # the model as it trains: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    graphed: GraphedStep | None  # with --cuda-graphs: the step replayed from a CUDA graph
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    steps_per_epoch: int
    drop_last: bool  # see drops_last_image
    total_steps: int
    stop: int  # the global step to stop at (total_steps unless until_step)
    writer: Run | None  # the run, on rank 0 only
    checkpoint_every: int  # steps between mid-epoch checkpoints (0: only at epoch ends)
    progress: bool
    on_step: Callable[[StepInfo], None] | None
    on_epoch: Callable[[EpochMetrics], None] | None
    rank: int
    world_size: int
    parallel: DataParallel | None

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        data: Dataset,
        config: TrainConfig,
        run: Run | None,
        *,
        progress: bool,
        on_step: Callable[[StepInfo], None] | None,
        on_epoch: Callable[[EpochMetrics], None] | None,
        rank: int,
        world_size: int,
        parallel: DataParallel | None,
        until_step: int | None,
    ) -> _Loop:
        """Check the call's arguments, move model and data to the device, wrap the model."""
        train_count = len(data.train_labels)
        if train_count == 0:
            raise UsageError("the training set is empty; check --train-subset")
        per_epoch = steps_per_epoch(
            train_count, config.batch_size, rank=rank, world_size=world_size
        )
        total_steps = config.epochs * per_epoch
        stop = _stop_step(until_step, total_steps, run)
        _check_run_config(run, config)
        device = torch.device(config.device)
        model.to(device)
        net = parallel.wrap(model) if parallel is not None else model
        optimizer = make_optimizer(model, config)
        # The data moves to the device once (47 MB of uint8 for Fashion-MNIST); a no-op on CPU.
        return cls(
            config=config,
            device=device,
            net=torch.compile(net) if config.compile else net,
            optimizer=optimizer,
            graphed=GraphedStep(net, optimizer) if config.cuda_graphs else None,
            train_images=data.train_images.to(device),
            train_labels=data.train_labels.to(device),
            test_images=data.test_images.to(device),
            test_labels=data.test_labels.to(device),
            steps_per_epoch=per_epoch,
            drop_last=drops_last_image(train_count, config.batch_size, world_size),
            total_steps=total_steps,
            stop=stop,
            writer=run if run is not None and rank == 0 else None,
            checkpoint_every=run.checkpoint_every if run is not None else 0,
            progress=progress,
            on_step=on_step,
            on_epoch=on_epoch,
            rank=rank,
            world_size=world_size,
            parallel=parallel,
        )


class _Diverged(Exception):
    """Raised inside ``fit``'s steps when training stops being finite; ``fit`` records it."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


def _stop_step(until_step: int | None, total_steps: int, run: Run | None) -> int:
    stop = total_steps if until_step is None else until_step
    if not isinstance(stop, int) or not 1 <= stop <= total_steps:
        raise UsageError(f"until_step must be in 1..{total_steps}, got {until_step!r}")
    if stop < total_steps and run is None:
        raise UsageError("until_step needs a run: the next call continues from its checkpoint")
    return stop


def _check_run_config(run: Run | None, config: TrainConfig) -> None:
    if run is not None and run.meta.get("kind", "train") == "train" and run.config != config:
        raise UsageError(
            f"the config given to fit differs from {run.path}/config.json; "
            "pass the run's own config (run.config)"
        )


def _start_state(loop: _Loop, model: nn.Module, run: Run | None) -> TrainState:
    """A fresh state (RNGs seeded from the config), or the run's checkpoint restored."""
    train_count = len(loop.train_labels)
    if run is None or not run.has_checkpoint():
        _seed_all(loop.config.seed)
        return TrainState(
            config=loop.config,
            train_count=train_count,
            steps_per_epoch=loop.steps_per_epoch,
            model=model,
            optimizer=loop.optimizer,
            history=History(steps_per_epoch=loop.steps_per_epoch),
        )
    checkpoint = run.load_checkpoint()
    _check_compatible(checkpoint, loop.config, train_count, loop.steps_per_epoch, run)
    state = TrainState.restore(checkpoint, model, loop.optimizer)
    state.history.resumed_at_step = state.step
    logger.info("resuming %s at epoch %d, step %d", run.path, state.epoch + 1, state.step_in_epoch)
    if loop.writer is not None:  # the checkpoint is the truth: drop lines written after it
        loop.writer.remove_stale_temp_files()
        loop.writer.write_metrics([e.to_dict() for e in state.history.epochs])
    return state


class _InFlight:
    """The epoch in progress's numbers not yet in the :class:`PartialEpoch`: loss tensors
    not yet read (reading costs a device sync), hits not yet counted, the running clock."""

    def __init__(self, device: torch.device) -> None:
        self.losses: list[torch.Tensor] = []
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.started = time.perf_counter()

    def read_losses(self, state: TrainState) -> None:
        """Move the pending losses into the history and the partial sums (one sync).

        Raises:
            _Diverged: at the first loss that is not finite (which ends the recorded losses).
        """
        bad = _read_losses(self.losses, state.history, state.partial)
        if bad is not None:
            back, value = bad
            raise _Diverged(state.step - back, f"the loss is {value}")

    def bank(self, partial: PartialEpoch) -> None:
        """Add the hits and the time since the last bank to ``partial``."""
        partial.correct += int(self.correct)
        self.correct.zero_()
        now = time.perf_counter()
        partial.train_seconds += now - self.started
        self.started = now


def _train_epoch(loop: _Loop, state: TrainState) -> bool:
    """Train the rest of the epoch in progress, checkpointing as the run asks.

    Returns True when ``until_step`` stopped it before its end (after a checkpoint).
    """
    flight = _InFlight(loop.device)
    bar = _progress_bar(
        state.epoch, loop.config.epochs, loop.steps_per_epoch, state.step_in_epoch,
        loop.progress, loop.rank,
    )  # fmt: skip
    try:
        for x, y in _remaining_batches(loop, state):
            loss, hits, size = _train_step(loop, x, y)
            flight.losses.append(loss)
            flight.correct += hits
            state.partial.sizes.append(size)
            if loop.on_step is not None:
                info = StepInfo(
                    state.step, state.epoch + 1, state.step_in_epoch, loss,
                    state.model, state.optimizer, x, y,
                )  # fmt: skip
                loop.on_step(info)
            state.step_in_epoch += 1
            bar.update(1)
            if _after_step(loop, state, flight, bar):
                return True
    finally:
        bar.close()
    flight.read_losses(state)  # nothing left unless the batches ran short
    flight.bank(state.partial)
    _check_weights(state)
    return False


def _remaining_batches(
    loop: _Loop, state: TrainState
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of the epoch in progress from its next step on; the order
    depends only on ``(seed, epoch)``."""
    return batches(
        loop.train_images,
        loop.train_labels,
        loop.config.batch_size,
        shuffle=True,
        seed=loop.config.seed,
        epoch=state.epoch,
        start=state.step_in_epoch,
        rank=loop.rank,
        world_size=loop.world_size,
        drop_last=loop.drop_last,
        device=loop.device,
    )


def _train_step(
    loop: _Loop, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One SGD step on the batch ``(x, y)``: its detached mean loss, hits and size (over
    every process's batch with ``parallel``)."""
    if loop.graphed is not None:  # one process only (TrainConfig.validate)
        loss, hits = loop.graphed(x, y)
        return loss, hits, int(y.shape[0])
    loop.optimizer.zero_grad(set_to_none=True)
    out = loop.net(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    loop.optimizer.step()
    loss = loss.detach()
    size, hits = int(y.shape[0]), (out.detach().argmax(dim=1) == y).sum()
    if loop.parallel is not None:  # the global batch's mean loss, hits and size
        loss, hits, size = loop.parallel.reduce_step(loss, hits, size)
    return loss, hits, size


def _after_step(loop: _Loop, state: TrainState, flight: _InFlight, bar: tqdm) -> bool:
    """Read the losses every ``READ_EVERY`` steps and checkpoint when due (on every rank:
    the same decisions; only rank 0 writes). True when ``until_step`` is reached mid-epoch."""
    done, per_epoch = state.step_in_epoch, loop.steps_per_epoch
    stopping = state.step == loop.stop and done < per_epoch
    every = loop.checkpoint_every
    checkpoint_due = stopping or (every > 0 and done % every == 0 and done < per_epoch)
    if done % READ_EVERY == 0 or checkpoint_due or done == per_epoch:
        flight.read_losses(state)  # one sync per READ_EVERY steps
        bar.set_postfix(loss=f"{state.history.step_losses[-1]:.4f}", refresh=False)
    if checkpoint_due:
        flight.bank(state.partial)
        _check_weights(state)
        _save(loop, state)
    return stopping


def _check_weights(state: TrainState) -> None:
    if not _all_finite(state.model):
        raise _Diverged(state.step, "the weights are not finite")


def _save(loop: _Loop, state: TrainState) -> None:
    if loop.writer is not None:
        loop.writer.save_checkpoint(state.to_checkpoint())


def _finish_epoch(loop: _Loop, state: TrainState) -> None:
    """Evaluate, record the epoch's metrics, start the next epoch, checkpoint, report."""
    eval_started = time.perf_counter()
    test_loss, test_accuracy = evaluate(
        state.model,
        loop.test_images,
        loop.test_labels,
        batch_size=loop.config.eval_batch_size,
        device=loop.device,
    )
    eval_seconds = time.perf_counter() - eval_started
    partial = state.partial
    examples = sum(partial.sizes)
    train_loss = math.fsum(v * n for v, n in zip(partial.losses, partial.sizes, strict=True))
    metrics = EpochMetrics(
        epoch=state.epoch + 1,
        train_loss=train_loss / examples,
        train_accuracy=partial.correct / examples,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        seconds=partial.train_seconds + eval_seconds,
        lr=float(state.optimizer.param_groups[0]["lr"]),
        train_seconds=partial.train_seconds,
        eval_seconds=eval_seconds,
        steps=len(partial.sizes),
        examples=examples,
    )
    state.history.epochs.append(metrics)
    state.epoch, state.step_in_epoch, state.partial = state.epoch + 1, 0, PartialEpoch()
    _save(loop, state)
    if loop.writer is not None:
        loop.writer.append_metrics(metrics.to_dict())
    logger.info(format_epoch(metrics, loop.config.epochs))
    if loop.on_epoch is not None:
        loop.on_epoch(metrics)


def _record_divergence(loop: _Loop, state: TrainState, diverged: _Diverged) -> History:
    """Mark the history diverged at ``diverged.step``, write the run's summary, warn."""
    history = state.history
    history.diverged, history.diverged_at_step = True, diverged.step
    epoch, in_epoch = divmod(diverged.step, loop.steps_per_epoch)
    message = (
        f"training diverged: {diverged.reason} at step {diverged.step} (epoch {epoch + 1}, "
        f"step {in_epoch + 1} of {loop.steps_per_epoch}); try a lower learning rate than "
        f"{loop.config.lr}"
    )
    if loop.writer is not None:
        message += f"; the last good checkpoint is kept in {loop.writer.path}"
        loop.writer.write_summary(_summary("diverged", history))
    logger.warning(message)
    return history


def format_epoch(metrics: EpochMetrics, epochs: int) -> str:
    """One line per epoch, e.g. ``epoch 1/5  train loss 0.5123 acc 81.2%  test ...``."""
    return (
        f"epoch {metrics.epoch}/{epochs}  "
        f"train loss {metrics.train_loss:.4f} acc {100 * metrics.train_accuracy:.2f}%  "
        f"test loss {metrics.test_loss:.4f} acc {100 * metrics.test_accuracy:.2f}%  "
        f"{metrics.seconds:.1f} s"
    )


# --------------------------------------------------------------------------- internals
def _read_losses(
    pending: list[torch.Tensor], history: History, partial: PartialEpoch
) -> tuple[int, float] | None:
    """Move the pending loss tensors into the history as floats (one device sync).

    Returns ``(steps back from the newest, value)`` of the first non-finite loss, which
    ends the recorded losses, or None when all are finite.
    """
    if not pending:
        return None
    values = torch.stack(pending).tolist()
    pending.clear()
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        history.step_losses.extend(values[: bad + 1])
        return len(values) - bad, values[bad]
    history.step_losses.extend(values)
    partial.losses.extend(values)
    return None


def _history_to_state(history: History) -> dict[str, object]:
    state: dict[str, object] = history.to_dict()

    state["step_losses"] = torch.tensor(history.step_losses, dtype=torch.float64)
    return state


def _history_from_state(state: Mapping[str, Any]) -> History:
    values = dict(state)
    losses = values["step_losses"]
    values["step_losses"] = losses.tolist() if isinstance(losses, torch.Tensor) else losses
    return History.from_dict(values)


def _check_compatible(
    checkpoint: Mapping[str, Any],
    config: TrainConfig,
    train_count: int,
    steps_per_epoch: int,
    run: Run,
) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(
            f"{run.checkpoint_path} has checkpoint format {checkpoint.get('format')!r}, "
            f"this normlab reads {CHECKPOINT_FORMAT}; start a new run"
        )
    saved = TrainConfig.from_dict(checkpoint["config"])
    if saved != config:
        changed = [k for k, v in config.to_dict().items() if checkpoint["config"].get(k) != v]
        raise UsageError(
            f"cannot resume {run.path} with a different config (changed: {', '.join(changed)}); "
            "resume with the run's own config or start a new run"
        )
    if checkpoint["train_count"] != train_count or checkpoint["steps_per_epoch"] != (
        steps_per_epoch
    ):
        raise UsageError(
            f"cannot resume {run.path}: it trained on {checkpoint['train_count']} examples, "
            f"this data has {train_count}"
        )


def _summary(status: str, history: History) -> dict[str, object]:
    final = history.final
    return {
        "status": status,
        "epochs_finished": len(history.epochs),
        "steps": len(history.step_losses),
        "diverged_at_step": history.diverged_at_step,
        "final": final.to_dict() if final is not None else None,
    }


def _all_finite(model: nn.Module) -> bool:
    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _progress_bar(
    epoch: int, epochs: int, total: int, initial: int, progress: bool, rank: int
) -> tqdm:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not progress or rank != 0,
    )


def _seed_all(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global RNGs (a fresh run's start)."""
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _rng_states() -> dict[str, object]:
    """The global RNG states as tensors and plain containers (``weights_only``-safe)."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
