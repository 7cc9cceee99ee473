"""Every detector's docstring example runs (River style: a runnable example per estimator), and those of the
shared pieces the flow is built from and its bench."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["detectors.zscore", "detectors.moving_average", "detectors.cusum", "detectors.pca", "detectors.iforest",
           "detectors.hst", "detectors.golden", "detectors.fusion", "detectors.sensor_health", "detectors.autoencoder",
           "detectors.twin_residual", "detectors.soft_sensors", "detectors.transformer", "biopilot.events",
           "biopilot.eventtime", "sinks.delta", "biopilot.bench.pipeline", "sources.backpressure"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_example_runs(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
