"""The batch-normalization tutorial end to end: what ``normlab tutorial`` runs and reports.

The course tutorial (a notebook on batch normalization) shows covariate shift on two
Gaussian samples, then trains LeNet on Fashion-MNIST with its own batch norm and with
``torch.nn``'s and prints the learned gamma/beta. This module does the same, right and measured:

1. the covariate-shift demo (:mod:`normlab.lab.experiments.shift`);
2. LeNet trained with the tutorial's settings (SGD lr 0.03, momentum 0.9, batch 64,
   5 epochs) and one seed, once per arm: normlab's batch norm, torch.nn's batch norm and
   no normalization. The arms start from the same conv/linear weights and see the same
   batches, so normlab's and torch's loss curves must overlap: the largest per-step
   difference of their training losses is reported;
3. per arm: test accuracy, train loss, seconds per epoch and peak memory, and the
   learned gamma/beta of every norm layer.

:func:`run_tutorial` returns the data; :func:`build_report` turns it into a
:class:`~normlab.report.Report`; the CLI (``normlab.cli.tutorial``) wires them.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from normlab.errors import UsageError
from normlab.lab.experiments.shift import ShiftResult, covariate_shift
from normlab.lab.params import NormParams, norm_parameters
from normlab.train.config import TrainConfig
from normlab.train.engine import (
    EpochMetrics,
    History,
    build_model,
    fit,
    saved_history,
    steps_per_epoch,
)
from normlab.train.resources import peak_rss_bytes, reset_peak_rss
from normlab.train.runs import CONFIG_FILE, Run

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from normlab.data import Dataset

ARM_LABELS = {
    "batch": "normlab BatchNorm",
    "torch-batch": "torch.nn BatchNorm",
    "none": "no normalization",
}
REFERENCE_PAIR = ("batch", "torch-batch")  # the two arms whose curves must overlap


@dataclass(frozen=True)
class TutorialConfig:
    """The tutorial's settings; every default is the course notebook's."""

    dataset: str = "fashion-mnist"  # the notebook's dataset (mnist works too)
    epochs: int = 5  # the notebook's num_epochs
    batch_size: int = 64  # the notebook's DataLoader batch size
    lr: float = 0.03  # the notebook's SGD learning rate
    momentum: float = 0.9  # the notebook's SGD momentum
    seed: int = 0  # one seed: weights and batch order of every arm
    device: str = "cpu"
    train_subset: int | None = None  # first N training images (None: all 60000)
    test_subset: int | None = None  # first N test images (None: all 10000)
    compile: bool = False  # torch.compile the model
    cuda_graphs: bool = False  # replay each training step from a CUDA graph
    norms: tuple[str, ...] = ("batch", "torch-batch", "none")  # the arms, in order

    def train_config(self, norm: str) -> TrainConfig:
        """The :class:`TrainConfig` of one arm (validated)."""
        config = TrainConfig(
            dataset=self.dataset,
            norm=norm,
            lr=self.lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            epochs=self.epochs,
            seed=self.seed,
            device=self.device,
            train_subset=self.train_subset,
            test_subset=self.test_subset,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
        )
        config.validate()
        return config

    def validate(self) -> None:
        if not self.norms:
            raise UsageError("the tutorial needs at least one norm arm")
        if len(set(self.norms)) != len(self.norms):
            raise UsageError(f"norm arms repeat: {', '.join(self.norms)}")
        for norm in self.norms:
            self.train_config(norm)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["norms"] = list(self.norms)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TutorialConfig:
        """The config :meth:`to_dict` wrote (a tutorial run's ``config.json``), validated."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown tutorial setting(s) {', '.join(unknown)}")
        config = cls(**{**values, "norms": tuple(values.get("norms", cls.norms))})
        config.validate()
        return config

    def command(self) -> str:
        """The ``normlab tutorial`` command line that reproduces this configuration."""
        parts, defaults = ["normlab tutorial"], TutorialConfig().to_dict()
        for name, value in self.to_dict().items():
            if value != defaults[name]:
                flag = "--" + name.replace("_", "-")
                if isinstance(value, bool):
                    parts.append(flag)
                else:
                    text = ",".join(value) if isinstance(value, list) else str(value)
                    parts.append(f"{flag} {text}")
        return " ".join(parts)


@dataclass
class ArmResult:
    """One trained arm of the tutorial."""

    norm: str
    history: History
    peak_memory_bytes: int  # peak resident memory of the process while this arm trained
    params: list[NormParams]  # learned gamma/beta of each norm layer (empty for "none")
    run_dir: Path  # the arm's run directory (checkpoint, metrics): `normlab params` reads it

    @property
    def label(self) -> str:
        return ARM_LABELS.get(self.norm, self.norm)

    @property
    def final(self) -> EpochMetrics:
        if self.history.final is None:
            raise ValueError(f"arm {self.norm!r} finished no epoch")
        return self.history.final

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch (evaluation excluded)."""
        epochs = self.history.epochs
        return sum(e.train_seconds for e in epochs) / len(epochs) if epochs else math.nan


@dataclass
class TutorialResult:
    """Everything ``normlab tutorial`` measured."""

    config: TutorialConfig
    shift: ShiftResult
    arms: list[ArmResult] = field(default_factory=list)
    workers: int = 1  # processes training the arms at once (1: arm after arm, in this process)
    code: str = "tensors"  # normlab's code path: "kernels" (fused CPU loops) or "tensors"

    def arm(self, norm: str) -> ArmResult | None:
        return next((a for a in self.arms if a.norm == norm), None)

    @property
    def step_loss_gap(self) -> float | None:
        """max_k |loss_k(normlab BN) - loss_k(torch BN)| over all training steps, or None
        when either arm is missing."""
        ours, theirs = (self.arm(n) for n in REFERENCE_PAIR)
        if ours is None or theirs is None:
            return None
        return max_abs_difference(ours.history.step_losses, theirs.history.step_losses)


def max_abs_difference(a: list[float], b: list[float]) -> float:
    """``max_k |a_k - b_k|`` over the common steps (inf when one is non-finite)."""
    count = min(len(a), len(b))
    if count == 0:
        raise ValueError("no common steps to compare")
    return max(abs(x - y) if math.isfinite(x - y) else math.inf for x, y in zip(a, b, strict=False))


def max_parameter_difference(a: list[NormParams], b: list[NormParams]) -> float | None:
    """``max |a - b|`` over the gamma and beta of matching layers; None if they do not match."""
    if len(a) != len(b) or not a:
        return None
    gaps = []
    for x, y in zip(a, b, strict=True):
        for mine, theirs in ((x.gamma, y.gamma), (x.beta, y.beta)):
            if (mine is None) != (theirs is None) or (
                mine is not None and mine.shape != theirs.shape
            ):
                return None
            if mine is not None:
                gaps.append(float((mine - theirs).abs().max()))
    return max(gaps, default=None)


EpochCallback = Callable[[str, EpochMetrics], None]


def train_arm(
    config: TutorialConfig,
    norm: str,
    data: Dataset,
    run_dir: Path,
    *,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> ArmResult:
    """Train one arm (``norm``) into its own run directory inside ``run_dir``; an arm an
    earlier call left there continues from its checkpoint (:func:`open_arm_run`)."""
    train_config = config.train_config(norm)
    arm_run = open_arm_run(config, norm, run_dir)
    model = build_model(train_config)
    reset_peak_rss()
    history = fit(
        model,
        data,
        train_config,
        run=arm_run,
        progress=progress,
        on_epoch=None if on_epoch is None else (lambda metrics: on_epoch(norm, metrics)),
    )
    return ArmResult(
        norm=norm,
        history=history,
        peak_memory_bytes=peak_rss_bytes(),
        params=norm_parameters(model),
        run_dir=arm_run.path,
    )


def open_arm_run(config: TutorialConfig, norm: str, run_dir: Path) -> Run:
    """The run directory of arm ``norm`` inside ``run_dir``: the one an earlier, interrupted
    tutorial made there, or a new one (checkpoints at epoch ends only)."""
    found = _find_arm_run(norm, run_dir)
    if found is not None:
        return found
    return Run.create(run_dir, norm, config.train_config(norm), checkpoint_every=0)


def saved_arms(config: TutorialConfig, run_dir: Path) -> dict[str, History]:
    """What each arm of an earlier, interrupted tutorial in ``run_dir`` had saved (arms
    that had not started are left out)."""
    found = {norm: _find_arm_run(norm, run_dir) for norm in config.norms}
    return {norm: saved_history(arm) for norm, arm in found.items() if arm is not None}


def _find_arm_run(norm: str, run_dir: Path) -> Run | None:
    for path in sorted(run_dir.glob(f"{norm}-*/{CONFIG_FILE}")):
        arm = Run.open(path.parent)
        if arm.name == norm:
            return arm
    return None


_WORKER_DATA: Any = None  # the dataset, once per worker process (see _init_worker)


def _init_worker(data: Dataset) -> None:
    """A worker's set-up: the dataset, one torch thread, the caching CPU allocator.

    A worker ignores Ctrl-C (the terminal sends it to the whole process group) and ends at
    SIGTERM: the main process decides, and ends its workers itself when interrupted.
    """
    from normlab import kernels

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    global _WORKER_DATA
    _WORKER_DATA = data
    torch.set_num_threads(1)
    kernels.cache_cpu_memory()


@dataclass
class _PieceDone:
    """What a worker sends back after training one piece of an arm."""

    history: History
    peak_memory_bytes: int
    params: list[NormParams]


def _train_until(config: TutorialConfig, norm: str, run_path: Path, step: int) -> _PieceDone:
    """In a worker: continue the arm's run from its checkpoint until ``step`` steps."""
    run = Run.open(run_path)
    model = build_model(config.train_config(norm))
    reset_peak_rss()
    history = fit(model, _WORKER_DATA, run.config, run=run, progress=False, until_step=step)
    return _PieceDone(history, peak_rss_bytes(), norm_parameters(model))


def _train_arms_in_workers(
    config: TutorialConfig,
    data: Dataset,
    run_dir: Path,
    workers: int,
    on_epoch: EpochCallback | None,
) -> list[ArmResult]:
    """Train the arms half an epoch at a time in ``workers`` processes.

    Three arms of five epochs on two cores: arm by arm, the third arm would train alone at
    the end while a core idles. In pieces of half an epoch, the arm with the most steps
    left goes next, and both cores work until the last piece. Each piece continues its
    arm's run from the checkpoint the previous one wrote, which gives exactly the numbers
    of an uninterrupted run (``fit``'s ``until_step``).
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    runs = {norm: open_arm_run(config, norm, run_dir) for norm in config.norms}
    per_epoch = steps_per_epoch(len(data.train_labels), config.batch_size)
    total = config.epochs * per_epoch
    saved = {norm: saved_history(arm) for norm, arm in runs.items()}  # an earlier call's
    done = {norm: len(history.step_losses) for norm, history in saved.items()}  # steps
    epochs_reported = {norm: len(history.epochs) for norm, history in saved.items()}
    finished: dict[str, _PieceDone] = {}
    peaks = dict.fromkeys(config.norms, 0)
    running: dict[Future[_PieceDone], tuple[str, int]] = {}

    def next_arm() -> str | None:
        busy = {norm for norm, _ in running.values()}
        idle = [n for n in config.norms if n not in busy and n not in finished]
        return max(idle, key=lambda n: total - done[n], default=None)  # first on ties

    def piece_end(norm: str) -> int:
        """Half an epoch on, never across the end of an epoch (a finished arm's piece
        trains nothing and brings its results back)."""
        epoch_end = (done[norm] // per_epoch + 1) * per_epoch
        return min(done[norm] + (per_epoch + 1) // 2, epoch_end, total)

    # fork, not spawn: the workers start at once with torch imported and the data shared.
    # Safe here: this process runs one torch thread, so there is no OpenMP pool to inherit.
    # CUDA cannot be used in a forked child once the parent has touched it: spawn there.
    forkable = (
        torch.get_num_threads() == 1
        and sys.platform.startswith("linux")
        and torch.device(config.device).type == "cpu"
    )
    method = "fork" if forkable else "spawn"
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(data,),
    ) as pool:
        try:
            while True:
                while len(running) < workers and (norm := next_arm()) is not None:
                    end = piece_end(norm)
                    future = pool.submit(_train_until, config, norm, runs[norm].path, end)
                    running[future] = (norm, end)
                if not running:
                    break
                completed, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in completed:
                    (norm, end), outcome = running.pop(future), future.result()
                    done[norm] = end
                    peaks[norm] = max(peaks[norm], outcome.peak_memory_bytes)
                    epochs = outcome.history.epochs
                    if on_epoch is not None and len(epochs) > epochs_reported[norm]:
                        on_epoch(norm, epochs[-1])
                    epochs_reported[norm] = len(epochs)
                    if outcome.history.diverged or end == total:
                        finished[norm] = outcome
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the arms' checkpoints are whole
            _end_workers(pool)
            raise
    return [
        ArmResult(
            norm=norm,
            history=finished[norm].history,
            peak_memory_bytes=peaks[norm],
            params=finished[norm].params,
            run_dir=runs[norm].path,
        )
        for norm in config.norms
    ]


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s workers at once and reap them, a second Ctrl-C notwithstanding.

    A worker killed mid-piece leaves its arm's last checkpoint whole (atomic writes) and at
    most a temporary file, which the resume removes. ``ProcessPoolExecutor`` can terminate
    its workers only from Python 3.14 on; before, its processes are reached through
    ``_processes``.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        if hasattr(pool, "terminate_workers"):
            pool.terminate_workers()
        else:
            processes = list((pool._processes or {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def run_tutorial(
    config: TutorialConfig,
    data: Dataset,
    run_dir: Path,
    *,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    workers: int = 1,
) -> TutorialResult:
    """Run the covariate-shift demo and train every arm of ``config``.

    Args:
        config: the settings (the tutorial's by default).
        data: a :class:`normlab.data.Dataset` (already cut to the subsets).
        run_dir: the tutorial's run directory; each arm gets a run directory inside it.
            Arms an earlier, interrupted call left there continue from their checkpoints
            (a finished arm trains no more), to the numbers of an uninterrupted call.
        progress: tqdm bars while training (one worker only).
        on_epoch: called in this process as ``on_epoch(norm, metrics)`` after every epoch
            of every arm.
        workers: processes training at once, each with one torch thread, taking the arms'
            half-epoch pieces in turn (:func:`_train_arms_in_workers`; 1: arm after arm in
            this process). Every piece then shares the machine with another, so the arms'
            seconds per epoch compare fairly.
    """
    config.validate()
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    result = TutorialResult(config=config, shift=covariate_shift(seed=config.seed))
    result.workers = min(workers, len(config.norms))
    result.code = code_path(config.device)
    if result.workers == 1:
        for norm in config.norms:
            arm = train_arm(config, norm, data, run_dir, progress=progress, on_epoch=on_epoch)
            result.arms.append(arm)
    else:
        result.arms = _train_arms_in_workers(config, data, run_dir, result.workers, on_epoch)
    return result


def code_path(device: str) -> str:
    """Which normlab code trains on ``device``: ``kernels`` (:mod:`normlab.kernels`, eager
    CPU) or ``tensors`` (:mod:`normlab.functional`'s tensor code)."""
    from normlab import kernels

    return "kernels" if kernels.runs_on(device) else "tensors"


def summary_rows(result: TutorialResult) -> list[dict[str, object]]:
    """One row per arm: label, test accuracy (%), train loss, s/epoch, peak memory (bytes)."""
    rows: list[dict[str, object]] = []
    for arm in result.arms:
        final = arm.history.final
        rows.append(
            {
                "arm": arm.label,
                "norm": arm.norm,
                "test_accuracy": None if final is None else 100.0 * final.test_accuracy,
                "test_loss": None if final is None else final.test_loss,
                "train_loss": None if final is None else final.train_loss,
                "seconds_per_epoch": arm.seconds_per_epoch,
                "peak_memory": arm.peak_memory_bytes,
                "status": "diverged" if arm.history.diverged else "finished",
            }
        )
    return rows


def conclusions(result: TutorialResult) -> list[str]:
    """Sentences computed from the results (never written in advance)."""
    sentences = []
    epochs = result.config.epochs
    for arm in result.arms:
        if arm.history.diverged:
            sentences.append(
                f"{arm.label} diverged at step {arm.history.diverged_at_step}: its loss "
                "stopped being finite."
            )
    ours, theirs, plain = (result.arm(n) for n in ("batch", "torch-batch", "none"))
    if ours is not None and plain is not None and ours.history.final and plain.history.final:
        a, b = 100 * ours.final.test_accuracy, 100 * plain.final.test_accuracy
        verb = "beat" if a > b else "did not beat"
        sentences.append(
            f"After {epochs} epoch{'' if epochs == 1 else 's'}, LeNet with batch norm reached "
            f"{a:.1f} % test accuracy and "
            f"{verb} the same network without normalization ({b:.1f} %)."
        )
        first_gap = 100 * (
            ours.history.epochs[0].test_accuracy - plain.history.epochs[0].test_accuracy
        )
        if len(ours.history.epochs) > 1:
            trend = "narrowed" if abs(a - b) < abs(first_gap) else "did not narrow"
            sentences.append(
                f"The gap was {first_gap:+.1f} points after the first epoch and {a - b:+.1f} "
                f"after the last: it {trend} with training."
            )
    gap = result.step_loss_gap
    if gap is not None and ours is not None and theirs is not None:
        steps = min(len(ours.history.step_losses), len(theirs.history.step_losses))
        a, b = 100 * ours.final.test_accuracy, 100 * theirs.final.test_accuracy
        sentences.append(
            f"normlab's batch norm and torch.nn's started from the same weights and saw the same "
            f"{steps} batches: their training losses differ by at most {gap:.2g} at any step, "
            f"and their test accuracies are {a:.2f} % and {b:.2f} %."
        )
        speed = theirs.seconds_per_epoch / ours.seconds_per_epoch
        params_gap = max_parameter_difference(ours.params, theirs.params)
        if params_gap is not None:
            sentences.append(
                f"Their learned gamma and beta differ by at most {params_gap:.2g} after training."
            )
        sentences.append(
            f"normlab's batch norm trained at {ours.seconds_per_epoch:.2f} s per epoch, "
            f"{speed:.2f}x the speed of torch.nn's ({theirs.seconds_per_epoch:.2f} s)."
        )
    if not sentences:
        sentences = [
            f"{arm.label} reached {100 * arm.final.test_accuracy:.1f} % test accuracy after "
            f"{len(arm.history.epochs)} epochs."
            for arm in result.arms
            if arm.history.final is not None
        ]
    return sentences
