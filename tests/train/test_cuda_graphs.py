"""A training step replayed from a CUDA graph trains exactly as the eager step: the same
losses, hits and weights from the same start on the same batches, a short last batch
included. The GPU tests run where CUDA is (the device check, tools/gpu-bench.sh)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from normlab.bench.train import bench_train
from normlab.errors import UsageError
from normlab.models import LeNet
from normlab.train.cuda_graphs import GraphedStep

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_refuses_a_model_on_the_cpu() -> None:
    model = LeNet(norm="batch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA graphs record GPU work, but the model is on cpu"):
        GraphedStep(model, optimizer)


def test_bench_train_refuses_cuda_graphs_on_the_cpu() -> None:
    with pytest.raises(UsageError, match="--cuda-graphs needs a CUDA device, got --device cpu"):
        bench_train(steps=1, chunk=1, device="cpu", data="synthetic", cuda_graphs=True)


@cuda
def test_bench_train_measures_both_graphed_loops() -> None:
    result = bench_train(steps=20, chunk=10, device="cuda", data="synthetic", cuda_graphs=True)
    assert {"normlab-graphs", "torch-graphs"} <= set(result.images_per_second)
    assert "normlab-graphs/torch-graphs >= 1.1" in result.targets_met


def _eager_step(model, optimizer, x, y):  # type: ignore[no-untyped-def]
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), (out.argmax(dim=1) == y).sum()


@cuda
@pytest.mark.parametrize("norm", ["batch", "torch-batch", "layer", "group"])
def test_replayed_steps_train_as_the_eager_ones(norm: str) -> None:
    device = torch.device("cuda")
    eager = LeNet(norm=norm).to(device)
    graphed = copy.deepcopy(eager)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_graphed = torch.optim.SGD(graphed.parameters(), lr=0.05, momentum=0.9)
    step = GraphedStep(graphed, opt_graphed, warmup=2)
    sizes = [32] * 8 + [7] + [32] * 3  # a short batch after the graph is recorded
    for size in sizes:
        x = torch.randn(size, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (size,), device=device)
        want_loss, want_hits = _eager_step(eager, opt_eager, x, y)
        loss, hits = step(x, y)
        # the same kernels on the same data: float32's tolerances, with room for a
        # reduction order chosen per launch
        torch.testing.assert_close(loss, want_loss)
        assert int(hits) == int(want_hits)
    assert step.replays == len(sizes) - 2 - 1  # all but the warm-up and the short batch
    trained = graphed.state_dict()
    for name, want in eager.state_dict().items():
        torch.testing.assert_close(trained[name], want, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": "cpu"}, "--cuda-graphs records GPU work; use --device cuda"),
        ({"device": "cuda", "compile": True}, "drop --nproc-per-node and --compile"),
        ({"device": "cuda", "world_size": 2}, "drop --nproc-per-node and --compile"),
    ],
)
def test_config_refuses_cuda_graphs_where_they_cannot_run(settings: dict, message: str) -> None:
    from normlab.train.config import TrainConfig

    config = TrainConfig(cuda_graphs=True, **settings)
    if settings["device"] == "cuda" and not torch.cuda.is_available():
        # the device check would speak first; the graphs' own check is what is tested here
        with pytest.raises(UsageError, match=message):
            config._check_cuda_graphs()
        return
    with pytest.raises(UsageError, match=message):
        config.validate()


@cuda
def test_fit_with_cuda_graphs_trains_as_eager_fit() -> None:
    from normlab.data import synthetic_dataset
    from normlab.train.config import TrainConfig
    from normlab.train.engine import build_model, fit

    data = synthetic_dataset(200, 50, seed=0)  # 200 = 3 x 64 + 8: a short last batch
    histories = []
    for graphs in (False, True):
        config = TrainConfig(dataset="synthetic", device="cuda", epochs=2, cuda_graphs=graphs)
        histories.append(fit(build_model(config), data, config, progress=False))
    eager, graphed = histories
    torch.testing.assert_close(
        torch.tensor(graphed.step_losses), torch.tensor(eager.step_losses)
    )
