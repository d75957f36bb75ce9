"""Training and evaluation: the tutorial's loop, lean, deterministic and resumable.

``fit`` trains with SGD with momentum on the cross-entropy loss
``L = -1/B sum_i log softmax(f(x_i))[y_i]`` over in-memory batches from
:func:`normlab.data.batches`, whose order depends only on ``(seed, epoch)``. Per epoch it
reports the mean training loss and accuracy over the epoch's examples, the test loss and
accuracy (:func:`evaluate`, eval mode) and the wall time.

With a :class:`~normlab.train.runs.Run`, ``fit`` checkpoints every ``run.checkpoint_every``
steps and at the end of every epoch, and resumes from the run's checkpoint when there is
one: model, optimizer, RNG states, the batches already done and the partial sums of the
epoch are restored, so a killed and resumed run produces exactly (bit for bit) the
metrics of an uninterrupted one.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.errors import UsageError
from normlab.models.lenet import LeNet
from normlab.train.config import TrainConfig

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
    bit (tested), ~3 % of a LeNet step less on CPU.
    """
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, foreach=True)


def load_data(config: TrainConfig, data_dir: str | None = None) -> Any:
    """The :class:`normlab.data.Dataset` ``config`` names, cut to its subsets.

    ``dataset="synthetic"`` builds the small learnable fake data (seed 0, so every model
    seed sees the same data); its sizes are the subsets when given.
    """
    from normlab import data as nd

    config.validate()
    if config.dataset == "synthetic":
        sizes = {}
        if config.train_subset is not None:
            sizes["num_train"] = config.train_subset
        if config.test_subset is not None:
            sizes["num_test"] = config.test_subset
        dataset = nd.synthetic_dataset(**sizes, seed=0)
    else:
        dataset = nd.load_dataset(config.dataset, data_dir=data_dir)
    if config.train_subset is not None or config.test_subset is not None:
        dataset = dataset.subset(train=config.train_subset, test=config.test_subset)
    return dataset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Any,
    labels: Any,
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
    from normlab.data import batches

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


def fit(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    *,
    run: Any | None = None,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    parallel: Any | None = None,
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
    from normlab import data as nd

    config.validate()
    device = torch.device(config.device)
    model.to(device)
    net = parallel.wrap(model) if parallel is not None else model
    net = torch.compile(net) if config.compile else net
    optimizer = make_optimizer(model, config)
    train_count = len(data.train_labels)
    if train_count == 0:
        raise UsageError("the training set is empty; check --train-subset")
    # A final batch of one image is dropped: batch statistics over one image are undefined
    # (torch.nn raises), and whatever the norm, every arm of a comparison sees the same batches.
    last = nd.final_batch_size(train_count, config.batch_size, world_size=world_size)
    drop_last = last == 1 and config.batch_size > 1
    steps_per_epoch = nd.num_batches(
        train_count, config.batch_size, rank=rank, world_size=world_size, drop_last=drop_last
    )
    total_steps = config.epochs * steps_per_epoch
    stop = total_steps if until_step is None else until_step
    if not isinstance(stop, int) or not 1 <= stop <= total_steps:
        raise UsageError(f"until_step must be in 1..{total_steps}, got {until_step!r}")
    if stop < total_steps and run is None:
        raise UsageError("until_step needs a run: the next call continues from its checkpoint")
    writer = run if run is not None and rank == 0 else None
    every = run.checkpoint_every if run is not None else 0
    # The data moves to the device once (47 MB of uint8 for Fashion-MNIST); a no-op on CPU.
    train_images, train_labels = data.train_images.to(device), data.train_labels.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)

    if run is not None and run.meta.get("kind", "train") == "train" and run.config != config:
        raise UsageError(
            f"the config given to fit differs from {run.path}/config.json; "
            "pass the run's own config (run.config)"
        )
    history = History(steps_per_epoch=steps_per_epoch)
    start_epoch, start_step = 0, 0
    partial = _Partial()
    if run is not None and run.has_checkpoint():
        checkpoint = run.load_checkpoint()
        _check_compatible(checkpoint, config, train_count, steps_per_epoch, run)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _set_rng_states(checkpoint["rng"])
        history = _history_from_state(checkpoint["history"])
        start_epoch, start_step = int(checkpoint["epoch"]), int(checkpoint["step_in_epoch"])
        partial = _Partial.from_state(checkpoint["partial"], history.step_losses)
        history.resumed_at_step = start_epoch * steps_per_epoch + start_step
        logger.info("resuming %s at epoch %d, step %d", run.path, start_epoch + 1, start_step)
        if writer is not None:  # the checkpoint is the truth: drop lines written after it
            writer.remove_stale_temp_files()
            writer.write_metrics([e.to_dict() for e in history.epochs])
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        _numpy_seed(config.seed)

    def save(epoch: int, step_in_epoch: int) -> None:
        if writer is None:
            return
        writer.save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "train_count": train_count,
                "steps_per_epoch": steps_per_epoch,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_states(),
                "history": _history_to_state(history),
                "partial": partial.to_state(),
            }
        )

    def diverge(step: int, reason: str) -> History:
        history.diverged, history.diverged_at_step = True, step
        epoch, in_epoch = divmod(step, steps_per_epoch)
        message = (
            f"training diverged: {reason} at step {step} (epoch {epoch + 1}, step "
            f"{in_epoch + 1} of {steps_per_epoch}); try a lower learning rate than {config.lr}"
        )
        if writer is not None:
            message += f"; the last good checkpoint is kept in {writer.path}"
            writer.write_summary(_summary("diverged", history))
        logger.warning(message)
        return history

    model.train()
    for epoch in range(start_epoch, config.epochs):
        if epoch * steps_per_epoch + start_step >= stop:
            break
        lr = float(optimizer.param_groups[0]["lr"])
        started = time.perf_counter()
        pending: list[torch.Tensor] = []
        correct = torch.zeros((), dtype=torch.int64, device=device)
        bar = _progress_bar(epoch, config.epochs, steps_per_epoch, start_step, progress, rank)
        first_step = epoch * steps_per_epoch
        stream = nd.batches(
            train_images,
            train_labels,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            start=start_step,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            device=device,
        )
        for step_in_epoch, (x, y) in enumerate(stream, start=start_step):
            optimizer.zero_grad(set_to_none=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
            size, hits = int(y.shape[0]), (out.detach().argmax(dim=1) == y).sum()
            if parallel is not None:  # the global batch's mean loss, hits and size
                loss, hits, size = parallel.reduce_step(loss, hits, size)
            pending.append(loss)
            partial.sizes.append(size)
            correct += hits
            if on_step is not None:
                on_step(
                    StepInfo(
                        first_step + step_in_epoch,
                        epoch + 1,
                        step_in_epoch,
                        loss,
                        model,
                        optimizer,
                        x,
                        y,
                    )
                )
            bar.update(1)
            done = step_in_epoch + 1
            stopping = first_step + done == stop and done < steps_per_epoch
            checkpoint_due = stopping or (
                every > 0 and done % every == 0 and done < steps_per_epoch
            )
            if done % READ_EVERY == 0 or checkpoint_due or done == steps_per_epoch:
                bad = _read_losses(pending, history, partial)  # one sync per READ_EVERY steps
                if bad is not None:
                    bar.close()
                    step, value = first_step + done - bad[0], bad[1]
                    return diverge(step, f"the loss is {value}")
                bar.set_postfix(loss=f"{history.step_losses[-1]:.4f}", refresh=False)
            if checkpoint_due:  # on every rank (same decisions); only rank 0 writes
                partial.correct += int(correct)
                correct.zero_()
                partial.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                if not _all_finite(model):
                    bar.close()
                    return diverge(first_step + done, "the weights are not finite")
                save(epoch, done)
                if stopping:
                    bar.close()
                    return history
        bar.close()
        bad = _read_losses(pending, history, partial)  # nothing left unless batches ran short
        if bad is not None:
            return diverge(first_step + len(partial.sizes) - bad[0], f"the loss is {bad[1]}")
        partial.correct += int(correct)
        train_seconds = partial.train_seconds + time.perf_counter() - started
        if not _all_finite(model):
            return diverge(first_step + steps_per_epoch, "the weights are not finite")
        eval_started = time.perf_counter()
        test_loss, test_accuracy = evaluate(
            model,
            test_images,
            test_labels,
            batch_size=config.eval_batch_size,
            device=device,
        )
        eval_seconds = time.perf_counter() - eval_started
        examples = sum(partial.sizes)
        metrics = EpochMetrics(
            epoch=epoch + 1,
            train_loss=math.fsum(v * n for v, n in zip(partial.losses, partial.sizes, strict=True))
            / examples,
            train_accuracy=partial.correct / examples,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            seconds=train_seconds + eval_seconds,
            lr=lr,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            steps=len(partial.sizes),
            examples=examples,
        )
        history.epochs.append(metrics)
        partial = _Partial()
        start_step = 0
        save(epoch + 1, 0)
        if writer is not None:
            writer.append_metrics(metrics.to_dict())
        logger.info(format_epoch(metrics, config.epochs))
        if on_epoch is not None:
            on_epoch(metrics)
    if writer is not None and stop == total_steps:
        writer.write_summary(_summary("finished", history))
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
@dataclass
class _Partial:
    """The running sums of the unfinished epoch, kept in checkpoints for exact resumes."""

    losses: list[float] = field(default_factory=list)  # this epoch's step losses so far
    sizes: list[int] = field(default_factory=list)  # batch size of each of those steps
    correct: int = 0
    train_seconds: float = 0.0

    def to_state(self) -> dict[str, Any]:
        return {
            "sizes": torch.tensor(self.sizes, dtype=torch.int64),
            "correct": self.correct,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], step_losses: list[float]) -> _Partial:
        sizes = [int(n) for n in state["sizes"].tolist()]
        losses = step_losses[len(step_losses) - len(sizes) :] if sizes else []
        return cls(losses, sizes, int(state["correct"]), float(state["train_seconds"]))


def _read_losses(
    pending: list[torch.Tensor], history: History, partial: _Partial
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


def _history_to_state(history: History) -> dict[str, Any]:
    state = history.to_dict()
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
    run: Any,
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


def _summary(status: str, history: History) -> dict[str, Any]:
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
) -> Any:
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


def _numpy_seed(seed: int) -> None:
    import numpy as np

    np.random.seed(seed)


def _rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain containers (``weights_only``-safe)."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
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
