"""Per-patient online monitoring: the patient plant's `ReactorMonitor` — vitals in event time through three
detectors, lab results through clinical rules, doses kept for the patient's own twin, which is refitted at each
INR and whose forecast is streamed.

- Vitals (`on_ticks`): reordered in event time (`core.eventtime`), scored by the members `news2` (the early
  warning score, averaged over 30 min), `vitals_residual` (the patient against their own circadian baseline)
  and `sensor_health` (a stuck or disconnected sensor), each with its own alarm (`VITALS_MEMBERS`: threshold,
  persistence, hysteresis). An alarm opening is an alert, as for reactors.
- Labs (`on_assays`, joined at their report time): `inr_high` (INR >= 4), `inr_low` (INR < 2 once the
  initiation is over: `sources.patient.inr_events.initiation_end_h`, from the first warfarin dose and the first
  INR in range clear of the limit, >= 2.25), `hb_drop` (Hb >= 2 g/dL below the median of the patient's earlier
  readings). A rule's alert closes when a later reading is back (INR < 4, INR >= 2, a drop under 1 g/dL).
  An INR reading further than `MARGINAL_INR` beyond its limit alarms at once, as does any reading beyond it
  while a bleed is suspected (`hb_drop` open). A reading only marginally beyond (within 0.5: ACCP/CHEST 2012's
  "single out-of-range INR", Holbrook et al., Chest 2012;141:e152S, recommendation 3.1: continue the dose and
  recheck) is weighed against what the patient's own variability explains (`p_beyond`): the twin, fitted to the
  earlier readings, forecasts the INR at the sample time with a band, widened by the patient's biological
  fluctuation; combined with the reading (the assay's 4 % CV and its rounding to 0.1), the rule fires when the
  true INR is more likely beyond the limit than not. A reading it explains is held for confirmation: the next
  reading fires if it is beyond the same limit, however marginal, or still clearly out of range that side
  (> 3.5, < 1.5).
- Doses (`on_doses`): the warfarin doses taken and when each co-medication started, for the twin; a drug that
  changes warfarin's clearance (amiodarone, an enzyme inducer) started during the therapy is an `interaction`
  alert at its first dose (the exposure factor as score: the INR moves over weeks unless the dose does);
  `missed_doses` when 3 of the last 7 days' warfarin doses were not taken.
- The twin: at each INR, the patient's warfarin parameters are refitted (`sources.patient.twin_fit`, MAP with
  the population prior; the patient's covariates from the lake's `patients` table when the monitor has a lake,
  else the population's typical patient) and the INR forecast for `FORECAST_DAYS` days, under the current dose
  and under the advised one, becomes `twin_forecasts` rows and a message (`Outputs.twins`).

Alerts are dicts with the reactor's keys (`reactor_id` holds the patient id: docs/DESIGN.md). The whole object
pickles (the flow's recovery state). `monitor_stored(lake, run_id)` runs the same monitor over a stored run.

>>> import numpy as np
>>> from sources.patient.cohort_sim import PatientCohortSim
>>> from sources.patient.scenarios import load_patient_scenario
>>> sim = PatientCohortSim(load_patient_scenario("bradycardia"), 1, seed=3)
>>> chunk = sim.step(10 * 288)  # ten days of 5-minute vitals
>>> monitor = PatientMonitor(sim.patient_ids[0], MonitorConfig(lateness_s=0))
>>> out = monitor.on_ticks(pa.Table.from_batches([chunk.vitals]))
>>> [(a["member"], a["signals"][0]["name"]) for a in out.alerts]  # the pulse falls on day 7 (from the 5th)
[('vitals_residual', 'hr_bpm')]
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from scipy.stats import norm

import detectors  # noqa: F401 - registers every detector
from core.codec import validate_ticks
from core.config import lake_storage_options
from core.events import ALERTS, DOSES, LABS, SCORES, TWIN_FORECASTS, VITAL_SIGNALS, VITALS, distinct
from core.eventtime import ReorderBuffer
from core.plants import PLANTS
from detectors.alarm import MemberAlarms
from detectors.base import make_detector
from detectors.unit_monitor import (
    DEFAULT_CONFIG,
    EventTimeInputs,
    MonitorConfig,
    Outputs,
    alarm_clear,
    held,
)
from sources.patient import metoprolol, warfarin
from sources.patient.inr_events import EPISODE_MARGIN_INR, OVER_INR, SUB_INR, initiation_end_h
from sources.patient.inr_variability import ASSAY_LOG_SD, BIO_RISE_LOG_SD
from sources.patient.pkpd import PkpdState, step_pkpd
from sources.patient.twin_fit import fit_patient

log = logging.getLogger(__name__)

PATIENT = PLANTS["patient"]
DETECTOR = "patient_monitor"  # the alerts' `detector`; `member` names the detector or rule that fired


@dataclass(frozen=True)
class MemberAlarm:
    """A member's alarm: on at `threshold` (held `persist` readings), off below `off_share` of it (for `clear`
    readings); `critical`: the score from which an alert is critical rather than a warning."""

    threshold: float
    persist: int
    clear: int
    critical: float
    off_share: float = 0.6


# calibrated on normal patients and every adverse event: docs/QUALITY.md, "Patient monitor", has the figures
VITALS_MEMBERS: dict[str, MemberAlarm] = {
    # NEWS2's emergency-response level (RCP 2017), held for an hour: the urgent level (5) is where a beta-blocked
    # patient's nights sit, asleep
    "news2": MemberAlarm(threshold=7.0, persist=12, clear=12, critical=9.0),
    "vitals_residual": MemberAlarm(threshold=2.7, persist=6, clear=24, critical=6.0),
    "sensor_health": MemberAlarm(threshold=1.0, persist=1, clear=6, critical=3.0),
}
HB_DROP_G_DL, HB_RECOVERED_G_DL, HB_CRITICAL_G_DL = 2.0, 1.0, 3.0
INR_CRITICAL = 5.0  # above it the bleeding risk climbs steeply
# a single INR this close beyond a limit is "marginally" out (ACCP/CHEST 2012, 3.1: <= 0.5 out of range, continue
# and recheck): weighed against the twin's forecast (`p_beyond`) before it alarms
MARGINAL_INR = 0.5
BAND_Z = float(norm.ppf(0.9))  # the twin's forecast band is its 10-90 % interval
INR_REPORTED_STEP = 0.1  # readings are reported to 0.1 (`inr_variability.measured_inr`)
# co-medications that change warfarin's clearance (the factor once established: the warfarin model's), and how
# soon after the first warfarin dose a first dose of them still counts as taken since before the therapy
INTERACTING_CL_FACTOR = {"amiodarone": warfarin.AMIODARONE_CL_FACTOR, "enzyme_inducer": warfarin.INDUCER_CL_FACTOR}
ESTABLISHED_WITHIN_US = 24 * 3_600_000_000
MISSED_DOSES, MISSED_WINDOW_DAYS = 3, 7  # this many warfarin doses missed within this many days: nonadherence
TARGET_INR = 2.5
FORECAST_DAYS = 14
TWIN_DRAWS = 100  # posterior draws of a forecast band: what keeps a refit within a fraction of a second
# a refit starts from the previous MAP and its optimiser stops at this budget (CPU seconds of the dataflow thread)
# or iteration count; stopped short, the previous fit stands (its forecasts are the latest) and the next INR tries
# again, from where this one got
TWIN_FIT_BUDGET_S, TWIN_FIT_MAX_ITER = 0.3, 30
US_PER_H = 3_600_000_000
PATIENT_RETRY_S = 60.0


def p_beyond(reading: float, limit: float, above: bool, forecast_inr: float, forecast_lo: float,
             forecast_hi: float) -> float:
    """Probability that the patient's true INR is beyond `limit` (at or above it if `above`, else below) at a
    reading's sample time, given the reading and the twin's forecast for that time (median and 10-90 % band over
    its parameters), on the log scale: the prior is the forecast, widened by the patient's biological fluctuation
    (`inr_variability`: its SD on the INR's rise), the likelihood the assay's error plus the reading's rounding.

    >>> round(p_beyond(4.0, 4.0, True, 2.8, 2.4, 3.3), 2)  # 4.0 where the twin expects 2.8: likely under 4
    0.39
    >>> round(p_beyond(4.3, 4.0, True, 2.8, 2.4, 3.3), 2)  # further out: the reading wins
    0.93
    """
    prior_mean = np.log(forecast_inr)
    prior_var = ((np.log(forecast_hi) - np.log(forecast_lo)) / (2 * BAND_Z)) ** 2 \
        + (BIO_RISE_LOG_SD * (forecast_inr - 1.0) / forecast_inr) ** 2
    reading_var = ASSAY_LOG_SD**2 + (INR_REPORTED_STEP / reading) ** 2 / 12.0
    var = 1.0 / (1.0 / prior_var + 1.0 / reading_var)
    mean = var * (prior_mean / prior_var + np.log(reading) / reading_var)
    z = (mean - np.log(limit)) / np.sqrt(var)
    return float(norm.cdf(z if above else -z))


def _us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


def _ts(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


class PatientMonitor(EventTimeInputs):
    late_table = PATIENT.late_table

    def __init__(self, unit_id: str, config: MonitorConfig = DEFAULT_CONFIG, lake: str | None = None,
                 twin: bool = True) -> None:
        self.unit_id = self.reactor_id = unit_id
        self.config = config
        self.lake = None if lake is None else str(lake)
        self.twin = twin
        self.reorder = ReorderBuffer(int(config.lateness_s * 1e6))
        self.detectors = {name: make_detector(name) for name in VITALS_MEMBERS}
        self.run_id: str | None = None
        self.late_count = 0
        self.duplicate_count = 0
        self.last_ts: datetime | None = None
        self._reset()

    def _reset(self) -> None:
        """A new run (patient admission): every learnt baseline, rule and dose history starts again."""
        self.det_states = {name: det.init_state(VITAL_SIGNALS) for name, det in self.detectors.items()}
        self.alarms = {name: MemberAlarms(1.0, m.off_share, m.persist, m.clear) for name, m in VITALS_MEMBERS.items()}
        self.open_alerts: dict[str, dict] = {}
        self.hb_g_dl: list[float] = []
        self.inrs: list[tuple[int, float]] = []  # (sample time us, INR)
        self.inr_reached_us: int | None = None  # the first INR in range (ends the initiation)
        self.inr_held: set[str] = set()  # INR rules whose last reading was marginal, explained: to confirm
        self.warfarin: list[tuple[int, float]] = []  # doses taken (time us, mg)
        self.last_warfarin_mg: float | None = None  # the latest dose decided, taken or not
        self.comedication_us: dict[str, int] = {}  # co-medication -> its first dose
        self.missed_us: list[int] = []  # warfarin doses missed in the adherence window
        self.patient: dict | None = None  # the `patients` row, read from the lake once per run
        self.patient_tried_at = -np.inf  # when it was last looked for (monotonic s)
        self.covariates: warfarin.Covariates | None = None
        self.twin_eta: np.ndarray | None = None  # the latest refit's MAP (its warm start)
        self.twin_refits_kept = 0  # refits stopped by their budget: the previous fit stood
        self.established_factor = 1.0  # clearance factor of co-medications taken since before the run
        # metoprolol's predicted effect on pulse and pressure: its PK stepped with the vitals, doses as they come
        self.beta_blocker = PkpdState.initial(1)
        self.beta_blocker_params: SimpleNamespace | None = None
        self.beta_blocker_doses: list[tuple[int, float]] = []  # (time us, mg) not yet stepped in
        self.beta_blocker_clock_us: int | None = None  # the PK is stepped up to here

    def _start(self, run: str, out: Outputs) -> None:
        if run == self.run_id:
            return
        for alert in self.open_alerts.values():  # the run ended in alarm: its alerts close with it
            out.clears.append(alarm_clear(alert, self.last_ts))
        self.run_id = run
        self._reset()

    # ---- inputs -----------------------------------------------------------------------------------------
    def on_doses(self, doses: pa.Table) -> Outputs:
        out = Outputs()
        out.add("doses", doses)
        for row in doses.sort_by("ts").to_pylist():
            if self.run_id is None:
                self._start(row["run_id"], out)
            if row["run_id"] != self.run_id:
                continue
            at_us = _us(row["ts"])
            if row["drug"] == "warfarin":
                self.last_warfarin_mg = row["dose_mg"]
                if row["taken"] and row["dose_mg"]:
                    self.warfarin.append((at_us, float(row["dose_mg"])))
                self._adherence_rule(row, at_us, out)
            elif row["drug"] == "metoprolol":
                if row["taken"] and row["dose_mg"]:
                    self.beta_blocker_doses.append((at_us, float(row["dose_mg"])))
            elif row["taken"] and row["drug"] not in self.comedication_us:
                self.comedication_us[row["drug"]] = at_us
                self._interaction_rule(row, out)
        self._flush_alerts(out)
        return out

    def on_assays(self, labs: pa.Table) -> Outputs:
        """Lab results, judged at their report time by the rules; each INR refits the twin."""
        out = Outputs()
        out.add(PATIENT.assays_table, labs)
        for row in labs.sort_by("sample_ts").to_pylist():
            if self.run_id is None:
                self._start(row["run_id"], out)
            if row["run_id"] != self.run_id:
                continue
            if row["hb_g_dl"] is not None and np.isfinite(row["hb_g_dl"]):
                self._hb_rule(row, out)
            if row["inr"] is not None and np.isfinite(row["inr"]) and row["inr"] > 0:
                self._inr_rules(row, out)
                if self.twin:
                    self._refit(row, out)
        self._flush_alerts(out)
        return out

    # ---- rules on doses and labs -------------------------------------------------------------------------
    def _adherence_rule(self, row: dict, at_us: int, out: Outputs) -> None:
        """`MISSED_DOSES` of the warfarin doses due in the last `MISSED_WINDOW_DAYS` days not taken: the INR will
        fall days later (a clinician's hold is no dose row, so it never counts)."""
        if not row["taken"] and row["dose_mg"]:
            self.missed_us.append(at_us)
        since = at_us - MISSED_WINDOW_DAYS * 24 * US_PER_H
        self.missed_us = [t for t in self.missed_us if t > since]
        missed = len(self.missed_us)
        self._rule("missed_doses", missed >= MISSED_DOSES, missed <= 1, {**row, "sample_ts": row["ts"],
                                                                          "reported_ts": row["ts"]},
                   float(missed), float(MISSED_DOSES), False, "inr", out)

    def _interaction_rule(self, row: dict, out: Outputs) -> None:
        """A drug that changes warfarin's clearance started during warfarin therapy (not taken since before it):
        the INR will move over the next weeks unless the dose does; the alert comes with the first dose."""
        factor = INTERACTING_CL_FACTOR.get(row["drug"])
        started_on_warfarin = bool(self.warfarin) and _us(row["ts"]) - self.warfarin[0][0] > ESTABLISHED_WITHIN_US
        if factor is None or not started_on_warfarin:
            return
        self._rule("interaction", True, False, {**row, "sample_ts": row["ts"], "reported_ts": row["ts"]},
                   1.0 / factor, 1.0, False, "inr", out)

    def _hb_rule(self, row: dict, out: Outputs) -> None:
        hb = float(row["hb_g_dl"])
        if self.hb_g_dl:
            drop = float(np.median(self.hb_g_dl)) - hb
            self._rule("hb_drop", drop >= HB_DROP_G_DL, drop < HB_RECOVERED_G_DL, row, drop, HB_DROP_G_DL,
                       drop >= HB_CRITICAL_G_DL, "hb_g_dl", out)
            if drop >= HB_DROP_G_DL:
                return  # a bleed's readings must not pull the reference down
        self.hb_g_dl.append(hb)

    def _inr_rules(self, row: dict, out: Outputs) -> None:
        inr = float(row["inr"])
        sample_us = _us(row["sample_ts"])
        if inr >= SUB_INR + EPISODE_MARGIN_INR and self.inr_reached_us is None:  # in range, clear of the limit
            self.inr_reached_us = sample_us
        high = self._inr_beyond("inr_high", inr, OVER_INR, True, sample_us)
        self._rule("inr_high", high, inr < OVER_INR, row, inr, OVER_INR, inr >= INR_CRITICAL, "inr", out)
        if self.warfarin:
            first_h = self.warfarin[0][0] / US_PER_H
            reached = np.array([np.nan if self.inr_reached_us is None else self.inr_reached_us / US_PER_H])
            past_initiation = sample_us / US_PER_H >= initiation_end_h(first_h, reached)[0]
            low = past_initiation and self._inr_beyond("inr_low", inr, SUB_INR, False, sample_us)
            self._rule("inr_low", low, inr >= SUB_INR, row, inr, SUB_INR, False, "inr", out)
        self.inrs.append((sample_us, inr))

    def _inr_beyond(self, member: str, inr: float, limit: float, above: bool, sample_us: int) -> bool:
        """Whether an INR reading beyond `limit` puts the patient there (the module docstring): at once if it is
        clearly beyond or a bleed is suspected; a marginal one when the twin's forecast and the assay make it more
        likely than not (`p_beyond`), else it is held. The next reading confirms a held one when it is beyond the
        limit again or still clearly out of the therapeutic range (the held reading's side, by more than
        `MARGINAL_INR`: over-anticoagulation a week on is no passing fluctuation)."""
        if member in self.inr_held:
            self.inr_held.discard(member)
            out_of_range = TARGET_INR + 0.5 + MARGINAL_INR if above else TARGET_INR - 0.5 - MARGINAL_INR
            if inr > out_of_range if above else inr < out_of_range:
                return True
        if not (inr >= limit if above else inr < limit):
            return False
        if abs(inr - limit) >= MARGINAL_INR or "hb_drop" in self.open_alerts or member in self.open_alerts:
            return True
        forecast = self._forecast_at(sample_us)
        if forecast is None or p_beyond(inr, limit, above, *forecast) >= 0.5:
            return True
        self.inr_held.add(member)
        return False

    def _rule(self, member: str, fires: bool, clears: bool, row: dict, score: float, threshold: float,
              critical: bool, signal: str, out: Outputs) -> None:
        if member in self.open_alerts:
            if clears:
                out.clears.append(alarm_clear(self.open_alerts.pop(member), row["reported_ts"]))
            return
        if not fires:
            return
        key = f"{self.run_id}|{_us(row['sample_ts'])}|{DETECTOR}|{member}"
        alert = {"alert_id": hashlib.sha1(key.encode()).hexdigest()[:16], "run_id": self.run_id,
                 "reactor_id": self.unit_id, "seq": None, "ts": row["reported_ts"], "detector": DETECTOR,
                 "member": member, "score": float(score), "threshold": float(threshold),
                 "severity": "critical" if critical else "warning",
                 "signals": [{"name": signal, "contribution": 1.0}], "emitted_at": datetime.now(UTC)}
        self.open_alerts[member] = alert
        out.alerts.append(alert)

    # ---- vitals -----------------------------------------------------------------------------------------
    def _score(self, ordered: pa.Table | None, out: Outputs) -> None:
        if ordered is None or ordered.num_rows == 0:
            return
        out.add(PATIENT.ticks_table, ordered)
        runs = ordered["run_id"]
        run_ids = distinct(runs)
        for run in run_ids:
            part = ordered if len(run_ids) == 1 else ordered.filter(pc.equal(runs, run))
            self._start(run, out)
            self._score_run(part, out)
        self._flush_alerts(out)

    @staticmethod
    def _flush_alerts(out: Outputs) -> None:
        if out.alerts:
            out.tables["alerts"] = pa.Table.from_pylist(out.alerts, schema=ALERTS)

    def _score_run(self, vitals: pa.Table, out: Outputs) -> None:
        X = np.column_stack([vitals[name].to_numpy(zero_copy_only=False) for name in VITAL_SIGNALS]).astype(float)
        ts = vitals["ts"].cast(pa.int64()).to_numpy()
        # the residual judges the patient with the drug's predicted effect taken out (a dose change is explained);
        # NEWS2 and sensor health judge the readings as they are
        undrugged = X - self._beta_blocker_effect(ts)
        names = list(VITALS_MEMBERS)
        n = vitals.num_rows
        ratios, contribs, raw = np.zeros((len(names), n)), np.zeros((len(names), n, X.shape[1])), []
        for j, name in enumerate(names):
            self.det_states[name], scores, contrib = self.detectors[name].score_learn_detail(
                self.det_states[name], ts, undrugged if name == "vitals_residual" else X)
            raw.append(scores)
            ratios[j], contribs[j] = scores / VITALS_MEMBERS[name].threshold, contrib
        self.last_ts = vitals["ts"][-1].as_py()
        is_alarm = np.zeros(n, dtype=bool)
        for j, name in enumerate(names):
            on, fired, cleared = self.alarms[name].apply(ratios[j][None])
            is_alarm |= on
            for i in np.flatnonzero(cleared[0]):
                if name in self.open_alerts:
                    out.clears.append(alarm_clear(self.open_alerts.pop(name), vitals["ts"][int(i)].as_py()))
            for i in np.flatnonzero(fired[0]):
                alert = self._alert(vitals, int(i), float(raw[j][i]), contribs[j, i], name)
                self.open_alerts[name] = alert
                out.alerts.append(alert)
        top = ratios.max(axis=0)
        out.add("scores", pa.Table.from_arrays(
            [vitals["run_id"], vitals[PATIENT.unit_column], vitals["seq"], vitals["ts"],
             pa.repeat(pa.scalar(DETECTOR), n), held(top), pa.repeat(pa.scalar(1.0), n), pa.array(is_alarm),
             pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())], schema=SCORES))

    def _alert(self, vitals: pa.Table, i: int, score: float, contrib: np.ndarray, member: str) -> dict:
        run_id, seq = vitals["run_id"][i].as_py(), vitals["seq"][i].as_py()
        weights = np.abs(np.nan_to_num(contrib))
        total = weights.sum() or 1.0
        signals = [{"name": VITAL_SIGNALS[j], "contribution": float(weights[j] / total)}
                   for j in np.argsort(-weights)[:5] if weights[j] > 0]
        alarm = VITALS_MEMBERS[member]
        alert_id = hashlib.sha1(f"{run_id}|{seq}|{DETECTOR}|{member}".encode()).hexdigest()[:16]
        return {"alert_id": alert_id, "run_id": run_id, "reactor_id": self.unit_id, "seq": seq,
                "ts": vitals["ts"][i].as_py(), "detector": DETECTOR, "member": member, "score": score,
                "threshold": alarm.threshold, "severity": "critical" if score >= alarm.critical else "warning",
                "signals": signals, "emitted_at": datetime.now(UTC)}

    # ---- the twin ---------------------------------------------------------------------------------------
    def _patient_row(self) -> dict | None:
        """The patient's row of the lake's `patients` table (covariates), read once per run; None without (asked
        again at most every `PATIENT_RETRY_S`: a live plant writes it as it starts, maybe after the first lab)."""
        due = time.monotonic() - self.patient_tried_at > PATIENT_RETRY_S
        if self.patient is None and self.lake is not None and self.run_id is not None and due:
            self.patient_tried_at = time.monotonic()
            try:
                rows = read_run(self.lake, "patients", self.run_id)
                self.patient = rows.to_pylist()[0] if rows is not None and rows.num_rows else None
            except Exception as err:  # noqa: BLE001 - the population's typical patient then, the monitor goes on
                log.warning("no covariates for %s from %s: %s", self.run_id, self.lake, err)
        return self.patient

    def _beta_blocker_effect(self, ts: np.ndarray) -> np.ndarray:
        """Metoprolol's predicted effect on each vital at the readings' times `ts` (us), (n, len(VITAL_SIGNALS)):
        its PK (`pkpd.step_pkpd`, the patient's sex and CYP2D6 phenotype, typical otherwise) stepped from reading
        to reading, each dose entering at the first reading at or after it."""
        effect = np.zeros((len(ts), len(VITAL_SIGNALS)))
        if not self.beta_blocker_doses and self.beta_blocker_clock_us is None:
            return effect  # never given: nothing to step
        if self.beta_blocker_params is None:
            row = self._patient_row() or {}
            self.beta_blocker_params = SimpleNamespace(
                warfarin=warfarin.typical_params(warfarin.Covariates.typical(["*1/*1"], ["G/A"])),
                metoprolol=metoprolol.typical_params(np.array([row.get("sex") or "M"]),
                                                     np.array([row.get("cyp2d6") or "NM"])))
        first_step = int(ts[1] - ts[0]) if len(ts) > 1 else 300_000_000
        clock = self.beta_blocker_clock_us if self.beta_blocker_clock_us is not None else int(ts[0]) - first_step
        steps = np.diff(np.concatenate([[clock], ts]))
        dose = np.zeros((1, len(ts)))
        kept = []
        for at_us, mg in self.beta_blocker_doses:
            i = int(np.searchsorted(ts, at_us, side="left"))
            if i < len(ts):
                dose[0, i] += mg
            else:
                kept.append((at_us, mg))  # after these readings: the next ones take it
        self.beta_blocker_doses = kept
        dt_h = max(float(np.median(steps)), 1.0) / US_PER_H  # readings come evenly spaced
        self.beta_blocker, out = step_pkpd(self.beta_blocker, self.beta_blocker_params, np.zeros((1, len(ts))), dose,
                                           np.ones((1, len(ts))), dt_h)
        self.beta_blocker_clock_us = int(ts[-1])
        for key, values in (("hr_bpm", out.hr_effect_bpm), ("sbp_mmhg", out.sbp_effect_mmhg),
                            ("dbp_mmhg", out.dbp_effect_mmhg)):
            effect[:, VITAL_SIGNALS.index(key)] = values[0]
        return effect

    def _patient_covariates(self) -> warfarin.Covariates:
        """The patient's warfarin covariates (`_patient_row`); the population's typical patient without them."""
        if self.covariates is not None:
            return self.covariates
        row = self._patient_row()
        if row is None:  # not cached: the row may come later
            return warfarin.Covariates.typical(["*1/*1"], ["G/A"])
        cov = warfarin.Covariates(np.array([row["age_years"]]), np.array([row["weight_kg"]]),
                                  np.array([row["cyp2c9"]]), np.array([row["vkorc1_1639"]]),
                                  np.array([bool(row["amiodarone"])]), np.array([bool(row["enzyme_inducer"])]))
        self.covariates = cov
        self.established_factor = float(warfarin.steady_state_factor(cov)[0])
        return cov

    def _clearance(self, t0_us: int):  # noqa: ANN202 - a function of hours since the first dose
        """The clearance factor over time (hours since the first dose): co-medications taken since before the run
        at their steady effect, those started during it building up (`warfarin.clearance_factor`)."""
        steady = self.established_factor
        started = {drug: (at_us - t0_us) / US_PER_H for drug, at_us in self.comedication_us.items()}

        def factor(t_h: np.ndarray) -> np.ndarray:
            amio = t_h - started["amiodarone"] if "amiodarone" in started else np.full_like(t_h, np.nan)
            inducer = t_h - started["enzyme_inducer"] if "enzyme_inducer" in started else np.full_like(t_h, np.nan)
            return steady * warfarin.clearance_factor(amio, inducer)

        return factor

    def _forecast_at(self, sample_us: int) -> tuple[float, float, float] | None:
        """The twin's INR forecast (median, 10-90 % band) at `sample_us` from the doses taken and the readings
        before it (refitted from the population prior to convergence: the answer does not depend on when or
        whether the live refits ran); None before any warfarin dose or when the fit fails."""
        if not self.warfarin or sample_us <= self.warfarin[0][0]:
            return None
        t0_us = self.warfarin[0][0]
        dose_t_h = np.array([(t - t0_us) / US_PER_H for t, _ in self.warfarin if t < sample_us])
        dose_mg = np.array([mg for t, mg in self.warfarin if t < sample_us])
        lab_t_h = np.array([(t - t0_us) / US_PER_H for t, _ in self.inrs])
        inr = np.array([v for _, v in self.inrs])
        keep = lab_t_h > 0
        try:
            fit = fit_patient(self._patient_covariates(), dose_t_h, dose_mg, lab_t_h[keep], inr[keep],
                              cl_factor_h=self._clearance(t0_us))
            mid, lo, hi = fit.forecast(np.array([(sample_us - t0_us) / US_PER_H]), n_draws=TWIN_DRAWS)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
            log.warning("twin forecast for %s failed: %s", self.run_id, err)
            return None
        return float(mid[0]), float(lo[0]), float(hi[0])

    def _refit(self, row: dict, out: Outputs) -> None:
        if not self.warfarin:
            return
        started, started_cpu = time.perf_counter(), time.thread_time()
        t0_us = self.warfarin[0][0]
        dose_t_h = np.array([(t - t0_us) / US_PER_H for t, _ in self.warfarin])
        dose_mg = np.array([mg for _, mg in self.warfarin])
        lab_t_h = np.array([(t - t0_us) / US_PER_H for t, _ in self.inrs])
        inr = np.array([v for _, v in self.inrs])
        keep = lab_t_h > 0  # a baseline INR before the first dose says nothing about the drug
        if not keep.any():
            return
        cov = self._patient_covariates()
        try:
            fit = fit_patient(cov, dose_t_h, dose_mg, lab_t_h[keep], inr[keep], cl_factor_h=self._clearance(t0_us),
                              start_eta=self.twin_eta, max_iter=TWIN_FIT_MAX_ITER,
                              cpu_deadline_s=started_cpu + TWIN_FIT_BUDGET_S)
            if not fit.converged and self.twin_eta is not None:
                self.twin_eta = fit.eta  # the next refit goes on from here
                self.twin_refits_kept += 1
                log.info("twin refit of %s stopped at its budget: the previous fit stands", self.run_id)
                return
            advised, _, _ = fit.stable_weekly_dose_mg(TARGET_INR, n_draws=TWIN_DRAWS)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
            log.warning("twin refit of %s failed: %s", self.run_id, err)
            return
        self.twin_eta = fit.eta
        sample_us = _us(row["sample_ts"])
        sample_h = (sample_us - t0_us) / US_PER_H
        at_h = sample_h + 24.0 * np.arange(1, FORECAST_DAYS + 1)
        # future doses: daily at the hour of the last dose taken, from the first such time after both that dose and
        # the sample (doses missed in between were not taken: the forecast must not assume them)
        first = max(1, int(np.floor((sample_h - dose_t_h[-1]) / 24.0)) + 1)
        future_t_h = dose_t_h[-1] + 24.0 * np.arange(first, int(np.ceil((at_h[-1] - dose_t_h[-1]) / 24.0)) + 1)
        current = float(self.last_warfarin_mg if self.last_warfarin_mg is not None else dose_mg[-1])
        rows = []
        for dosing, daily in (("current", current), ("advised", advised / 7.0)):
            mid, lo, hi = fit.forecast(at_h, future_t_h, np.full(len(future_t_h), daily), n_draws=TWIN_DRAWS)
            rows += [{"run_id": self.run_id, "patient_id": self.unit_id, "fitted_ts": row["sample_ts"],
                      "ts": _ts(t0_us + int(h * US_PER_H)), "dosing": dosing, "inr_mid": float(m),
                      "inr_lo": float(a), "inr_hi": float(b), "weekly_dose_mg": 7.0 * daily,
                      "advised_weekly_dose_mg": float(advised), "labs_used": int(keep.sum())}
                     for h, m, a, b in zip(at_h, mid, lo, hi, strict=True)]
        out.add("twin_forecasts", pa.Table.from_pylist(rows, schema=TWIN_FORECASTS))
        out.twins.append({"run_id": self.run_id, "patient_id": self.unit_id, "fitted_ts": row["sample_ts"],
                          "advised_weekly_dose_mg": float(advised), "labs_used": int(keep.sum()),
                          "forecasts": rows})
        log.debug("twin refit of %s in %.3f s", self.run_id, time.perf_counter() - started)


def twin_message(twin: dict) -> tuple[str, dict[str, str]]:
    """The subject and headers of a twin message (`Outputs.twins`): JetStream drops a republished refit."""
    fitted = twin["fitted_ts"]
    stamp = fitted.isoformat() if isinstance(fitted, datetime) else str(fitted)
    return f"biopilot.twin.{twin['patient_id']}", {"Nats-Msg-Id": f"twin-{twin['run_id']}-{stamp}"}


def warm_up(config: MonitorConfig, twin: bool = False) -> Outputs:
    """Validate and score a few synthetic vitals (and with `twin`, refit a twin on two days of doses and an INR),
    so that the compiled kernels load now, not on the first real reading or lab."""
    n = 10
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ts = pa.array(_us(start) + 300_000_000 * np.arange(n), pa.int64()).cast(VITALS.field("ts").type)
    normal = {"hr_bpm": 72.0, "sbp_mmhg": 128.0, "dbp_mmhg": 76.0, "spo2_pct": 97.0, "rr_min": 16.0, "temp_c": 36.8}
    vitals = pa.table({"run_id": ["warm-up"] * n, "patient_id": ["warm-up"] * n, "seq": np.arange(n), "ts": ts,
                       **{name: [normal[name]] * n for name in VITAL_SIGNALS}}, schema=VITALS)
    monitor = PatientMonitor("warm-up", config, twin=twin)
    out = monitor.on_ticks(validate_ticks(vitals.combine_chunks(), PATIENT).good)
    if twin:
        monitor.on_doses(pa.Table.from_pylist([
            {"run_id": "warm-up", "patient_id": "warm-up", "ts": start + timedelta(days=d), "drug": "warfarin",
             "dose_mg": 5.0, "taken": True} for d in range(2)], schema=DOSES))
        monitor.on_assays(pa.Table.from_pylist([
            {"run_id": "warm-up", "patient_id": "warm-up", "sample_ts": start + timedelta(days=2),
             "reported_ts": start + timedelta(days=2, hours=6), "inr": 1.3, "hb_g_dl": 13.5}], schema=LABS))
    return out


# ---- offline: a stored run --------------------------------------------------------------------------------
def read_run(lake: str | Path, name: str, run_id: str) -> pa.Table | None:
    """One run's rows of a lake table (None if the table does not exist)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    lake = str(lake)
    uri = f"{lake.rstrip('/')}/{name}" if "://" in lake else str(Path(lake) / name)
    try:
        table = DeltaTable(uri, storage_options=lake_storage_options(lake))
    except TableNotFoundError:
        return None
    return table.to_pyarrow_dataset().to_table(filter=ds.field("run_id") == run_id)


def monitor_stored(lake: str | Path, run_id: str, twin: bool = False,
                   config: MonitorConfig = DEFAULT_CONFIG) -> list[dict]:
    """The alerts the live monitor raises on a stored run: its vitals, labs (at their report time) and doses
    (at their time) in event-time order, as the flow would see them. `twin`: refit the twin at each INR too
    (slower; the alerts do not depend on it)."""
    monitor, outputs = replay_run(read_run(lake, "vitals", run_id), read_run(lake, "labs", run_id),
                                  read_run(lake, "doses", run_id), lake=str(lake), twin=twin, config=config)
    return [alert for out in outputs for alert in out.alerts]


def replay_run(vitals: pa.Table | None, labs: pa.Table | None, doses: pa.Table | None, lake: str | None = None,
               twin: bool = False, config: MonitorConfig = DEFAULT_CONFIG) -> tuple[PatientMonitor | None,
                                                                                    list[Outputs]]:
    """One patient's run through a `PatientMonitor` in event-time order: the vitals up to each lab report or
    dose, then that lab or dose, and at the end a watermark past the last reading. Returns the monitor and
    every step's outputs."""
    parts = [t for t in (vitals, labs, doses) if t is not None and t.num_rows]
    if not parts:
        return None, []
    patient_id = parts[0]["patient_id"][0].as_py()
    monitor = PatientMonitor(patient_id, config, lake=lake, twin=twin)
    vitals = vitals.sort_by("seq") if vitals is not None and vitals.num_rows else VITALS.empty_table()
    events: list[tuple[int, int, str, pa.Table]] = []  # (time us, order at a tie, kind, rows)
    if doses is not None and doses.num_rows:
        for at in distinct(doses["ts"]):
            events.append((_us(at), 0, "doses", doses.filter(pc.equal(doses["ts"], pa.scalar(at, doses["ts"].type)))))
    if labs is not None and labs.num_rows:
        for at in distinct(labs["reported_ts"]):
            rows = labs.filter(pc.equal(labs["reported_ts"], pa.scalar(at, labs["reported_ts"].type)))
            events.append((_us(at), 1, "labs", rows))
    events.sort(key=lambda e: (e[0], e[1]))
    ts = vitals["ts"].cast(pa.int64()).to_numpy()
    outputs, start = [], 0
    for at_us, _, kind, rows in events:
        stop = int(np.searchsorted(ts, at_us, side="right"))
        if stop > start:
            outputs.append(monitor.on_ticks(vitals.slice(start, stop - start)))
            start = stop
        outputs.append(monitor.on_doses(rows) if kind == "doses" else monitor.on_assays(rows))
    if start < len(ts):
        outputs.append(monitor.on_ticks(vitals.slice(start)))
    if len(ts):
        outputs.append(monitor.on_watermark(int(ts[-1]) + int(config.lateness_s * 1e6) + 1))
    return monitor, outputs
