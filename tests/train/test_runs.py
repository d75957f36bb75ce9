"""Run directories: layout, config.json, metrics.jsonl, atomic checkpoints, errors."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest
import torch

from normlab import __version__
from normlab.errors import UsageError
from normlab.train.config import TrainConfig
from normlab.train.runs import Run


def test_create_writes_the_resolved_config(tmp_path: Path) -> None:
    config = TrainConfig(norm="group", lr=0.1, epochs=2)
    run = Run.create(tmp_path / "runs", "lenet-group", config, data_dir=tmp_path,
                     checkpoint_every=7, command=["normlab", "train"])  # fmt: skip
    assert run.path.parent == tmp_path / "runs"
    assert re.fullmatch(r"lenet-group-\d{8}-\d{6}", run.path.name)
    meta = json.loads((run.path / "config.json").read_text())
    assert meta["config"] == config.to_dict()
    assert meta["run"] == {"data_dir": str(tmp_path.resolve()), "checkpoint_every": 7}
    assert meta["versions"]["normlab"] == __version__
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["command"] == ["normlab", "train"]
    opened = Run.open(run.path)
    assert opened.config == config
    assert opened.checkpoint_every == 7
    assert opened.data_dir == str(tmp_path.resolve())


def test_same_name_in_the_same_second_gets_a_new_directory(tmp_path: Path) -> None:
    paths = {Run.create(tmp_path, "x", TrainConfig()).path for _ in range(3)}
    assert len(paths) == 3


def test_a_custom_config_mapping_is_recorded(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "sweep", {"grid": [0.1, 1.0]})
    assert Run.open(run.path).meta["config"] == {"grid": [0.1, 1.0]}
    with pytest.raises(UsageError, match="is not a training run"):
        _ = Run.open(run.path).config


def test_bad_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"run name 'a/b' must use only letters"):
        Run.create(tmp_path, "a/b", TrainConfig())
    with pytest.raises(UsageError, match=r"is not a directory"):
        Run.open(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"is not a run directory \(no config.json\)"):
        Run.open(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"cannot read .*config.json"):
        Run.open(tmp_path)


def test_metrics_append_read_and_rewrite(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "m", TrainConfig())
    assert run.read_metrics() == []
    run.append_metrics({"epoch": 1, "test_accuracy": 0.5})
    run.append_metrics({"epoch": 2, "test_accuracy": 0.75})
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert Run.open(run.path).read_metrics()[1] == {"epoch": 2, "test_accuracy": 0.75}
    run.write_metrics([{"epoch": 1, "test_accuracy": 0.5}])
    assert run.read_metrics() == [{"epoch": 1, "test_accuracy": 0.5}]


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "c", TrainConfig())
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 2,
        "rng": torch.get_rng_state(),
        "python": [3, list(range(5)), None],
    }
    run.save_checkpoint(state)
    # the file is loadable by torch itself with weights_only=True: no pickled classes
    loaded = torch.load(run.path / "checkpoint.pt", weights_only=True)
    assert torch.equal(loaded["model"]["weight"], model.weight)
    again = Run.open(run.path).load_checkpoint()
    assert again["epoch"] == 2 and again["python"] == [3, [0, 1, 2, 3, 4], None]
    assert torch.equal(again["rng"], state["rng"])
    fresh = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(again["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )


def test_a_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run.create(tmp_path, "atomic", TrainConfig())
    run.save_checkpoint({"epoch": 1, "w": torch.ones(3)})

    def dies_half_way(obj: object, handle: object, *args: object, **kwargs: object) -> None:
        handle.write(b"PK\x03\x04 half a zip file")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # as a kill would, mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = run.load_checkpoint()
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert list(run.path.glob(".*.tmp")) == []


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "stale", TrainConfig())
    (run.path / ".checkpoint-abc.tmp").write_bytes(b"torn")
    assert [p.name for p in run.remove_stale_temp_files()] == [".checkpoint-abc.tmp"]
    assert not (run.path / ".checkpoint-abc.tmp").exists()


def test_missing_or_damaged_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "none", TrainConfig())
    with pytest.raises(UsageError, match=r"has no checkpoint.pt yet"):
        run.load_checkpoint()
    torch.save({"step": torch.arange(1000)}, run.path / "checkpoint.pt")
    whole = (run.path / "checkpoint.pt").read_bytes()
    damaged = [whole[: len(whole) // 2], b"garbage" * 10, b"", pickle.dumps(object), b"\x80"]
    for content in [*damaged, pickle.dumps([1, 2])]:
        (run.path / "checkpoint.pt").write_bytes(content)
        with pytest.raises(UsageError, match=r"checkpoint .*checkpoint.pt is corrupt or trunc"):
            run.load_checkpoint()


def test_log_file_and_summary(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "log", TrainConfig())
    with run.logging_to_file():
        logging.getLogger("normlab.train.engine").info("epoch 1/5 done")
    logging.getLogger("normlab.train.engine").info("not logged: the handler is gone")
    text = (run.path / "train.log").read_text()
    assert "INFO normlab.train.engine: epoch 1/5 done" in text and "not logged" not in text
    assert run.read_summary() is None
    run.write_summary({"status": "finished", "steps": 10})
    assert Run.open(run.path).read_summary() == {"status": "finished", "steps": 10}
