"""`distinct`: the values of a column in order of first appearance (its docstring example runs with the others,
under `--doctest-modules`)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from core.events import distinct


@pytest.mark.parametrize(("values", "expected"), [
    (["a", "a", "a"], ["a"]),
    (["a", "b", "a", "c"], ["a", "b", "c"]),
    (["a", None, "a"], ["a", None]),  # a null is a value of its own
    ([], []),
])
def test_distinct_keeps_the_order_of_first_appearance_over_chunks(values, expected):
    half = len(values) // 2
    assert distinct(pa.chunked_array([values[:half], values[half:]], pa.string())) == expected
    assert distinct(pa.array(values, pa.string())) == expected
