"""The shared vocabulary's docstring examples run: `distinct` (the values of a column in order of first
appearance), and the Delta appender's example."""

from __future__ import annotations

import doctest
import importlib

import pyarrow as pa
import pytest

from biopilot.events import distinct


@pytest.mark.parametrize("module", ["biopilot.events", "sinks.delta"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


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
