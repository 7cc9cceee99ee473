"""The detector interface (docs/DESIGN.md, "Detector interface") and the registry.

A detector is plain Python: `init_state(signal_names)` gives a per-reactor state that pickles (Bytewax
recovery), and `score_learn(state, ts, X)` scores a batch of ticks in time order and learns from it. The score
of row i depends only on rows <= i. `X` is float64 [n, n_signals]; NaN is a missing reading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

# the signals detectors see: levels, plus increments of the totalisers (a cumulative total is not stationary)
DETECTOR_SIGNALS: tuple[str, ...] = (
    "do_pct", "ph", "temp_c", "agitation_rpm", "air_sccm", "o2_sccm", "co2_sccm", "base_ml_per_tick",
    "feed_ml_per_tick", "our_mmol_l_h", "cer_mmol_l_h", "capacitance_pf_cm",
)


class Detector(Protocol):
    name: str

    def init_state(self, signal_names: Sequence[str]) -> Any: ...

    def score_learn(self, state: Any, ts: np.ndarray, X: np.ndarray) -> tuple[Any, np.ndarray]: ...


REGISTRY: dict[str, Callable[..., Detector]] = {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return wrap


def plant_of(name: str) -> str:
    """The plant kind whose signals a registered detector reads: its class's `plant`, else "bioreactor" (the
    reactor's detectors take any columns; the patient's read vitals by name)."""
    return getattr(REGISTRY[name], "plant", "bioreactor")


def make_detector(name: str, **params: Any) -> Detector:
    """A detector by its registered name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown detector {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**params)
