"""Input drift: has the population the outcome model scores moved away from the one it learnt on?

`FeatureDrift` is a window test, one per monitored stream: each numeric feature (a two-sample Kolmogorov-Smirnov
test) and each level of a categorical one (a two-proportion z test on the level's share). The reference is the
first `reference_size` samples (the population the champion was trained and checked on); the recent window the
newest `window` samples. Every `check_every` samples each stream is tested, at a family-wise `alpha` split over
the streams (Bonferroni) per check, and a stream counts only when its change is also large enough to matter
(`min_share_change` for a share, `min_sd_change` reference standard deviations for a mean): with a thousand
patients scored an hour, tiny changes are significant and not worth an incident. Before and after are the
reference's and the recent window's share (or mean). A drift stays detected, check after check, for as long
as the population differs from the reference, more features joining as their change becomes sure; `reset()`
(when a model trained on the new population is promoted) learns the reference again from the samples that
follow.
River's ADWIN was tried first: it found a share's shift later than this test, before its confidence was split
over ~30 streams (docs/OUTCOMES.md, "Registry, drift and retraining").
`drift_incident` turns the shifts into an `incidents` row; the agents put them into words
(`agents.phrasing.explain_drift`).

>>> import random
>>> rng = random.Random(0)
>>> detector = FeatureDrift({"vkorc1_1639": ("G/G", "G/A", "A/A"), "age_years": None})
>>> def patient(aa_share):
...     vkorc1 = "A/A" if rng.random() < aa_share else rng.choice(("G/G", "G/A"))
...     return {"vkorc1_1639": vkorc1, "age_years": rng.gauss(70.0, 10.0)}
>>> fired = []
>>> for k in range(1500):
...     detector.update(patient(0.38 if k < 1000 else 0.71))
...     if detector.drift_detected:
...         fired.append((k, detector.shifts))
>>> k, shifts = fired[0]
>>> 1000 <= k < 1100, [(s.feature, s.level) for s in shifts]
(True, [('vkorc1_1639', 'A/A')])
>>> f"A/A share {shifts[0].before:.0%} -> {shifts[0].after:.0%}"
'A/A share 36% -> 61%'
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import ks_2samp

from outcomes.features import CATEGORICAL, STATIC, Encoded
from sinks import delta

MODEL_UNIT = "outcome-model"  # a drift incident's `reactor_id`: the unit is the model, its run the version
# what the outcome model's drift monitor watches: the genotypes and ancestry, the co-medications and sex (shares),
# body size and the warfarin course as the model reads them (means, on the model's scale: outcomes/features.py)
BOOLEAN_INPUTS = ("male", "amiodarone", "enzyme_inducer")
NUMERIC_INPUTS = ("age_years", "weight_kg", "weekly_warfarin_mg", "inr_last", "inr_slope_per_d")
MONITORED: dict[str, tuple[Hashable, ...] | None] = (
    dict(CATEGORICAL) | {name: (True,) for name in BOOLEAN_INPUTS} | dict.fromkeys(NUMERIC_INPUTS))


def input_features(inputs: Encoded) -> list[dict[str, object]]:
    """Each encoded sample's monitored inputs (`MONITORED`), as `FeatureDrift.update` takes them."""
    column = {name: k for k, name in enumerate(STATIC)}
    codes = inputs.categorical
    rows = [{name: levels[int(codes[i, j])] for j, (name, levels) in enumerate(CATEGORICAL.items())}
            for i in range(len(inputs))]
    for name in BOOLEAN_INPUTS:
        for row, value in zip(rows, inputs.static[:, column[name]] > 0.5, strict=True):
            row[name] = bool(value)
    for name in NUMERIC_INPUTS:
        for row, value in zip(rows, np.asarray(inputs.static[:, column[name]], float), strict=True):
            row[name] = float(value)
    return rows


@dataclass(frozen=True)
class Shift:
    """A feature's change: a level's share (`level` set) or a numeric feature's mean, reference -> recent."""

    feature: str
    level: str | None
    before: float
    after: float
    p_value: float

    @property
    def change(self) -> float:
        return self.after - self.before


class FeatureDrift:
    """Per-feature input drift. `features` maps a feature to its levels (categorical; a bool feature's level
    is True) or to None (numeric). `update(x)` takes one scored sample's features (a missing or unknown value
    counts for none of the levels; a missing number is left out of its test); `drift_detected` is True after a
    check that found a shift, listed in `shifts`, surest first."""

    def __init__(self, features: Mapping[str, Sequence[Hashable] | None], *, reference_size: int = 400,
                 window: int = 100, check_every: int = 10, alpha: float = 1e-4, min_share_change: float = 0.10,
                 min_sd_change: float = 0.25) -> None:
        self.features = dict(features)
        self.reference_size, self.window, self.check_every = reference_size, window, check_every
        self.min_share_change, self.min_sd_change = min_share_change, min_sd_change
        self.streams = [(name, level) for name, levels in self.features.items()
                        for level in (levels if levels is not None else (None,))]
        self.alpha_per_stream = alpha / len(self.streams)
        self._reference: list[np.ndarray] = []
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        self._reference_values: np.ndarray | None = None
        self.drift_detected = False
        self.judged = False  # whether the last update was a check (its verdict: `drift_detected`)
        self.shifts: list[Shift] = []
        self.n_seen = 0

    def _row(self, x: Mapping[str, object]) -> np.ndarray:
        """The sample as one value per stream: a level's indicator, a number (NaN: missing)."""
        row = np.empty(len(self.streams))
        for k, (name, level) in enumerate(self.streams):
            value = x.get(name)
            if level is not None:
                row[k] = float(value == level)
            else:
                row[k] = math.nan if value is None else float(value)  # type: ignore[arg-type]
        return row

    def update(self, x: Mapping[str, object]) -> None:
        self.n_seen += 1
        self.drift_detected, self.judged, self.shifts = False, False, []
        row = self._row(x)
        if self._reference_values is None:
            self._reference.append(row)
            if len(self._reference) == self.reference_size:
                self._reference_values = np.array(self._reference)
            return
        self._recent.append(row)
        if len(self._recent) < self.window or self.n_seen % self.check_every:
            return
        self.shifts = sorted(self._test(np.array(self._recent)), key=lambda s: s.p_value)
        self.drift_detected, self.judged = bool(self.shifts), True

    def reset(self) -> None:
        """Learn the reference again from the next `reference_size` samples (the population now served)."""
        self._reference, self._reference_values = [], None
        self._recent.clear()

    def _test(self, recent: np.ndarray) -> list[Shift]:
        reference = self._reference_values
        found = []
        for k, (name, level) in enumerate(self.streams):
            a, b = reference[:, k], recent[:, k]
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            if len(a) < 2 or len(b) < 2:
                continue
            if level is not None:
                before, after = float(a.mean()), float(b.mean())
                pooled = (a.sum() + b.sum()) / (len(a) + len(b))
                se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / len(a) + 1.0 / len(b)))
                p_value = math.erfc(abs(after - before) / se / math.sqrt(2.0)) if se > 0 else 1.0
                big = abs(after - before) >= self.min_share_change
            else:
                before, after = float(a.mean()), float(b.mean())
                p_value = float(ks_2samp(a, b).pvalue)
                big = abs(after - before) >= self.min_sd_change * float(a.std())
            if big and p_value < self.alpha_per_stream:
                found.append(Shift(name, None if level is None else str(level), before, after, p_value))
        return found


def drift_incident(model_version: str, detected_ts: datetime, *, shifts: Sequence[Shift] = (),
                   performance: Mapping[str, object] | None = None) -> tuple[dict, dict]:
    """An `incidents` row (event open) for a drift of the model's inputs (`shifts`) or of its outcomes
    (`performance`: head, reference_auroc, auroc, ece, window) and the findings the agents put into words
    (`agents.phrasing.explain_drift`). The unit is the model: `reactor_id` `MODEL_UNIT`, `run_id` its version;
    the signals are the drifted features (or the head)."""
    what = "outcomes" if performance else "inputs"
    signals = ([str(performance["head"])] if performance else
               [s.feature if s.level is None else f"{s.feature}={s.level}" for s in shifts])
    key = f"{model_version}|{what}|{detected_ts.isoformat()}|{signals}"
    incident_id = hashlib.sha1(key.encode()).hexdigest()[:12]
    row = {"incident_id": incident_id, "version": 1, "event": "open", "run_id": model_version,
           "reactor_id": MODEL_UNIT, "status": "open", "start_ts": detected_ts, "end_ts": None,
           "severity": "warning", "alert_count": 1, "signals": signals, "emitted_at": detected_ts}
    findings = {"incident_id": incident_id, "kind": f"{what}_drift", "model_version": model_version,
                "detected_ts": detected_ts.isoformat(), "shifts": [asdict(s) for s in shifts],
                "performance": dict(performance or {})}
    return row, findings


CLEAR_VERDICTS = 3  # verdicts in a row without drift before a drift incident resolves
AUROC_NEWS = 0.05  # an outcome drift's AUROC moving this much is an update


@dataclass
class DriftLifecycle:
    """One monitor's drift incident (a model version's inputs, or one head's outcomes) through open -> updated
    -> resolved, as `agents/incidents.py` carries an alarm's: `verdict(...)` after each check of the monitor
    returns the event to publish, if any - `open` at the first drift; `update` while it lasts and what drifted
    changes (a feature joins or leaves the shifts, the head's AUROC moves by `AUROC_NEWS`); `resolve` after
    `clear_verdicts` checks in a row without drift (one quiet check of a noisy window is not the end of it).
    A drift after that opens a new incident.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0, life = datetime(2026, 1, 1, tzinfo=UTC), DriftLifecycle("m1")
    >>> aa, amio = Shift("vkorc1_1639", "A/A", 0.38, 0.71, 1e-9), Shift("amiodarone", "True", 0.0, 0.3, 1e-8)
    >>> verdicts = [[aa], [aa], [aa, amio], [], [], [aa], [], [], []]
    >>> [(e[0]["event"], e[0]["status"], e[0]["version"]) if (e := life.verdict(bool(v), t0, shifts=v)) else None
    ...  for v in verdicts]  # doctest: +NORMALIZE_WHITESPACE
    [('open', 'open', 1), None, ('update', 'updated', 2), None, None, ('update', 'updated', 3), None, None,
     ('resolve', 'resolved', 4)]
    """

    model_version: str
    clear_verdicts: int = CLEAR_VERDICTS
    row: dict | None = None  # the open incident's newest row; None: no drift incident open
    auroc: float | None = None  # the outcome drift's AUROC at its last event
    quiet: int = 0  # checks in a row without drift since the incident's last drifting check

    def verdict(self, detected: bool, ts: datetime, *, shifts: Sequence[Shift] = (),
                performance: Mapping[str, object] | None = None) -> tuple[dict, dict] | None:
        """After a check: (the incidents row, the findings for the agents' words) when there is news."""
        if not detected:
            if self.row is None:
                return None
            self.quiet += 1
            if self.quiet < self.clear_verdicts:
                return None
            row = self.row | {"version": self.row["version"] + 1, "event": "resolve", "status": "resolved",
                              "end_ts": ts, "emitted_at": ts}
            self.row, self.auroc, self.quiet = None, None, 0
            return row, {"incident_id": row["incident_id"], "kind": "drift_cleared",
                         "model_version": self.model_version, "detected_ts": ts.isoformat(),
                         "shifts": [], "performance": {}}
        self.quiet = 0
        fresh, findings = drift_incident(self.model_version, ts, shifts=shifts, performance=performance)
        auroc = performance.get("auroc") if performance else None
        if self.row is None:
            self.row, self.auroc = fresh, auroc  # type: ignore[assignment]
            return fresh, findings
        moved = auroc is not None and self.auroc is not None and abs(float(auroc) - self.auroc) >= AUROC_NEWS
        if set(fresh["signals"]) == set(self.row["signals"]) and not moved:
            return None
        self.row = self.row | {"version": self.row["version"] + 1, "event": "update", "status": "updated",
                               "signals": fresh["signals"], "alert_count": self.row["alert_count"] + 1,
                               "emitted_at": ts}
        self.auroc = auroc if auroc is not None else self.auroc  # type: ignore[assignment]
        return self.row, findings | {"incident_id": self.row["incident_id"]}


def open_drift_words(lake: str) -> dict[str, str]:
    """model version -> its open drift incident in the agents' words (the newest, from the lake's `incidents`
    and `agent_messages`); versions without one are left out."""
    incidents = delta.read(lake, "incidents", columns=["incident_id", "version", "run_id", "status", "start_ts"],
                           where=pc.field("reactor_id") == MODEL_UNIT)
    if incidents is None or incidents.num_rows == 0:
        return {}
    latest: dict[str, dict] = {}
    for row in incidents.sort_by("version").to_pylist():
        latest[row["incident_id"]] = row
    newest = {}  # model version -> its newest open incident
    for row in sorted(latest.values(), key=lambda r: r["start_ts"]):
        if row["status"] != "resolved":
            newest[row["run_id"]] = row["incident_id"]
    messages = delta.read(lake, "agent_messages", columns=["incident_id", "seq", "text", "done"],
                          where=pc.field("incident_id").isin(pa.array(list(newest.values()), pa.string())))
    texts: dict[str, list[tuple[int, str, bool]]] = {}
    for m in [] if messages is None else messages.to_pylist():
        texts.setdefault(m["incident_id"], []).append((m["seq"], m["text"] or "", bool(m["done"])))
    return {version: " ".join(_newest_explanation(texts.get(incident, []))).strip() or "inputs drifted"
            for version, incident in newest.items()}


def _newest_explanation(chunks: list[tuple[int, str, bool]]) -> list[str]:
    """The texts of an incident's newest explanation: the chunks after the last but one `done` (an updated
    incident was explained again)."""
    chunks = sorted(chunks)
    ends = [k for k, (_, _, done) in enumerate(chunks) if done]
    first = ends[-2] + 1 if len(ends) >= 2 else 0
    return [text for _, text, _ in chunks[first:] if text]
