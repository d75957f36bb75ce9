"""``normlab bench train``: training throughput of the tutorial's LeNet, three ways, in one run.

Candidates, each training its own model on Fashion-MNIST (or synthetic data when the
real files are not found) with the tutorial's settings (batch 64, SGD lr 0.03, momentum
0.9):

- ``normlab``: ``LeNet(norm="batch")`` (normlab's batch norm) in normlab's lean loop -
  the body of :func:`normlab.train.engine.fit`: in-memory uint8 images, one gather and one
  normalisation per batch (:func:`normlab.data.batches`), forward, cross-entropy,
  backward, step, the accuracy count kept on the device.
- ``torch``: ``LeNet(norm="torch-batch")`` (``torch.nn.BatchNorm*``) in the same loop.
- ``original``: the course tutorial's own pipeline as normlab re-creates it
  (:mod:`normlab.bench.original`): its per-sample transform dataset,
  ``DataLoader(batch_size=64, shuffle=True)``, its ``BNLeNetScratch`` with its
  ``batch_norm`` function and its loop.
- ``normlab-compiled`` (with ``compiled=True``): ``normlab`` under ``torch.compile``, as
  ``normlab train --compile`` runs it.

One call of a candidate trains ``chunk`` steps; the candidates take turns, chunk after
chunk (:func:`normlab.bench.timing.measure`, balanced orders), so machine noise hits all of
them. Throughput is ``chunk * 64 / seconds``; the ratios are of speeds (above 1: the
first is faster).

The original's moving averages keep every step's autograd graph alive (the memory grows
with every step). To bound the memory of a long benchmark, its moving averages are detached
before each of its chunks, outside the clock; within a chunk it runs exactly as the course
tutorial does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from normlab.bench import original
from normlab.bench.timing import Ratio, Summary, compare, measure
from normlab.errors import UsageError

BATCH_SIZE = 64  # the tutorial's


@dataclass(frozen=True)
class TrainResult:
    """Images per second of each candidate (one value per chunk) and the speed ratios."""

    data: str  # "fashion-mnist" or "synthetic"
    steps: int  # timed steps per candidate
    chunk: int  # steps per timed call
    images_per_second: dict[str, Summary]  # min / median / max over chunks
    speedup: dict[str, Ratio]  # "normlab/torch", "normlab/original", "torch/original"

    @property
    def targets_met(self) -> dict[str, bool]:
        """normlab's training targets: >= 0.95x torch, >= 4x the original pipeline."""
        targets = {
            "normlab/torch >= 0.95": self.speedup["normlab/torch"].of_medians >= 0.95,
            "normlab/original >= 4": self.speedup["normlab/original"].of_medians >= 4.0,
        }
        graphs = self.speedup.get("normlab-graphs/torch-graphs")
        if graphs is not None:  # without the host's cost, normlab's kernels must show
            targets["normlab-graphs/torch-graphs >= 1.1"] = graphs.of_medians >= 1.1
        return targets


DATA_CHOICES = ("auto", "fashion-mnist", "synthetic")


def training_images(
    data: str = "auto", data_dir: str | None = None
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(name, uint8 images (N, 28, 28), int64 labels (N,))`` to train on.

    Args:
        data: ``fashion-mnist`` (an error when not found), ``synthetic`` (6000 generated
            images), or ``auto``: Fashion-MNIST when found, else synthetic.
        data_dir: where to look for Fashion-MNIST first.
    """
    from normlab import data as nd

    if data not in DATA_CHOICES:
        raise UsageError(f"unknown data {data!r}; valid: {', '.join(DATA_CHOICES)}")
    if data != "synthetic":
        try:
            dataset = nd.load_dataset("fashion-mnist", data_dir=data_dir, verify=False)
            return dataset.name, dataset.train_images, dataset.train_labels
        except nd.DataNotFoundError:
            if data == "fashion-mnist":
                raise
    dataset = nd.synthetic_dataset(num_train=6000, num_test=10, seed=0)
    return dataset.name, dataset.train_images, dataset.train_labels


def _lean_chunk(
    norm: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: str,
    seed: int,
    compiled: bool = False,
    cuda_graphs: bool = False,
) -> Callable[[int], None]:
    """``run(steps)``: normlab's training loop (the body of ``engine.fit``) for ``steps``;
    with ``compiled``, the model is ``torch.compile``-d as ``fit`` does for ``--compile``;
    with ``cuda_graphs``, each step is replayed from a CUDA graph
    (:class:`normlab.train.cuda_graphs.GraphedStep`)."""
    from normlab import data as nd
    from normlab.train.config import TrainConfig
    from normlab.train.cuda_graphs import GraphedStep
    from normlab.train.engine import READ_EVERY, build_model, make_optimizer

    config = TrainConfig(norm=norm, device=device, seed=seed, compile=compiled)
    model = build_model(config)
    optimizer = make_optimizer(model, config)
    net = torch.compile(model) if compiled else model
    graphed = GraphedStep(net, optimizer) if cuda_graphs else None
    images, labels = images.to(device), labels.to(device)
    correct = torch.zeros((), dtype=torch.int64, device=device)

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            yield from nd.batches(
                images, labels, BATCH_SIZE, shuffle=True, seed=seed, epoch=epoch, device=device
            )
            epoch += 1

    source = stream()
    model.train()

    pending: list[torch.Tensor] = []

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y = next(source)
            if graphed is not None:
                loss, hits = graphed(x, y)
            else:
                optimizer.zero_grad(set_to_none=True)
                out = net(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                optimizer.step()
                hits = (out.detach().argmax(dim=1) == y).sum()
            pending.append(loss.detach())
            correct.add_(hits)
            if len(pending) == READ_EVERY:  # fit reads the losses in one sync per 50 steps
                values = torch.stack(pending).tolist()
                pending.clear()
                if not all(math.isfinite(v) for v in values):
                    raise UsageError(f"bench train: {norm} diverged (loss {values})")

    return run


def _original_chunk(
    images: torch.Tensor, labels: torch.Tensor, device: str, seed: int
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``(run(steps), release())``: the course tutorial's pipeline (per-sample transforms,
    DataLoader, its BN), and the detaching of its moving averages (see the module docstring)."""
    original.device = torch.device(device)
    model, criterion, optimizer = original.tutorial_setup(seed)
    torch.manual_seed(seed)  # the DataLoader's shuffle draws from the global generator
    source = original.endless(original.tutorial_loader(images.cpu(), labels.cpu()))
    norms = [m for m in model.modules() if isinstance(m, original.BatchNorm)]

    def run(steps: int) -> None:
        original.train_steps(model, source, criterion, optimizer, steps)

    def release() -> None:
        for m in norms:
            m.moving_mean, m.moving_var = m.moving_mean.detach(), m.moving_var.detach()

    return run, release


def _speed(images: int, seconds: Summary) -> Summary:
    """Images per second from seconds per chunk: the fastest chunk gives the maximum, and
    the median is ``images / median(seconds)``, so speed ratios equal time ratios."""
    return Summary(images / seconds.max, images / seconds.median, images / seconds.min)


def bench_train(
    steps: int = 600,
    chunk: int = 25,
    device: str = "cpu",
    data: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    images: tuple[str, torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
    compiled: bool = False,
    cuda_graphs: bool = False,
) -> TrainResult:
    """Measure training throughput of the three candidates, interleaved by chunks.

    Args:
        steps: timed training steps per candidate (rounded up to whole chunks).
        chunk: steps per timed call; the candidates alternate every chunk.
        device: where normlab's and torch's loops run (the original follows the course tutorial:
            its model on ``device``, its DataLoader on the CPU).
        data, data_dir: see :func:`training_images`.
        seed: model initialisation and batch order.
        images: ``(name, images, labels)`` to use instead of loading (tests).
        progress: a tqdm bar (in steps) on stderr.
        compiled: also measure ``normlab-compiled``: normlab's LeNet under ``torch.compile``
            (compiling takes a minute or more the first time; the warm-up chunk does it).
        cuda_graphs: also measure ``normlab-graphs`` and ``torch-graphs``: both LeNets with
            each training step replayed from a CUDA graph (a CUDA device only).
    """
    if cuda_graphs and torch.device(device).type != "cuda":
        raise UsageError(f"--cuda-graphs needs a CUDA device, got --device {device}")
    if steps < 1 or chunk < 1:
        raise UsageError(f"steps and chunk must be at least 1, got steps={steps}, chunk={chunk}")
    name, train_images, train_labels = images or training_images(data, data_dir)
    if len(train_images) < BATCH_SIZE:
        raise UsageError(f"need at least {BATCH_SIZE} training images, got {len(train_images)}")
    runs = {
        "normlab": _lean_chunk("batch", train_images, train_labels, device, seed),
        "torch": _lean_chunk("torch-batch", train_images, train_labels, device, seed),
    }
    runs["original"], release = _original_chunk(train_images, train_labels, device, seed)
    pairs = [("normlab", "torch"), ("normlab", "original"), ("torch", "original")]
    if compiled:
        runs["normlab-compiled"] = _lean_chunk(
            "batch", train_images, train_labels, device, seed, compiled=True
        )
        pairs += [("normlab-compiled", "torch"), ("normlab-compiled", "original")]
    if cuda_graphs:
        for norm, key in (("batch", "normlab-graphs"), ("torch-batch", "torch-graphs")):
            runs[key] = _lean_chunk(norm, train_images, train_labels, device, seed,
                                    cuda_graphs=True)  # fmt: skip
        pairs += [("normlab-graphs", "torch-graphs"), ("normlab-graphs", "torch")]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    rounds = -(-steps // chunk)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(rounds + 1) * chunk * len(runs), desc="bench train", unit="step",
                   leave=False)  # fmt: skip

    def timed(run: Callable[[int], None]) -> Callable[[], None]:
        def call() -> None:
            run(chunk)
            if bar is not None:
                bar.update(chunk)

        return call

    try:
        measurement = measure(
            {key: timed(run) for key, run in runs.items()},
            repeats=rounds,
            warmup=1,
            number=1,
            sync=sync,
            before={"original": release},
        )
    finally:
        if bar is not None:
            bar.close()
    per_second = {key: _speed(chunk * BATCH_SIZE, measurement[key].summary) for key in runs}
    # Time ratio b/a is the speed ratio a/b.
    speedup = {f"{a}/{b}": compare(measurement, b, a) for a, b in pairs}
    return TrainResult(name, rounds * chunk, chunk, per_second, speedup)
