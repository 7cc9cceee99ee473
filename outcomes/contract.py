"""What an outcome model is asked and what it answers: shared by training (`outcomes.train`), serving (the risk
router, the flow's hourly scoring), the registry and the drift monitor, so none of them imports another's
internals.

>>> CLASS_HEADS
('inr_ge4_7d', 'major_bleed_14d', 'bradycardia_24h')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import pyarrow as pa

# what clinicians fear next: INR >= 4 within 7 days, a major bleed within 14 days, bradycardia within 24 h
CLASS_HEADS: tuple[str, ...] = ("inr_ge4_7d", "major_bleed_14d", "bradycardia_24h")
# the INR 3 days ahead and the time in therapeutic range over the next 12 weeks (Rosendaal, %)
REGRESSION_HEADS: tuple[str, ...] = ("inr_3d", "ttr_12w")
COVERAGE_TARGET = 0.90  # the conformal intervals' and prediction sets' nominal coverage


@dataclass(frozen=True)
class PatientRecord:
    """One patient's data as of `as_of`: their `PATIENTS` row (a dict) and their `VITALS`, `LABS` (reported by
    `as_of`) and `DOSES` rows (schemas in core/events.py). The data watermark is the latest event time in it."""

    patient: dict
    vitals: pa.Table
    labs: pa.Table
    doses: pa.Table
    as_of: datetime


@dataclass(frozen=True)
class HeadPrediction:
    """One head's answer. Classification: `estimate` is the calibrated probability, [`lo`, `hi`] the spread
    of the ensemble, `prediction_set` the conformal set at COVERAGE_TARGET ((0,), (1,) or (0, 1)) and
    `alert` whether the probability crossed the head's threshold. Regression: `estimate` and the conformal
    interval [`lo`, `hi`]."""

    name: str
    kind: Literal["probability", "value"]
    estimate: float
    lo: float
    hi: float
    prediction_set: tuple[int, ...] | None = None
    threshold: float | None = None
    alert: bool = False


@dataclass(frozen=True)
class Attribution:
    """A share of a prediction's evidence: a feature (`inr`, `cyp2c9`, ...), over a time span when it is a
    time series (`hours_ago` = (newest, oldest)), with its share of the total attribution (0-1)."""

    feature: str
    share: float
    hours_ago: tuple[float, float] | None = None


@dataclass(frozen=True)
class RiskPrediction:
    patient_id: str
    run_id: str
    heads: dict[str, HeadPrediction]
    confidence: float  # 0-1: how much the ensemble agrees and the data covers the window
    attributions: tuple[Attribution, ...]
    explanation: str  # the attributions in a sentence (agents' phrasing)
    model_version: str
    data_watermark: datetime
    extra: dict = field(default_factory=dict)


class CheckpointError(ValueError):
    """A saved model this code cannot serve (one from a newer version, say)."""


class Predictor(Protocol):
    """A loaded model version; `predict` is batched (one forward pass for many patients)."""

    version: str

    def predict(self, records: Sequence[PatientRecord]) -> list[RiskPrediction]: ...
