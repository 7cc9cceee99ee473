"""Learning from live traffic: the retraining loop closed in the running stack (`agents.risk_worker` drives it).

The live data labels two of the risks, as the outcome monitor reads them (`live_outcome`): bradycardia within
24 h from the measured heart rate, INR >= 4 within 7 days from the INRs drawn (late labs; none drawn: unknown).
`LiveLearning` keeps a sample of the scored patients (each at most once per `sample_every_h`: their inputs as
scored and their genotype groups) until those outcomes are known.

When retraining is due (`retrain.RetrainPolicy`: a drift incident open, or the schedule) and `min_patients`
patients sampled since the last training have known outcomes, a challenger is fitted on them (`fit_challenger`):
per labelled risk a bagged logistic regression on the inputs (`linear_head.LinearHead`), kept only where it ranks
other live patients better than the champion's predictor by more than the champion's standard error there, and
recalibrated on them (temperature, threshold, Mondrian conformal). The network and everything else it serves
(major bleeding: no live label; the INR values: its regression heads) are the champion's, unchanged: a network
fine-tuned on two labels would move the heads it cannot check.
The challenger is registered; the patients sampled after it are its shadow window, scored by both models once
their outcomes are known (never served); `retrain.PromotionRule` decides, and a promotion is audited and rolled
back like any (`biopilot models rollback`). The network's own retraining, warm-started on labelled cohorts, is
`retrain.retrain` (`biopilot bench drift`).

>>> learning = LiveLearning("unused-lake", min_patients=2)
>>> learning.due(now_us=0, drift=True) is None  # nothing sampled yet
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from outcomes import registry
from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS, PatientRecord
from outcomes.dataset import BRADY_HR_BPM, HORIZON_H, OutcomeDataset
from outcomes.features import Encoded, encode_records, metoprolol_group, warfarin_group
from outcomes.retrain import PromotionRule, RetrainPolicy, shadow_evaluate
from sources.patient.inr_events import OVER_INR

if TYPE_CHECKING:
    from outcomes.model import OutcomeModel

log = logging.getLogger(__name__)
HOUR_US = 3_600_000_000
LIVE_HEADS = ("bradycardia_24h", "inr_ge4_7d")  # the risks whose outcomes the live data shows
INR_WAIT_H = 24.0  # past the 7 days, for an INR drawn late in them to be reported (labs: ~6 h)


def bradycardia_outcome(record: PatientRecord, at_us: int, newest_us: int) -> int | None:
    """1 if an hour's mean measured heart rate fell below `BRADY_HR_BPM` within the 24 h after `at_us`, 0 if not,
    None while the vitals do not cover them yet."""
    horizon_us = int(HORIZON_H["bradycardia_24h"]) * HOUR_US
    if at_us + horizon_us > newest_us:
        return None
    ts_us = record.vitals["ts"].cast(pa.int64()).to_numpy()
    hr = record.vitals["hr_bpm"].to_numpy(zero_copy_only=False).astype(float)
    inside = (ts_us > at_us) & (ts_us <= at_us + horizon_us) & ~np.isnan(hr)
    hours = ts_us // HOUR_US
    return int(any(hr[inside & (hours == h)].mean() < BRADY_HR_BPM for h in np.unique(hours[inside])))


def inr_over_outcome(record: PatientRecord, at_us: int, newest_us: int) -> int | None:
    """1 if an INR sampled within the 7 days after `at_us` reached `OVER_INR`, 0 if those drawn stayed below,
    -1 if none was drawn, None while the vitals have not reached `INR_WAIT_H` past the 7 days."""
    horizon_us = int(HORIZON_H["inr_ge4_7d"]) * HOUR_US
    if at_us + horizon_us + int(INR_WAIT_H * HOUR_US) > newest_us:
        return None
    if record.labs.num_rows == 0:
        return -1
    sampled = record.labs["sample_ts"].cast(pa.int64()).to_numpy()
    inr = record.labs["inr"].to_numpy(zero_copy_only=False).astype(float)
    inside = (sampled > at_us) & (sampled <= at_us + horizon_us) & ~np.isnan(inr)
    return int((inr[inside] >= OVER_INR).any()) if inside.any() else -1


LIVE_OUTCOME = {"bradycardia_24h": bradycardia_outcome, "inr_ge4_7d": inr_over_outcome}


def live_outcome(head: str, record: PatientRecord, at_us: int) -> int | None:
    """The outcome of `head` for a prediction at `at_us`, as far as `record` shows it: 0/1, -1 if it cannot be
    known, None while it may still show."""
    if record.vitals.num_rows == 0:
        return None
    return LIVE_OUTCOME[head](record, at_us, pc.max(record.vitals["ts"]).value)


@dataclass
class LiveSample:
    """A scored patient's inputs and the outcomes of the live risks that apply to them (`applies`), the ones not
    known yet in `waiting`."""

    patient_id: str
    run_id: str
    at_us: int
    inputs: Encoded
    patient: dict
    applies: frozenset[str]
    waiting: set[str] = field(init=False)
    labels: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LIVE_HEADS, math.nan))

    def __post_init__(self) -> None:
        self.waiting = set(self.applies)


def live_dataset(samples: Sequence[LiveSample]) -> OutcomeDataset:
    """The samples as an `OutcomeDataset`: the live risks' outcomes as labels, every other label unknown (NaN)."""
    n = len(samples)
    labels = {h: np.array([s.labels[h] for s in samples], float) if h in LIVE_HEADS else np.full(n, math.nan)
              for h in (*CLASS_HEADS, *REGRESSION_HEADS)}
    return OutcomeDataset(
        Encoded.concat([s.inputs for s in samples]), labels,
        np.array([s.run_id for s in samples], dtype=object), np.array([s.patient_id for s in samples], dtype=object),
        np.array([s.patient.get("ancestry", "") for s in samples], dtype=object),
        np.array([warfarin_group(s.patient) for s in samples], dtype=object),
        np.array([metoprolol_group(s.patient) if "bradycardia_24h" in s.applies else "" for s in samples],
                 dtype=object),
        np.array([s.at_us / HOUR_US for s in samples]))


def fit_challenger(champion: OutcomeModel, recent: OutcomeDataset, seed: int = 0) -> OutcomeModel | None:
    """The champion with, on each live risk where it helps, a bagged logistic regression fitted on three quarters
    of `recent`'s patients and judged and recalibrated on the other quarter (`train.choose_heads`, `calibrate`;
    module docstring); None when no risk gained."""
    from outcomes.train import calibrate, choose_heads

    fit, calibration = recent.split((0.75, 0.25), seed=seed)
    challenger = replace(champion, temperatures=dict(champion.temperatures), thresholds=dict(champion.thresholds),
                         class_conformal=dict(champion.class_conformal),
                         regression_conformal=dict(champion.regression_conformal),
                         linear_heads=dict(champion.linear_heads), validation_auroc={}, metrics={})
    refit = choose_heads(challenger, fit, calibration, LIVE_HEADS, names=("champion", "live_regression"), seed=seed)
    if not refit:
        return None
    calibrate(challenger, calibration, refit)
    return replace(challenger, version="", created="", metrics={"live_refit": refit})  # named after its predictors


@dataclass
class LiveLearning:
    """The live samples, the retraining they trigger and the shadow verdict (module docstring). `step` is the
    one entry point the worker calls after each scoring batch, off the event loop (it may train)."""

    lake: str
    policy: RetrainPolicy = field(default_factory=RetrainPolicy)
    rule: PromotionRule = field(default_factory=PromotionRule)
    sample_every_h: float = 24.0  # a patient's samples a day apart: hourly ones would repeat one person
    min_patients: int = 200  # patients with known outcomes to train on, and in a shadow window
    max_samples: int = 10_000  # about 8 KB each (the inputs as scored); the oldest known go first past this
    samples: list[LiveSample] = field(default_factory=list)
    last_sampled_us: dict[str, int] = field(default_factory=dict)
    started_us: int | None = None  # the first sample: the schedule counts from it until a first training
    trained_us: int | None = None  # the data time of the last training
    challenger: OutcomeModel | None = None  # the registered challenger awaiting its shadow verdict
    unresolved: dict[str, list[LiveSample]] = field(default_factory=dict)  # patient -> their samples waiting

    def observe(self, records: dict[str, PatientRecord]) -> None:
        """Scored patients' records: outcomes they now show, and a new sample of each patient due one."""
        for patient_id, record in records.items():
            self.resolve(patient_id, record)
            self.offer(patient_id, record)

    def offer(self, patient_id: str, record: PatientRecord) -> None:
        from outcomes.model import applies

        at_us = round(record.as_of.timestamp() * 1e6)
        last = self.last_sampled_us.get(patient_id)
        if record.vitals.num_rows == 0 or (last is not None and at_us - last < self.sample_every_h * HOUR_US):
            return
        sample = LiveSample(patient_id, str(record.vitals["run_id"][0]), at_us, encode_records([record]),
                            dict(record.patient), frozenset(h for h in LIVE_HEADS if applies(h, record)))
        self.samples.append(sample)
        self.unresolved.setdefault(patient_id, []).append(sample)
        self.last_sampled_us[patient_id] = at_us
        self.started_us = at_us if self.started_us is None else self.started_us
        if len(self.samples) > self.max_samples:
            oldest = self.samples.pop(next((i for i, s in enumerate(self.samples) if not s.waiting), 0))
            if oldest.waiting:
                self.unresolved[oldest.patient_id].remove(oldest)

    def resolve(self, patient_id: str, record: PatientRecord) -> None:
        for s in self.unresolved.get(patient_id, []):
            for h in list(s.waiting):
                outcome = live_outcome(h, record, s.at_us)
                if outcome is not None:
                    s.waiting.discard(h)
                    s.labels[h] = float(outcome) if outcome >= 0 else math.nan
        if patient_id in self.unresolved:
            self.unresolved[patient_id] = [s for s in self.unresolved[patient_id] if s.waiting]

    def forget(self, patient_id: str) -> None:
        """The patient's run ended: outcomes still awaited will not show; a sample with none known goes."""
        for s in self.unresolved.pop(patient_id, []):
            s.waiting.clear()
        self.samples = [s for s in self.samples if s.waiting or any(not math.isnan(v) for v in s.labels.values())]
        self.last_sampled_us.pop(patient_id, None)

    def known(self, since_us: int | None = None) -> list[LiveSample]:
        """The samples (taken after `since_us`) whose outcomes are all known, with at least one label."""
        return [s for s in self.samples if not s.waiting and (since_us is None or s.at_us > since_us)
                and any(not math.isnan(v) for v in s.labels.values())]

    def due(self, now_us: int, drift: bool) -> str | None:
        """What triggers a training now (`RetrainPolicy`), if enough patients are new since the last one."""
        last = self.trained_us if self.trained_us is not None else self.started_us
        if self.challenger is not None or last is None:
            return None
        trigger = self.policy.due(now_h=now_us / HOUR_US, last_trained_h=last / HOUR_US, drift=drift)
        new = {s.patient_id for s in self.known(self.trained_us)}
        return trigger if trigger and len(new) >= self.min_patients else None

    def step(self, champion: OutcomeModel, now_us: int, drift: bool) -> str | None:
        """Decide a waiting challenger once its window is full, else train one when due; what happened, if
        anything, in words."""
        if self.challenger is not None:
            return self.decide(champion)
        trigger = self.due(now_us, drift)
        return None if trigger is None else self.train(champion, now_us, trigger)

    def train(self, champion: OutcomeModel, now_us: int, trigger: str) -> str:
        samples = self.known(self.trained_us)
        self.trained_us = now_us
        challenger = fit_challenger(champion, live_dataset(samples))
        patients = len({s.patient_id for s in samples})
        if challenger is None:
            return f"retraining ({trigger}) on {patients} live patients: no risk gained, no challenger"
        first, last = (datetime.fromtimestamp(min(s.at_us for s in samples) / 1e6, UTC),
                       datetime.fromtimestamp(max(s.at_us for s in samples) / 1e6, UTC))
        registry.register(self.lake, challenger, actor=f"risk-worker:{trigger}",
                          data_snapshot=f"live samples: {len(samples)} of {patients} patients scored "
                                        f"{first:%Y-%m-%d %H:%M} - {last:%Y-%m-%d %H:%M} UTC",
                          metrics=challenger.metrics | {"trigger": trigger, "from_champion": champion.version,
                                                        "validation_auroc": challenger.validation_auroc})
        self.challenger = challenger
        return (f"retraining ({trigger}) on {patients} live patients: challenger {challenger.version} registered, "
                "in shadow until its window's outcomes are known")

    def decide(self, champion: OutcomeModel) -> str | None:
        window = self.known(self.trained_us)
        if len({s.patient_id for s in window}) < self.min_patients:
            return None
        challenger, self.challenger = self.challenger, None
        shadow = shadow_evaluate(champion, challenger, live_dataset(window), self.rule)
        if shadow.decision.promote:
            registry.promote(self.lake, challenger.version, actor="risk-worker:shadow",
                             reason=f"live shadow window: {shadow.decision.reason}", role="service")
        return f"challenger {challenger.version}: {shadow.decision.reason}"
