"""Evidence for an incident: what each signal did in the window, against what the twin expected.

The expectation is the golden batch (`detectors.golden`): the median and robust spread of normal runs of the
twin at the same culture age, of the run's own recipe when it is known (`detectors.recipe.reference_for`), so a
run at a lower DO setpoint or fed continuously is judged against normal runs of that recipe. For each signal the evidence keeps its most extreme smoothed deviation in the
window (signed z, the time, the reading and the expected value), the longest frozen and missing stretches of
the watched sensors, the detectors' contributions, the windowed scorer's fault-class probabilities and the soft
sensors' VCD and glucose for the window's end, the latest assay reported by then, and the operator's recipe
changes (the run's `annotations`) from `CHANGE_LOOKBACK` before the window to its end. Plain
functions over Arrow tables, shared by the live worker, `biopilot diagnose`, the chat and the reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.signal import lfilter

from detectors.base import DETECTOR_SIGNALS, make_detector
from detectors.features import FEED, features
from detectors.golden import GoldenReference, load_reference
from detectors.recipe import Recipe, reference_for
from detectors.sensor_health import WATCHED
from detectors.soft_sensors import SoftSensors
from detectors.transformer import WindowedScorer, classify_window

UNITS = {"do_pct": "% air sat.", "ph": "", "temp_c": "°C", "agitation_rpm": "rpm", "air_sccm": "sccm",
         "o2_sccm": "sccm", "co2_sccm": "sccm", "base_ml_per_tick": "mL/min", "feed_ml_per_tick": "mL/min",
         "our_mmol_l_h": "mmol/L/h", "cer_mmol_l_h": "mmol/L/h", "capacitance_pf_cm": "pF/cm"}
SMOOTH_HALFLIFE_TICKS = 10.0
PUMPS = [DETECTOR_SIGNALS.index(name) for name in ("feed_ml_per_tick", "base_ml_per_tick")]
LOOKBACK = timedelta(minutes=10)
CHANGE_LOOKBACK = timedelta(hours=12)  # an operator's change this long before an incident is still its context
ONSET_Z = 3.0
# where a deviation's build-up is timed from: a probe drifting a little per hour crosses |z| 1 -> 3 over hours, so
# timed from |z| < 3 a drift caught early reads as quick as a process step (`Deviation.onset_min`)
NORMAL_Z = 1.0


@dataclass(frozen=True)
class Deviation:
    """A signal's most extreme smoothed deviation from the golden batch inside the window."""

    signal: str
    z: float  # signed: negative = below what normal runs show at this culture age
    ts: datetime
    value: float | None
    expected: float
    onset_min: float = 0.0  # how long the deviation took to build from |z| < NORMAL_Z to its peak

    def sentence(self) -> str:
        unit = UNITS.get(self.signal, "")
        verb = "above" if self.z > 0 else "below"
        value = "missing" if self.value is None else f"{self.value:.3g} {unit}".strip()
        return (f"{self.signal} read {value} at {self.ts:%Y-%m-%d %H:%M} UTC, {verb} the {self.expected:.3g} "
                f"{unit} normal runs show at that culture age (z = {self.z:+.1f})").replace("  ", " ")


@dataclass(frozen=True)
class SensorRun:
    """The longest stretch of a watched sensor frozen at one value, or missing, inside the window."""

    signal: str
    kind: str  # "frozen" | "missing"
    minutes: float
    start_ts: datetime
    value: float | None = None

    def sentence(self) -> str:
        what = f"frozen at {self.value:.4g}" if self.kind == "frozen" else "missing"
        return f"{self.signal} was {what} for {self.minutes:.0f} min from {self.start_ts:%Y-%m-%d %H:%M} UTC"


@dataclass
class Evidence:
    run_id: str
    reactor_id: str
    start_ts: datetime
    end_ts: datetime
    deviations: dict[str, Deviation] = field(default_factory=dict)
    sensor_runs: list[SensorRun] = field(default_factory=list)
    contributions: dict[str, float] = field(default_factory=dict)
    assay: dict | None = None
    scorer: dict | None = None  # the windowed scorer's fault-class probabilities and titer, with MC spread
    soft: dict | None = None  # soft-sensor VCD and glucose at the window's end, from what was known by then
    operator_changes: list[str] = field(default_factory=list)  # the run's annotations near the window, as sentences
    feed_mode: str = "bolus"  # the recipe's: what a feed deviation means depends on it
    # per pump, the z its full rate reads against the reference's tightest spread: what a feed step weighs
    # depends on the vessel (the reference's pump floors scale with the pump, the shipped one's do not)
    pump_rate_z: dict[str, float] = field(default_factory=dict)
    # per signal that left normal after the run's previous incident had closed: the other signals' z then, where
    # already off normal. The earlier fault's aftermath (a culture slowed by a temperature spike) is the state a
    # new fault starts from, and what the new fault moved is measured from there (`move`)
    onset_z: dict[str, dict[str, float]] = field(default_factory=dict)
    aftermath: list[str] = field(default_factory=list)  # the signals the previous incident left off normal
    lead: str | None = None  # the signal with the largest contribution: whose onset is the fault's
    ticks_seen: int = 0

    def z(self, signal: str) -> float:
        d = self.deviations.get(signal)
        return 0.0 if d is None else d.z

    def move(self, signal: str) -> float:
        """The signal's deviation beyond the previous incident's aftermath: for a signal that incident left off
        normal, beyond where it stood when this incident's lead signal left normal (`beyond`)."""
        before = self.onset_z.get(self.lead or "", {}).get(signal, 0.0) if signal in self.aftermath else 0.0
        return beyond(self.z(signal), before)

    def strongest(self, k: int = 4) -> list[Deviation]:
        return sorted(self.deviations.values(), key=lambda d: -abs(d.z))[:k]

    def as_dict(self) -> dict:
        return asdict(self)


def beyond(z: float, before: float) -> float:
    """A deviation `z` less the one a signal already had (`before`): only a move further from normal is new; one
    back towards normal is the culture recovering, and one past normal counts from normal."""
    return z if z * before <= 0 else float(np.sign(z)) * max(abs(z) - abs(before), 0.0)


def change_sentence(annotation: dict) -> str:
    """An operator's change as evidence: its text, when and by whom (unless the text says so already)."""
    text, ts, by = annotation["text"], annotation["ts"], annotation.get("changed_by")
    when = f"{ts:%Y-%m-%d %H:%M} UTC"
    if f"{ts:%H:%M}" not in text:
        text += f" at {when}"
    if by and by not in text:
        text += f" by {by}"
    return text


def _smoothed_z(X: np.ndarray, minutes: np.ndarray, ref: GoldenReference) -> np.ndarray:
    last = len(ref.median) - 1
    bins = np.clip((minutes // ref.bin_min).astype(int), 0, last)
    z = ref.z(X, bins)
    # a feed or base step a tick off the age bin's edge is the schedule's timing, not a fault: the pumps are
    # judged against the nearest of the neighbouring bins (a missed bolus or an overfeed lasts many bins)
    near = [ref.z(X, b)[:, PUMPS] for b in (np.maximum(bins - 1, 0), np.minimum(bins + 1, last))]
    z[:, PUMPS] = np.select([np.abs(n) < np.abs(z[:, PUMPS]) for n in near], near, z[:, PUMPS])
    alpha = 1.0 - 0.5 ** (1.0 / SMOOTH_HALFLIFE_TICKS)
    # a missing reading adds no deviation (as in the golden detector), so gaps do not pose as faults
    return lfilter([alpha], [1.0, alpha - 1.0], np.nan_to_num(z), axis=0)


def _longest_run(same: np.ndarray) -> tuple[int, int]:
    """(length, start index) of the longest run of True in `same`."""
    best, best_start, run, start = 0, 0, 0, 0
    for i, flag in enumerate(same):
        if flag:
            if run == 0:
                start = i
            run += 1
            if run > best:
                best, best_start = run, start
        else:
            run = 0
    return best, best_start


def gather(ticks: pa.Table, start_ts: datetime, end_ts: datetime, assays: pa.Table | None = None,
           contributions: dict[str, float] | None = None, dt_min: float | None = None,
           recipe: Recipe | None = None, annotations: list[dict] | None = None,
           after_ts: datetime | None = None) -> Evidence:
    """Evidence over [start_ts - 10 min, end_ts] from one run's ticks (from the run's first tick on), against
    the reference of the run's `recipe` (default: the default recipe's, the shipped golden batch), with the
    operator's changes among `annotations` (rows of the `annotations` table) from `CHANGE_LOOKBACK` before the
    window to its end. `after_ts`: when the run's previous incident closed; the leading signal is the one with
    the largest of `contributions` (`Evidence.onset_z`)."""
    ticks = ticks.sort_by("seq")
    run_id, reactor_id = ticks["run_id"][0].as_py(), ticks["reactor_id"][0].as_py()
    ev = Evidence(run_id, reactor_id, start_ts, end_ts, contributions=dict(contributions or {}),
                  feed_mode=(recipe or Recipe.default())["feed_mode"])
    ts = ticks["ts"].cast(pa.int64()).to_numpy()
    minutes = (ts - ts[0]) / 6e7
    X = features(ticks, np.array([np.nan, np.nan]))
    ref = load_reference() if recipe is None else reference_for(recipe)
    Z = _smoothed_z(X, minutes, ref)
    ev.pump_rate_z = {DETECTOR_SIGNALS[j]: float(np.abs(ref.median[:, j]).max() / ref.scale[:, j].min())
                      for j in PUMPS}
    ev.operator_changes = [change_sentence(a) for a in sorted(annotations or [], key=lambda a: a["ts"])
                           if start_ts - CHANGE_LOOKBACK <= a["ts"] <= end_ts]
    lo = np.searchsorted(ts, int((start_ts - LOOKBACK).timestamp() * 1e6))
    hi = np.searchsorted(ts, int(end_ts.timestamp() * 1e6), side="right")
    ev.ticks_seen = int(hi - lo)
    if hi <= lo:
        return ev
    ev.lead = max(ev.contributions, key=ev.contributions.__getitem__, default=None)
    after = None if after_ts is None else min(int(np.searchsorted(ts, int(after_ts.timestamp() * 1e6))), len(ts) - 1)
    if after is not None:
        ev.aftermath = [name for j, name in enumerate(DETECTOR_SIGNALS) if abs(Z[after, j]) >= ONSET_Z]
    step = dt_min or (float(np.median(np.diff(minutes))) if len(minutes) > 1 else 1.0)
    for j, name in enumerate(DETECTOR_SIGNALS):
        i = lo + int(np.argmax(np.abs(Z[lo:hi, j])))
        b = min(int(minutes[i] // ref.bin_min), len(ref.median) - 1)
        value = None if np.isnan(X[i, j]) else float(X[i, j])
        size = np.abs(Z[: i + 1, j])
        calm, near = np.flatnonzero(size < ONSET_Z), np.flatnonzero(size < NORMAL_Z)
        onset_min = float(minutes[i] - minutes[near[-1]]) if len(near) else float(minutes[i])
        ev.deviations[name] = Deviation(name, float(Z[i, j]), _dt(ts[i]), value, float(ref.median[b, j]),
                                        onset_min)
        if after is not None and len(calm) and calm[-1] >= after:
            at_onset = Z[calm[-1]]
            ev.onset_z[name] = {other: float(at_onset[k]) for k, other in enumerate(DETECTOR_SIGNALS)
                                if abs(at_onset[k]) >= ONSET_Z}
    for name in WATCHED:
        x = X[lo:hi, DETECTOR_SIGNALS.index(name)]
        missing = np.isnan(x)
        n, at = _longest_run(missing)
        if n >= 2:
            ev.sensor_runs.append(SensorRun(name, "missing", n * step, _dt(ts[lo + at])))
        frozen = np.concatenate([[False], (x[1:] == x[:-1]) & ~missing[1:]])
        n, at = _longest_run(frozen)
        if n >= 2:
            ev.sensor_runs.append(SensorRun(name, "frozen", (n + 1) * step, _dt(ts[lo + at - 1]),
                                            float(x[max(at - 1, 0)])))
    if hi - lo >= 1 and hi >= _scorer().window:
        ev.scorer = classify_window(_scorer(), ts[:hi], X[:hi], int(ts[0]))
    known = None  # the lab results reported by the window's end: what an operator had then
    if assays is not None and assays.num_rows:
        known = assays.filter(pc.less_equal(assays["reported_ts"], pa.scalar(end_ts, assays["reported_ts"].type)))
        if known.num_rows:
            ev.assay = known.sort_by("sample_ts").slice(known.num_rows - 1).to_pylist()[0]
    ev.soft = _soft_sensors(ticks, ts, X, hi, known)
    return ev


def _soft_sensors(ticks: pa.Table, ts: np.ndarray, X: np.ndarray, hi: int, known: pa.Table | None) -> dict:
    """The flow's soft sensors replayed over the run up to tick `hi`, corrected by each result when it came."""
    soft = SoftSensors()
    cap = ticks["capacitance_pf_cm"].to_numpy(zero_copy_only=False)[:hi]
    volume = ticks["volume_l"].to_numpy(zero_copy_only=False)[:hi]
    feed = np.nan_to_num(X[:hi, FEED])
    pos = 0
    for row in (known.sort_by("reported_ts").to_pylist() if known is not None else []):
        upto = min(int(np.searchsorted(ts[:hi], int(row["reported_ts"].timestamp() * 1e6))), hi - 1)
        soft.update(ts[pos:upto], cap[pos:upto], feed[pos:upto], volume[pos:upto])
        pos = max(pos, upto)
        soft.on_assay(int(row["sample_ts"].timestamp() * 1e6), row["vcd_e6_per_ml"], row["glucose_g_l"])
    vcd, glucose = soft.update(ts[pos:hi], cap[pos:hi], feed[pos:hi], volume[pos:hi])
    return {"ts": _dt(ts[hi - 1]), "vcd_e6_per_ml_est": round(float(vcd[-1]), 2),
            "glucose_g_l_est": round(float(glucose[-1]), 2)}


@lru_cache(maxsize=1)
def _scorer() -> WindowedScorer:
    return make_detector("transformer")  # type: ignore[return-value]


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=UTC)
