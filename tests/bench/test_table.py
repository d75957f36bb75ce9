"""Terminal tables: padding, alignment, row checks."""

from __future__ import annotations

import pytest

from normlab.bench.table import format_table


def test_text_is_left_aligned_and_numbers_right_aligned() -> None:
    text = format_table(["name", "ms", "ratio"], [["a", "1.5", "0.9x"], ["bbb", "10", "12.25x"]])
    assert text.splitlines() == [
        "name   ms   ratio",
        "----  ---  ------",
        "a     1.5    0.9x",
        "bbb    10  12.25x",
    ]


def test_a_row_with_the_wrong_number_of_cells_is_an_error() -> None:
    with pytest.raises(ValueError, match="row has 1 cells for 2 columns"):
        format_table(["a", "b"], [["x"]])


def test_no_rows_gives_the_header_and_rule() -> None:
    assert format_table(["a", "bb"], []).splitlines() == ["a  bb", "-  --"]
