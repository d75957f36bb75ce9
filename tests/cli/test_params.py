"""``normlab params``: the printed gamma/beta statistics are those of the checkpoint's
weights; the plot is written; bad run directories are one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normlab.cli.main import main
from normlab.data import synthetic_dataset
from normlab.train.config import TrainConfig
from normlab.train.engine import build_model, fit
from normlab.train.runs import Run

CONFIG = TrainConfig(
    dataset="synthetic", epochs=1, batch_size=32, train_subset=256, test_subset=32, lr=0.2
)
LAYERS = {"layers.1": 6, "layers.5": 16, "layers.10": 120, "layers.13": 84}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = Run.create(tmp_path_factory.mktemp("runs"), "params", CONFIG)
    data = synthetic_dataset(num_train=256, num_test=32)
    fit(build_model(CONFIG), data, CONFIG, run=run, progress=False)
    return run.path


def table_rows(out: str, title: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_tables_show_the_checkpoints_gamma_and_beta(trained_run: Path, capsys) -> None:
    assert main(["params", str(trained_run)]) == 0
    out = capsys.readouterr().out
    # the oracle: the raw tensors in the checkpoint, read by torch itself
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)["model"]
    for title, suffix, init in (("gamma", "weight", 1.0), ("beta", "bias", 0.0)):
        rows = table_rows(out, title)
        assert list(rows) == list(LAYERS)
        for layer, channels in LAYERS.items():
            values = state[f"{layer}.{suffix}"].double()
            assert (values - init).abs().max() > 1e-3  # training moved them: a real check
            cells = rows[layer]
            kind = "BatchNorm2d" if channels in (6, 16) else "BatchNorm1d"
            assert cells[1:3] == [kind, str(channels)]
            mean, std, low, high = (float(c) for c in cells[3:7])
            assert mean == pytest.approx(float(values.mean()), abs=6e-5)
            assert std == pytest.approx(float(values.std()), abs=6e-5)
            assert low == pytest.approx(float(values.min()), abs=6e-5)
            assert high == pytest.approx(float(values.max()), abs=6e-5)
            first = [float(c) for c in cells[7:11]]
            assert first == pytest.approx(values[:4].tolist(), abs=6e-4)
            assert cells[11:] == ["..."]
    assert "after epoch 1" in out.splitlines()[0]
    png = trained_run / "params.png"
    assert out.strip().splitlines()[-1] == f"plot: {png}"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_no_plot(trained_run: Path, tmp_path: Path, capsys) -> None:
    (trained_run / "params.png").unlink(missing_ok=True)
    assert main(["params", str(trained_run), "--no-plot"]) == 0
    assert "plot:" not in capsys.readouterr().out
    assert not (trained_run / "params.png").exists()


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["params", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["params", str(tmp_path)]) == 2
    assert "is not a run directory (no config.json)" in capsys.readouterr().err
    fresh = Run.create(tmp_path, "fresh", CONFIG)
    assert main(["params", str(fresh.path)]) == 2
    assert capsys.readouterr().err == (
        f"normlab params: error: {fresh.path} has no checkpoint.pt yet; the run saved none\n"
    )
    plain = Run.create(tmp_path, "plain", CONFIG.replace(norm="none"))
    assert main(["params", str(plain.path)]) == 2
    err = capsys.readouterr().err
    assert "trained with norm 'none': the model has no normalization layers" in err
    assert err.count("\n") == 1
