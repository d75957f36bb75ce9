"""A whole training step recorded once as a CUDA graph and replayed for every batch.

On a GPU, a small network's step is bound by the host: each of its few hundred kernels
costs a Python call and a launch, and the GPU waits for them. A CUDA graph records the
launches of one step — forward, loss, backward, optimizer step — and replays them all with
one call, so the host cost per step nearly vanishes and the kernels' own speed shows.

The recipe (PyTorch's "whole-network capture"):

1. The first ``warmup`` steps run eagerly on a side stream. They are real training steps;
   they also create what a step creates lazily (the optimizer's momentum buffers, cuDNN's
   and cuBLAS's workspaces), which must exist before recording.
2. The next step is recorded: the batch is copied into static input tensors, and the
   graph's outputs (the loss, the hits) are static tensors too. Recording launches nothing,
   so the recorded step is then replayed once to do it.
3. Every later batch of the same shape is copied into the static inputs and replayed.
   A batch of another shape (an epoch's shorter last batch) runs eagerly; the eager step
   updates the same parameter, momentum and running-statistics tensors in place, so the
   graph stays valid.

Replaying runs the same kernels on the same data as the eager step, so the numbers are the
eager step's. Shapes must stay static, the host must not read the GPU inside a step, and
one process only (no DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GraphedStep"]


class GraphedStep:
    """One SGD step of ``net`` with ``optimizer``, replayed from a CUDA graph.

    Args:
        net: the model, on a CUDA device, in training mode.
        optimizer: its optimizer (any whose ``step`` launches kernels only; SGD does).
        warmup: eager steps before recording (at least 1).

    Calling it with a batch ``(x, y)`` — images ``(N, C, H, W)`` and labels ``(N,)`` on the
    model's device — trains on that batch and returns ``(loss, hits)``: the batch's mean
    cross-entropy and the number of correct predictions, as 0-d tensors on the device (not
    read by the host, so steps queue without waiting).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, warmup: int = 3) -> None:
        device = next(net.parameters()).device
        if device.type != "cuda":
            raise ValueError(
                f"CUDA graphs record GPU work, but the model is on {device}; "
                "use a CUDA device or train without CUDA graphs"
            )
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager step, got {warmup}")
        self.net = net
        self.optimizer = optimizer
        self.warmup = warmup
        self.eager_steps = 0
        self.replays = 0
        self._side = torch.cuda.Stream(device)
        self._shape: torch.Size | None = None  # the first batch's: the one to record
        self._graph: torch.cuda.CUDAGraph | None = None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._hits: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._shape is None:
            self._shape = x.shape
        if self._graph is None and self.eager_steps >= self.warmup and x.shape == self._shape:
            self._record(x, y)
        if self._graph is None or not self._fits(x, y):
            return self._eager(x, y)
        assert self._x is not None and self._y is not None  # recorded with the graph
        self._x.copy_(x, non_blocking=True)
        self._y.copy_(y, non_blocking=True)
        self._graph.replay()
        self.replays += 1
        assert self._loss is not None and self._hits is not None
        return self._loss.clone(), self._hits.clone()

    def _fits(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        assert self._x is not None and self._y is not None
        return x.shape == self._x.shape and y.shape == self._y.shape

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step itself: what is run eagerly and what is recorded."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.net(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (out.detach().argmax(dim=1) == y).sum()

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graph is not None:
            self.eager_steps += 1
            return self._step(x, y)
        # before recording: on a side stream, as the capture recipe requires
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            loss, hits = self._step(x, y)
        torch.cuda.current_stream().wait_stream(self._side)
        self.eager_steps += 1
        return loss, hits

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record one step on static copies of ``(x, y)``; the step is done by the first
        replay, in ``__call__``."""
        self._x, self._y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss, self._hits = self._step(self._x, self._y)
        self._graph = graph
