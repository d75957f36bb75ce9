"""``normlab bench layers|train``: quick runs, JSON output, tables, one-line errors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from normlab.cli.main import main


def test_layers_json_has_every_case_with_ratios_and_saved_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "layers", "--quick", "--shapes", "lenet", "--layers", "batch,lrn", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "layers" and report["settings"]["repeats"] == 3
    cases = [(r["module"], tuple(r["shape"])) for r in report["results"]]
    assert cases == [
        ("BatchNorm2d", (64, 16, 8, 8)),
        ("BatchNorm1d", (64, 120)),
        ("LocalResponseNorm", (64, 16, 8, 8)),
    ]
    for r in report["results"]:
        eager = r["ratio"]["eager"]
        seconds = r["seconds"]
        assert eager["of_medians"] == pytest.approx(
            seconds["ours"]["median"] / seconds["torch"]["median"]
        )
        assert eager["per_repeat"]["min"] <= eager["per_repeat"]["median"]
        assert r["ratio"]["compiled"] is None  # no --compile
        n, c = r["shape"][:2]
        assert r["saved_bytes"]["torch"] >= n * c * 4  # at least its input, float32
        assert set(r["targets_met"]) == {"eager", "memory"} and r["threads"] == 1
    batch = [r["ratio"]["eager"]["of_medians"] for r in report["results"][:2]]
    summary = report["summary"][0]
    assert (summary["layer"], summary["threads"], summary["shapes"]) == ("batch", 1, 2)
    assert summary["eager"]["median"] == pytest.approx(statistics.median(batch))
    assert summary["eager"]["worst"] == max(batch)
    assert [s["layer"] for s in report["summary"]] == ["batch", "lrn"]


def test_layers_table_shows_ratios_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "layers", "--quick", "--shapes", "lenet,tokens", "--layers", "rms"]
    assert main([*argv, "--thread-counts", "2,1"]) == 0
    out = capsys.readouterr().out
    assert "time ratio median [min-max]" in out and "thread counts 2, 1" in out
    rows = [row.split() for row in out.splitlines() if " rms " in row and " ms " not in row]
    rows = [row for row in rows if len(row) > 4 and row[3][0].isdigit() and "x" in row[3]]
    assert [(row[0], row[3]) for row in rows] == [
        (threads, shape) for threads in "21" for shape in ("64x16x8x8", "64x120", "64x50x128")
    ]
    assert "eager worst (shape)" in out


def test_layers_results_page_gets_a_section_per_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "bench-layers.md"
    argv = [
        "bench",
        "layers",
        "--quick",
        "--shapes",
        "lenet",
        "--layers",
        "group",
        "--repeats",
        "1",
    ]
    assert main([*argv, "--write-results", str(page), "--label", "one run"]) == 0
    capsys.readouterr()
    text = page.read_text()
    assert "## one run" in text and "| 1 | group | GroupNorm | torch.nn.GroupNorm | 2 |" in text
    assert main([*argv, "--write-results", str(tmp_path / "no" / "page.md")]) == 2
    assert "--write-results: no folder" in capsys.readouterr().err


def test_train_json_reports_the_three_candidates_and_speed_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "train", "--quick", "--data", "synthetic", "--steps", "8", "--chunk", "4"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "synthetic" and (report["steps"], report["chunk"]) == (8, 4)
    speeds = report["images_per_second"]
    assert set(speeds) == {"normlab", "torch", "original"}
    assert all(0 < s["min"] <= s["median"] <= s["max"] for s in speeds.values())
    ratio = report["speed_ratio"]["normlab/original"]["of_medians"]
    assert ratio == pytest.approx(speeds["normlab"]["median"] / speeds["original"]["median"])
    best = report["speed_ratio"]["normlab/original"]["of_best_chunks"]
    assert best == pytest.approx(speeds["normlab"]["max"] / speeds["original"]["max"])
    assert set(report["targets_met"]) == {"normlab/torch >= 0.95", "normlab/original >= 4"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["layers", "--repeats", "0"], "normlab bench: error: --repeats must be at least 1, got 0"),
        (["train", "--steps", "0"], "normlab bench: error: --steps must be at least 1, got 0"),
        (["layers", "--device", "tpu"], "normlab bench: error: unknown device 'tpu'"),
    ],
)
def test_bad_values_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cuda_without_cuda_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "train", "--device", "cuda"]) == 2
    assert "CUDA is not available; use cpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layers", "batchnorm"], "unknown layer 'batchnorm'; valid: batch,"),
        (["--layers", "batch,,group"], "--layers has an empty item in 'batch,,group'"),
        (["--shapes", "vgg"], "unknown shape family 'vgg'; valid: lenet, resnet, tokens"),
        (["--thread-counts", "1,0"], "--thread-counts must be at least 1, got 0"),
    ],
)
def test_unknown_layer_and_shape_family_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "layers", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bandwidth_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "bandwidth", "--quick", "--shape", "4", "8", "6", "6"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [4, 8, 6, 6] and report["dtype"] == "float32"
    copy = next(p for p in report["passes"] if p["name"] == "copy")
    assert copy["bytes"] == 2 * 4 * 8 * 6 * 6 * 4
    assert set(report["time_ratio"]) == {"forward", "forward+backward"}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "normlab forward+backward" in out and "normlab / torch.nn time: forward " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "4", "0", "6", "6"], "--shape needs four sizes N C H W, each >= 1"),
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    ],
)
def test_bandwidth_bad_values_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "bandwidth", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
