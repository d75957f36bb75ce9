"""``normlab check``: the table, the exit codes, the one-line errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import normlab.nn
from normlab.cli.main import main
from normlab.testing import parity


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_full_grid_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[header].split() == [
        "layer",
        "dtype",
        "configs",
        "forward",
        "grad",
        "buffers",
        "result",
        "oracle",
    ]
    rows = [line.split() for line in lines[header + 2 : header + 2 + 2 * len(parity.LAYERS)]]
    assert [(r[0], r[1]) for r in rows] == [
        (layer, dtype) for layer in parity.LAYERS for dtype in ("float32", "float64")
    ]
    for row in rows:
        assert int(row[2]) == len(parity.configurations([row[0]]))
        tolerance = 1e-5 if row[1] == "float32" else 1e-10
        assert all(float(v) <= tolerance for v in row[3:6]), row
        assert row[6] == "pass"
        oracles = dict.fromkeys(c.oracle_name for c in parity.configurations([row[0]]))
        assert " ".join(row[7:]) == " ".join("; ".join(oracles).split()), row
    codes = [line for line in lines if line.startswith("code: ")]
    assert len(codes) == 2  # the kernels' table, then the tensor code's
    assert "code: normlab's fused CPU kernels" in out and "code: normlab's tensor code" in out
    total = 2 * 2 * len(parity.GRID)
    assert f"all {total} checks pass" in out


def test_code_option_picks_one_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["check", "--dtype", "float64", "--layers", "BatchNorm2d", "--code", "tensors"]) == 0
    )
    out = capsys.readouterr().out
    codes = [line for line in out.splitlines() if line.startswith("code: ")]
    assert codes == ["code: normlab's tensor code (normlab.functional)"]
    configs = len(parity.configurations(["BatchNorm2d"]))
    assert f"all {configs} checks pass" in out


def test_kernels_without_the_library_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from normlab import kernels

    monkeypatch.setattr(kernels, "ops", lambda: None)
    assert main(["check", "--layers", "LayerNorm", "--code", "kernels"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make kernels" in err and "--code tensors" in err


def test_dtype_and_layers_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--dtype", "float64", "--layers", "GroupNorm, RMSNorm"]) == 0
    out = capsys.readouterr().out
    rows = [
        line.split()[:2]
        for line in out.splitlines()
        if line.split()[:1] in (["GroupNorm"], ["RMSNorm"])
    ]
    assert rows == [["GroupNorm", "float64"], ["RMSNorm", "float64"]] * 2  # once per code path
    assert "float32" not in out.split("layer")[1]


def test_unknown_layer_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--layers", "bogus"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("normlab check: error: unknown layer 'bogus'; valid layers:")
    assert "LayerNorm" in captured.err


@pytest.mark.parametrize(
    "device", ["nonsense", "cuda:7" if not torch.cuda.is_available() else "xla"]
)
def test_bad_device_is_one_line_and_exit_2(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--layers", "LayerNorm", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --device cpu" in err


def test_bad_dtype_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--dtype", "float16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_a_difference_fails_with_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = normlab.nn.RMSNorm.forward
    monkeypatch.setattr(normlab.nn.RMSNorm, "forward", lambda self, x: forward(self, x) * 1.001)
    assert main(["check", "--layers", "RMSNorm,LayerNorm", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    rms = next(line for line in out.splitlines() if line.startswith("RMSNorm "))
    layer = next(line for line in out.splitlines() if line.startswith("LayerNorm "))
    configs = len(parity.configurations(["RMSNorm"]))
    assert rms.split()[6:] == ["FAIL", f"({configs})", "torch.nn.RMSNorm"]
    assert layer.split()[6:] == ["pass", "torch.nn.LayerNorm"]
    assert "FAIL RMSNorm(6) on (8, 6) [float64]: training step 1 output: difference" in out
    assert "checks FAILED" in out
