"""The API reference's griffe extension (docs/_griffe/runtime_docstrings.py): docstrings
completed at import time are read from the imported objects, and torch.nn's docstring
conventions become Google-style sections the reference renders."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _extension() -> ModuleType:
    path = ROOT / "docs" / "_griffe" / "runtime_docstrings.py"
    spec = importlib.util.spec_from_file_location("normlab_docs_runtime_docstrings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXTENSION = _extension()


def test_example_sections_hold_doctest_examples() -> None:
    for heading in ("Example:", "Example::", "Examples::", "Examples:"):
        doc = f"Summary.\n\n{heading}\n    >>> [m for m in x][0]\n    1\n"
        assert (
            EXTENSION.torch_style(doc)
            == "Summary.\n\nExamples:\n    >>> [m for m in x][0]\n    1\n"
        )


def test_an_args_entry_may_name_parameters_over_two_lines() -> None:
    doc = (
        "Args:\n    in_channels, out_channels,\n        kernel_size: as Conv2d's.\n"
        "    eps: added.\n"
    )
    assert EXTENSION.torch_style(doc) == (
        "Args:\n    in_channels, out_channels, kernel_size: as Conv2d's.\n    eps: added.\n"
    )


def test_sphinx_roles_are_code() -> None:
    doc = (
        "Returns :class:`~normlab.nn.BatchNorm2d`, :func:`normlab.nn.create_norm_layer`, :math:`C`."
    )
    assert EXTENSION.torch_style(doc) == (
        "Returns ``BatchNorm2d``, ``normlab.nn.create_norm_layer``, ``C``."
    )


def test_a_math_block_is_the_indented_formula() -> None:
    doc = "Summary.\n\n.. math::\n    y = x + 1\n\nMore.\n"
    assert EXTENSION.torch_style(doc) == "Summary.\n\n    y = x + 1\n\nMore.\n"


def test_prose_is_left_alone() -> None:
    doc = "An example: the mean, then the variance,\n    weighted: by n.\n"
    assert EXTENSION.torch_style(doc) == doc


def test_a_docstring_completed_at_import_is_read_from_the_object() -> None:
    import normlab.nn

    doc = EXTENSION._runtime_doc("normlab.nn:BatchNorm2d")  # its Args come from a shared body
    assert doc is not None and "Args:" in doc
    assert doc.startswith(normlab.nn.BatchNorm2d.__doc__.strip().splitlines()[0])
    doc = EXTENSION._runtime_doc("normlab.nn:SyncBatchNorm")  # {args} filled at import
    assert doc is not None and "{args}" not in doc and "num_features" in doc
    assert EXTENSION._runtime_doc("normlab.nn:NoSuchLayer") is None
    assert EXTENSION._runtime_doc("normlab.no_such_module:X") is None


def test_every_package_has_a_reference_page() -> None:
    """Each subpackage and public top-level module of normlab is documented by one of
    docs/reference/*.md (a ``::: normlab.<name>`` block), so a new package cannot be
    left out of the API reference."""
    source = ROOT / "src" / "normlab"
    public = {p.name for p in source.iterdir() if (p / "__init__.py").is_file()}
    public |= {p.stem for p in source.glob("*.py") if not p.stem.startswith("_")}
    pages = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "reference").glob("*.md")
    )
    documented = set(re.findall(r"^::: normlab\.(\w+)", pages, flags=re.MULTILINE))
    assert public - documented == set()
