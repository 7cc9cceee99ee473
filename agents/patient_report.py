"""`biopilot report RUN` for a patient run: the patient (covariates, genotype, co-medications), the scenario, a
figure of the vitals, the INR against its 2-3 range, Hb and the warfarin doses with the incidents shaded, the labs,
the doses taken and missed, the time in therapeutic range, and the incidents with their ranked causes (the same
monitoring + troubleshooting as `biopilot diagnose`). Rendered as the reactor's report is (`agents.report`).

Time in therapeutic range (TTR) after Rosendaal: the INR linearly interpolated between consecutive lab INRs, read
once a day from the first lab to the last; the TTR is the share of those days with an INR in 2-3.

>>> from datetime import UTC, datetime
>>> d = lambda day: datetime(2026, 1, day, 8, tzinfo=UTC)
>>> round(time_in_range([(d(1), 1.5), (d(11), 3.5)]), 2)  # 11 days of a line from 1.5 to 3.5: 5 in 2-3
0.45
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from agents import report  # noqa: E402
from agents.diagnose import IncidentFinding  # noqa: E402
from agents.patient_diagnose import PatientRun, diagnose_patient, load_patient_run, monitor_messages  # noqa: E402
from sinks import delta  # noqa: E402

INR_RANGE = (2.0, 3.0)  # warfarin's therapeutic range (REFERENCES-patient.md)
VITAL_PANELS = (("hr_bpm", "HR (bpm)"), (("sbp_mmhg", "dbp_mmhg"), "BP (mmHg)"), ("spo2_pct", "SpO2 (%)"),
                ("temp_c", "temperature (°C)"))
PATIENT_FIELDS = (("age_years", "age (years)", "{:.0f}"), ("sex", "sex", "{}"), ("weight_kg", "weight (kg)", "{:.1f}"),
                  ("height_cm", "height (cm)", "{:.0f}"), ("ancestry", "ancestry", "{}"), ("cyp2c9", "CYP2C9", "{}"),
                  ("vkorc1_1639", "VKORC1 -1639G>A", "{}"), ("cyp2d6", "CYP2D6", "{}"))


def plant_of(lake: str | Path, run_id: str) -> str | None:
    """The run's plant from the `runs` table; a run with vitals but no `runs` row is a patient's."""
    runs = delta.read(lake, "runs", columns=["plant"], run_ids=[run_id])
    if runs is not None and runs.num_rows:
        return runs["plant"][0].as_py()
    vitals = delta.read(lake, "vitals", columns=["run_id"], run_ids=[run_id])
    return "patient" if vitals is not None and vitals.num_rows else None


def write_run(lake: str | Path, run_id: str, fmt: str, out_dir: Path) -> Path:
    """The report of a stored run, whichever its plant: a patient's here, a reactor's by `agents.report`."""
    report.report_path(out_dir, run_id, fmt)  # an id before the lake is read
    if plant_of(lake, run_id) == "patient":
        return write(lake, run_id, fmt, out_dir)
    return report.write(lake, run_id, fmt, out_dir)


def time_in_range(inrs: list[tuple[datetime, float]], lo: float = INR_RANGE[0], hi: float = INR_RANGE[1],
                  ) -> float | None:
    """Rosendaal TTR: the share of days, from the first lab INR to the last, whose linearly interpolated INR lies
    in [lo, hi]; None with fewer than two lab INRs."""
    if len(inrs) < 2:
        return None
    t = np.array([ts.timestamp() for ts, _ in inrs]) / 86400.0
    days = np.arange(t[0], t[-1] + 1e-9, 1.0)
    inr = np.interp(days, t, [v for _, v in inrs])
    return float(np.mean((inr >= lo) & (inr <= hi)))


@dataclass
class PatientReport:
    run_id: str
    run: PatientRun
    meta: dict  # the `runs` row
    config: dict
    origin: datetime
    findings: list[IncidentFinding]
    plot: Path

    @property
    def inrs(self) -> list[tuple[datetime, float]]:
        return [(r["sample_ts"], r["inr"]) for r in self.lab_rows if r["inr"] is not None]

    @property
    def lab_rows(self) -> list[dict]:
        labs = self.run.labs
        return labs.sort_by("sample_ts").to_pylist() if labs is not None else []

    @property
    def ttr(self) -> float | None:
        return time_in_range(self.inrs)

    def doses(self) -> dict[str, tuple[int, int, float]]:
        """Per drug: doses taken, missed, and mg taken."""
        rows = self.run.doses.to_pylist() if self.run.doses is not None else []
        taken, missed, mg = Counter(), Counter(), Counter()
        for r in rows:
            (taken if r["taken"] else missed)[r["drug"]] += 1
            mg[r["drug"]] += (r["dose_mg"] or 0.0) if r["taken"] else 0.0
        return {d: (taken[d], missed[d], mg[d]) for d in sorted(set(taken) | set(missed))}

    def comedications(self) -> list[str]:
        p = self.run.patient or {}
        flagged = [name for name in ("amiodarone", "enzyme_inducer") if p.get(name)]
        dosed = [d for d in self.doses() if d != "warfarin"]
        return list(dict.fromkeys(flagged + dosed))

    def day(self, ts: datetime) -> float:
        return (ts - self.origin).total_seconds() / 86400.0

    def text_summary(self) -> str:
        p = self.run.patient or {}
        parts = [f"Patient {self.run.patient_id} ({_fmt(p.get('age_years'), '{:.0f}')} y, {p.get('sex', '?')}, "
                 f"CYP2C9 {p.get('cyp2c9', '?')}, VKORC1 {p.get('vkorc1_1639', '?')}) in scenario "
                 f"{self.meta.get('scenario', '?')}, run {self.run_id}."]
        ttr = self.ttr
        parts.append(f"Time in therapeutic range (INR 2-3, Rosendaal): {ttr:.0%}." if ttr is not None
                     else "Time in therapeutic range: not computable (fewer than two lab INRs).")
        named = [f.diagnosis.top.fault for f in self.findings if f.diagnosis.top]
        if self.findings:
            parts.append(f"{len(self.findings)} incident(s) were raised" + (
                f"; most likely causes: {', '.join(dict.fromkeys(named))}." if named else
                "; none with enough evidence to name a cause."))
        else:
            parts.append("No incident was raised.")
        return " ".join(parts)


def _fmt(value: object, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def plot(r: PatientReport, out: Path, decimate: int = 3) -> Path:
    vitals = r.run.vitals.sort_by("ts")
    t_us = vitals["ts"].cast(pa.int64()).to_numpy()
    day = (t_us / 1e6 - r.origin.timestamp()) / 86400.0
    n = len(VITAL_PANELS) + 3
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.5 * n), sharex=True)
    for ax, (names, title) in zip(axes, VITAL_PANELS, strict=False):
        for name in (names,) if isinstance(names, str) else names:
            ax.plot(day[::decimate], vitals[name].to_numpy(zero_copy_only=False)[::decimate], lw=0.6, label=name)
        ax.set_ylabel(title, fontsize=7)
        if not isinstance(names, str):
            ax.legend(fontsize=6, loc="upper right")
    inr_ax, hb_ax, dose_ax = axes[len(VITAL_PANELS):]
    labs = r.lab_rows
    inrs = r.inrs
    inr_ax.axhspan(*INR_RANGE, color="tab:green", alpha=0.15, lw=0)
    if inrs:
        inr_ax.plot([r.day(ts) for ts, _ in inrs], [v for _, v in inrs], "o-", ms=3, lw=0.8)
    inr_ax.set_ylabel("INR (lab)", fontsize=7)
    hb = [(r.day(x["sample_ts"]), x["hb_g_dl"]) for x in labs if x["hb_g_dl"] is not None]
    if hb:
        hb_ax.plot(*zip(*hb, strict=True), "s-", ms=3, lw=0.8, color="tab:purple")
    hb_ax.set_ylabel("Hb (g/dL)", fontsize=7)
    doses = r.run.doses.to_pylist() if r.run.doses is not None else []
    for taken, color in ((True, "tab:blue"), (False, "tab:red")):
        pts = [(r.day(d["ts"]), d["dose_mg"] or 0.0) for d in doses if d["drug"] == "warfarin" and d["taken"] == taken]
        if pts:
            dose_ax.bar(*zip(*pts, strict=True), width=0.3, color=color, label="taken" if taken else "missed")
    dose_ax.set_ylabel("warfarin (mg)", fontsize=7)
    if doses:
        dose_ax.legend(fontsize=6, loc="upper right")
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return report.shade_and_save(fig, axes, r.findings, r.day, float(day[-1]), "day of treatment", out)


def build(lake: str | Path, run_id: str, out_dir: Path) -> PatientReport:
    run = load_patient_run(lake, run_id)  # RunNotFound, one line, when the run has no vitals
    runs = delta.read(lake, "runs", run_ids=[run_id])
    meta = runs.to_pylist()[0] if runs is not None and runs.num_rows else {}
    config = json.loads(meta["config_json"]) if meta.get("config_json") else {}
    origin = meta.get("started_ts") or run.vitals["ts"][0].as_py()
    findings = list(diagnose_patient(run, monitor_messages(run)))
    r = PatientReport(run_id, run, meta, config, origin, findings, report.report_path(out_dir, run_id, "png"))
    plot(r, r.plot)
    return r


def markdown(r: PatientReport, image: str) -> str:
    p = r.run.patient or {}
    lines = [f"# Patient run report: {r.run_id}", "", r.text_summary(), "", "## Patient", ""]
    if p:
        lines += ["| covariate | value |", "|---|---|", f"| patient | {r.run.patient_id} |"]
        lines += [f"| {label} | {_fmt(p.get(key), spec)} |" for key, label, spec in PATIENT_FIELDS]
        lines.append(f"| co-medications | {', '.join(r.comedications()) or 'none'} |")
    else:
        lines.append("No patient row stored for this run.")
    c, m = r.config, r.meta
    lines += ["", "## Scenario and run", "", "| item | value |", "|---|---|",
              f"| scenario | {m.get('scenario', 'n/a')} |", f"| description | {c.get('description', 'n/a')} |",
              f"| seed | {m.get('seed', 'n/a')} |", f"| start | {r.origin:%Y-%m-%d %H:%M} UTC |",
              f"| days | {_fmt(c.get('days'), '{:g}')} |", f"| drug | {c.get('drug', 'n/a')} |",
              f"| dosing protocol | {c.get('protocol', 'n/a')} |", f"| target INR | {_fmt(c.get('target_inr'), '{:g}')} |"]
    ttr = r.ttr
    lines += ["", "## Time in therapeutic range", "",
              (f"TTR {ttr:.0%} (INR {INR_RANGE[0]:g}-{INR_RANGE[1]:g}): Rosendaal linear interpolation between "
               f"consecutive lab INRs, read once a day from the first lab to the last ({len(r.inrs)} lab INRs)."
               if ttr is not None else "TTR not computable: fewer than two lab INRs (Rosendaal linear interpolation "
                                       "needs two).")]
    lines += ["", "## Labs", ""]
    if r.lab_rows:
        lines += ["| sampled | day | reported | INR | Hb (g/dL) |", "|---|---|---|---|---|"]
        lines += [f"| {x['sample_ts']:%Y-%m-%d %H:%M} | {r.day(x['sample_ts']):.1f} | {x['reported_ts']:%Y-%m-%d %H:%M}"
                  f" | {_fmt(x['inr'], '{:.1f}')} | {_fmt(x['hb_g_dl'], '{:.1f}')} |" for x in r.lab_rows]
    else:
        lines.append("None.")
    lines += ["", "## Doses", ""]
    doses = r.doses()
    if doses:
        lines += ["| drug | taken | missed | mg taken |", "|---|---|---|---|"]
        lines += [f"| {d} | {t} | {ms} | {mg:g} |" for d, (t, ms, mg) in doses.items()]
    else:
        lines.append("None.")
    lines += ["", "## Incidents", "", *report.incident_lines(r.findings)]
    lines += ["", "## Vitals, INR, Hb and warfarin doses", "",
              f"![vitals, INR, Hb and warfarin doses with incidents shaded]({image})", ""]
    return "\n".join(lines)


def write(lake: str | Path, run_id: str, fmt: str, out_dir: Path) -> Path:
    if fmt not in report.FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(report.FORMATS)}")
    out = report.report_path(out_dir, run_id, fmt)  # before anything is read or written
    out_dir.mkdir(parents=True, exist_ok=True)
    r = build(lake, run_id, out_dir)
    return report.render(markdown(r, r.plot.name), r.plot, fmt, out)
