"""The report of one trial patient's run, what `biopilot report RUN` writes for a run a trial stored
(`trial run --lake`): the trial, arm and protocol, the patient and genotype, the endpoints of the `trial_arms`
row, the INR draws and the doses, and a figure (the INRs against the range over the doses). A trial simulates no
vitals (docs/TRIALS.md), so the run report of a simulated patient (`agents.patient_report`, built on the vitals)
does not apply; the whole trial's report is `biopilot trial run ... --report`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402

from agents.figures import save_figure  # noqa: E402
from agents.report import FORMATS, render, report_path  # noqa: E402
from sinks import delta  # noqa: E402
from sources.patient.protocols import RANGE_HALF_WIDTH  # noqa: E402

PATIENT_FIELDS = (("age_years", "age (years)", "{:.0f}"), ("sex", "sex", "{}"), ("weight_kg", "weight (kg)", "{:.0f}"),
                  ("height_cm", "height (cm)", "{:.0f}"), ("ancestry", "ancestry", "{}"), ("cyp2c9", "CYP2C9", "{}"),
                  ("vkorc1_1639", "VKORC1 -1639G>A", "{}"), ("cyp2d6", "CYP2D6", "{}"),
                  ("amiodarone", "amiodarone", "{}"), ("enzyme_inducer", "enzyme inducer", "{}"))
# the trial_arms columns shown (label, format, the event flag of a time); empty ones (a metoprolol trial's INR
# endpoints) are left out
ENDPOINT_FIELDS = (("primary_value", "primary endpoint ({})", "{:.1f}", None), ("ttr_pct", "TTR (%)", "{:.1f}", None),
                   ("n_inr", "INR draws", "{:d}", None),
                   ("share_inr_ge_4_pct", "INRs >= 4 (% of the patient's)", "{:.1f}", None),
                   ("days_to_therapeutic", "day of the first INR in range", "{:g}", "therapeutic_reached"),
                   ("days_to_inr_ge_4", "day of the first INR >= 4", "{:g}", "inr_ge_4"),
                   ("days_to_major_bleeding", "day of a major bleed", "{:g}", "major_bleeding"),
                   ("followed_days", "followed (days)", "{:.1f}", None), ("lost_to_follow_up", "lost to follow-up", "{}", None),
                   ("completed", "completed", "{}", None), ("prognostic_score", "PROCOVA prognostic score", "{:.1f}", None))


def trial_row(lake: str | Path, run_id: str) -> dict | None:
    """The run's `trial_arms` row, or None when no trial stored it."""
    rows = delta.read(lake, "trial_arms", run_ids=[run_id])
    return rows.to_pylist()[0] if rows is not None and rows.num_rows else None


def _fmt(value: object, spec: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _table(lake: str | Path, name: str, run_id: str, ts: str) -> pa.Table | None:
    table = delta.read(lake, name, run_ids=[run_id])
    return table.sort_by(ts) if table is not None and table.num_rows else None


def plot(labs: pa.Table | None, doses: pa.Table | None, origin: datetime, ttr_range: tuple[float, float],
         out: Path) -> Path:
    """The lab INRs against the target range (a warfarin trial) over the daily doses."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlabel("day of the trial")
    if labs is not None:
        ax.axhspan(*ttr_range, color="tab:green", alpha=0.15, lw=0, label="target range")
        days = [(t - origin).total_seconds() / 86400 for t in labs["sample_ts"].to_pylist()]
        ax.plot(days, labs["inr"].to_pylist(), "o-", color="tab:red", label="lab INR")
        ax.set_ylabel("INR")
        ax.legend(fontsize=8, loc="upper left")
    if doses is not None:
        dose_ax = ax.twinx() if labs is not None else ax
        days = [(t - origin).total_seconds() / 86400 for t in doses["ts"].to_pylist()]
        taken = doses["taken"].to_pylist()
        dose_ax.bar(days, doses["dose_mg"].to_pylist(), width=0.6, alpha=0.35,
                    color=["tab:blue" if t else "tab:gray" for t in taken])
        dose_ax.set_ylabel(f"{doses['drug'][0].as_py()} dose (mg; grey: missed)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out, dpi=100)


def write(lake: str | Path, run_id: str, fmt: str, out_dir: Path, row: dict | None = None) -> Path:
    """The report of a trial patient's run as `<out_dir>/<run_id>.<fmt>` and its figure beside it."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = report_path(out_dir, run_id, fmt)
    row = row or trial_row(lake, run_id)
    if row is None:
        raise LookupError(f"run {run_id!r} is not a trial's run in {lake} (no trial_arms row)")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = delta.read(lake, "runs", run_ids=[run_id])
    run = runs.to_pylist()[0] if runs is not None and runs.num_rows else {}
    patients = delta.read(lake, "patients", run_ids=[run_id])
    patient = patients.to_pylist()[0] if patients is not None and patients.num_rows else {}
    labs, doses = _table(lake, "labs", run_id, "sample_ts"), _table(lake, "doses", run_id, "ts")
    origin = run.get("started_ts") or (doses["ts"][0].as_py() if doses is not None else datetime.now())
    target = json.loads(run.get("config_json") or "{}").get("target_inr", 2.5)
    png = plot(labs, doses, origin, (target - RANGE_HALF_WIDTH, target + RANGE_HALF_WIDTH), out.with_suffix(".png"))
    return render(markdown(run_id, row, run, patient, labs, doses, origin, png.name), png, fmt, out)


def markdown(run_id: str, row: dict, run: dict, patient: dict, labs: pa.Table | None, doses: pa.Table | None,
             origin: datetime, image: str) -> str:
    primary = row["primary_endpoint"]
    lines = [f"# Trial patient report: {run_id}", "",
             f"Patient {row['patient_id']} of trial **{row['trial_id']}**, arm **{row['arm']}** (protocol "
             f"{row['protocol']}, stratum {row['stratum']}, enrolment order {row['enrolment_order']}): {primary} "
             f"{_fmt(row['primary_value'])}. A trial simulates no vitals; the whole trial's report is "
             "`biopilot trial run --design ... --report F.html` (docs/TRIALS.md).", "",
             "## Patient", "", "| item | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(patient.get(key), spec)} |" for key, label, spec in PATIENT_FIELDS if key in patient]
    lines += [f"| scenario | {run.get('scenario', 'n/a')} |", "", "## Endpoints", "", "| endpoint | value |",
              "|---|---|"]
    for key, label, spec, event in ENDPOINT_FIELDS:
        if row.get(key) is not None:
            value = _fmt(row[key], spec) if event is None or row[event] else f"none by day {row[key]:g} (censored)"
            lines.append(f"| {label.format(primary)} | {value} |")
    if labs is not None:
        lines += ["", "## INR draws", "", "| day | INR | reported (h later) |", "|---|---|---|"]
        lines += [f"| {(s - origin).total_seconds() / 86400:.1f} | {inr:.1f} | {(r - s).total_seconds() / 3600:.0f} |"
                  for s, r, inr in zip(labs["sample_ts"].to_pylist(), labs["reported_ts"].to_pylist(),
                                       labs["inr"].to_pylist(), strict=True)]
    if doses is not None:
        taken = doses["taken"].to_pylist()
        mg = doses["dose_mg"].to_pylist()
        lines += ["", "## Doses", "", f"{len(mg)} prescribed, {sum(taken)} taken; "
                  f"{doses['drug'][0].as_py()} {sum(m for m, t in zip(mg, taken, strict=True) if t):.1f} mg in all, "
                  f"last prescribed {mg[-1]:g} mg/day."]
    lines += ["", "## Figure", "", f"![INR against the target range over the doses]({image})", ""]
    return "\n".join(lines)
