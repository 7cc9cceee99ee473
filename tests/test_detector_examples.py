"""Every registered detector's module carries a runnable example (River style: one per estimator);
`--doctest-modules` (pyproject.toml) runs them, with the examples of every other module."""

from __future__ import annotations

import sys

import pytest

import detectors  # noqa: F401 - registers every detector
from detectors.base import REGISTRY


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_detector_module_has_a_docstring_example(name):
    module = sys.modules[REGISTRY[name].__module__]
    assert ">>>" in (module.__doc__ or ""), f"{module.__name__} (detector {name!r}) has no example"
