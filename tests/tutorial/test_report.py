"""The tutorial's report: every figure embedded, the Markdown beside its PNGs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from normlab.data import synthetic_dataset
from normlab.tutorial.pipeline import TutorialConfig, run_tutorial
from normlab.tutorial.report import build_report, moving_average


def test_moving_average_closed_form() -> None:
    np.testing.assert_allclose(moving_average([1, 2, 3, 4, 5], 2), [1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 3), [2.0])
    np.testing.assert_allclose(moving_average([1, 2], 5), [1, 2])


@pytest.mark.parametrize("norms", [("batch", "torch-batch", "none"), ("none",)])
def test_report_embeds_every_figure(tmp_path, norms) -> None:
    config = TutorialConfig(dataset="synthetic", epochs=1, batch_size=64, norms=norms)
    data = synthetic_dataset(num_train=128, num_test=32)
    result = run_tutorial(config, data, tmp_path, progress=False)
    report = build_report(result, command=config.command())
    html = report.to_html()
    figures = (
        ["shift", "epoch-curves", "step-loss", "params"]
        if len(norms) == 3
        else ["shift", "epoch-curves"]
    )
    assert len(re.findall(r'src="data:image/png;base64,', html)) == len(figures)
    assert "http://" not in html and "https://" not in html
    assert config.command() in html
    markdown = report.write_markdown(tmp_path / "report.md").read_text()
    for name in figures:
        assert f"{name}.png" in markdown
        assert (tmp_path / f"{name}.png").is_file()


@pytest.mark.parametrize(
    ("code", "device", "sentence"),
    [
        ("kernels", "cpu", "normlab ran its fused CPU kernels (normlab.kernels)."),
        ("kernels", "cuda:0", "normlab ran its Triton kernels (normlab.kernels.triton)."),
        ("tensors", "cuda", "normlab ran its tensor code (normlab.functional)."),
    ],
)
def test_the_report_names_the_code_that_ran(code: str, device: str, sentence: str) -> None:
    from normlab.tutorial.report import _code_sentence

    assert _code_sentence(code, device) == sentence
