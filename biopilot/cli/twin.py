"""`biopilot twin`: the virtual-patient twin's dose advice on the user's own patients (`twin dose`) and a
simulated patient's own twin fitted to its doses and INR readings (`twin fit`)."""

from __future__ import annotations

import argparse
import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, lake_of, lake_option, positive, read_table

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

NUMERIC_COLUMNS = ("age_years", "height_cm", "weight_kg")
TEXT_COLUMNS = ("sex", "ancestry", "cyp2c9", "vkorc1_1639")
FLAG_COLUMNS = ("amiodarone", "enzyme_inducer")
TRUE_WORDS = {"1", "true", "t", "yes", "y"}
FALSE_WORDS = {"0", "false", "f", "no", "n"}

COLUMNS_HELP = """\
input columns (one row per patient; only patient_id is required, any other column may be absent or have empty
cells, which then take the population prior):
  patient_id      any text, copied to the output
  age_years       18 to 110 (missing: 68, the virtual cohort's mean)
  sex             M or F (no sex covariate; with ancestry, the typical height when height is missing)
  height_cm       120 to 230 (the model scales by weight; with a missing weight, BMI 27 at this height)
  weight_kg       30 to 250 (missing: the cohort's median BMI, 27, at the patient's height)
  ancestry        white, black, asian or other (missing: the population mix)
  cyp2c9          *1/*1, *1/*2, *1/*3, *2/*2, *2/*3 or *3/*3 (missing: Hardy-Weinberg by ancestry)
  vkorc1_1639     G/G, G/A or A/A (missing: Hardy-Weinberg by ancestry)
  amiodarone      true/false, yes/no or 1/0 (missing: not taken)
  enzyme_inducer  rifampicin, carbamazepine, phenytoin: true/false, yes/no or 1/0 (missing: not taken)
output columns: patient_id, weekly_dose_mg, dose_lo_mg, dose_hi_mg (the 10th-90th percentiles over the
between-patient variability and the unknown genotypes)."""


def add_dose(twin: argparse._SubParsersAction) -> None:
    p = command(twin, "dose", cmd_twin_dose, "the stable weekly warfarin dose for each patient of a CSV/Parquet")
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the column table's layout
    p.description = textwrap.fill(" ".join((cmd_twin_dose.__doc__ or "").split()), 110)
    p.epilog = COLUMNS_HELP
    p.add_argument("--input", required=True, help="a .csv or .parquet file of patients (columns below)")
    p.add_argument("--out", required=True, help="output .csv or .parquet")
    p.add_argument("--target-inr", type=float, default=None, help="the INR to reach at steady state "
                   "(1.5 to 4.0; default 2.34, the middle of the INRs patients hold on their stable doses)")


def _column(table: pa.Table, name: str) -> np.ndarray | None:
    import numpy as np

    return np.asarray(table[name].to_pylist(), dtype=object) if name in table.column_names else None


def _numbers(values: np.ndarray | None, name: str) -> np.ndarray | None:
    import numpy as np

    if values is None:
        return None
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values.tolist()):  # input parsing, once per file
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be a number, got {v!r} (row {i + 1})") from None
    return out


def _flags(values: np.ndarray | None, name: str) -> np.ndarray | None:
    import numpy as np

    if values is None:
        return None
    out = np.zeros(len(values), bool)
    for i, v in enumerate(values.tolist()):
        if v is None or isinstance(v, bool):
            out[i] = bool(v)
            continue
        word = str(v).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS or not word:
            out[i] = word in TRUE_WORDS
        else:
            raise UsageError(f"{name} must be true/false, yes/no or 1/0, got {v!r} (row {i + 1})")
    return out


def _text(values: np.ndarray | None) -> np.ndarray | None:
    import numpy as np

    if values is None:
        return None
    return np.asarray([None if v is None else str(v).strip() for v in values.tolist()], dtype=object)


def cmd_twin_dose(args: argparse.Namespace) -> int:
    """Predict each patient's stable weekly warfarin dose (the dose that holds the target INR at steady state)
    with the mechanistic warfarin model (Hamberg 2007), from whatever covariates are known: unknown genotypes
    are averaged over their Hardy-Weinberg probabilities for the patient's ancestry, and the interval spans
    the between-patient variability. Model advice for research and simulation, not for treating patients."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from sources.patient.dose_advice import INTERVAL_QUANTILES, STABLE_INR, advise_doses

    if not args.out.endswith((".csv", ".parquet")):
        raise UsageError(f"--out must end in .csv or .parquet, got {args.out}")
    table = read_table(args.input)
    if "patient_id" not in table.column_names:
        raise UsageError(f"{args.input} has no patient_id column (columns: {', '.join(table.column_names)}); "
                         "see biopilot twin dose --help")
    ids = _column(table, "patient_id")
    if any(v is None or not str(v).strip() for v in ids.tolist()):
        raise UsageError(f"{args.input}: patient_id is empty in some rows")
    covariates = {name: _numbers(_column(table, name), name) for name in NUMERIC_COLUMNS}
    covariates |= {name: _text(_column(table, name)) for name in TEXT_COLUMNS}
    covariates |= {name: _flags(_column(table, name), name) for name in FLAG_COLUMNS}
    with user_errors(ValueError):
        target_inr = STABLE_INR if args.target_inr is None else args.target_inr
        advice = advise_doses([str(v) for v in ids.tolist()], **covariates, target_inr=target_inr)
    out = pa.table({"patient_id": pa.array(advice.patient_id.tolist(), pa.string()),
                    "weekly_dose_mg": advice.weekly_dose_mg.round(2),
                    "dose_lo_mg": advice.dose_lo_mg.round(2),
                    "dose_hi_mg": advice.dose_hi_mg.round(2)})
    try:
        if args.out.endswith(".parquet"):
            pq.write_table(out, args.out)
        else:
            pacsv.write_csv(out, args.out)
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err}") from None
    lo, hi = (round(100 * q) for q in INTERVAL_QUANTILES)
    print(f"advised {out.num_rows:,} patients at target INR {target_inr:.2f} -> {args.out} "
          f"(interval: {lo}th-{hi}th percentile)")
    return 0


def add_genotypes(twin: argparse._SubParsersAction) -> None:
    p = command(twin, "genotypes", cmd_twin_genotypes,
                "the advised dose per CYP2C9 and VKORC1 genotype beside IWPC and the published ratios")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_twin_genotypes(args: argparse.Namespace) -> int:
    """The advised stable weekly dose of a typical patient (71 years, 170 cm, 70 kg, white) for every CYP2C9 x
    VKORC1 -1639 genotype, beside the IWPC formula's; and each genotype's dose as a ratio to the wild type's beside
    the published ratios (CYP2C9: Lindh 2009 meta-analysis, 95 % CI; VKORC1: the published band)."""
    import json

    from sources.patient.dose_advice import genotype_table

    table = genotype_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"typical patient {table['patient']}, target INR {table['target_inr']:g}; weekly dose (mg)")
    print(f"  {'CYP2C9':<7} {'VKORC1':<7} {'advice':>7} {'IWPC':>7} {'ratio':>6}")
    for row in table["doses"]:
        print(f"  {row['cyp2c9']:<7} {row['vkorc1_1639']:<7} {row['advice_weekly_mg']:>7.1f} "
              f"{row['iwpc_weekly_mg']:>7.1f} {row['advice_to_iwpc']:>6.2f}")
    print("dose as a ratio to the wild type's: advice, IWPC, published (range)")
    for gene in ("cyp2c9", "vkorc1_1639"):
        for r in table[gene]:
            print(f"  {r[gene]:<7} {r['advice_ratio']:>6.3f} {r['iwpc_ratio']:>6.3f} {r['published_ratio']:>6.3f} "
                  f"({r['published_lo']:g}-{r['published_hi']:g})")
    return 0


def add_fit(twin: argparse._SubParsersAction) -> None:
    p = command(twin, "fit", cmd_twin_fit, "one simulated patient's own twin, fitted to its doses and INR readings")
    lake_option(p)
    p.add_argument("--patient", required=True, help="the patient_id (e.g. p000012)")
    p.add_argument("--run", default=None, help="the run_id, when several runs hold that patient_id")
    p.add_argument("--until", default=None, help="use what was known at this time (ISO 8601, UTC if no zone; "
                   "default: everything)")
    p.add_argument("--target-inr", type=float, default=2.5, help="1.5 to 4.0 (default 2.5)")
    p.add_argument("--days", type=positive("--days", int), default=14, help="forecast horizon (default 14)")
    p.add_argument("--candidates", default="", help="comma-separated daily doses (mg) to forecast besides the "
                   "current and the advised one")
    p.add_argument("--json", action="store_true", help="print JSON")


def _utc(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--until must be an ISO 8601 time, got {text!r}") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def cmd_twin_fit(args: argparse.Namespace) -> int:
    """Fit the patient's own twin: individual warfarin parameters (clearance, EC50, the slow transit time) as the
    maximum a posteriori given the warfarin doses taken and the INR readings reported so far, with the
    population model as prior and a Laplace approximation of their uncertainty; then the stable dose for the
    target INR and INR forecasts with a 10-90 % band under the current dose, the advised one and any
    candidates."""
    import json

    import numpy as np
    import pyarrow.compute as pc

    from sinks import delta
    from sources.patient import warfarin
    from sources.patient.dose_advice import TARGET_INR_RANGE
    from sources.patient.twin_fit import fit_patient

    lo_inr, hi_inr = TARGET_INR_RANGE
    if not lo_inr <= args.target_inr <= hi_inr:
        raise UsageError(f"target INR {args.target_inr:g} is outside {lo_inr:g} to {hi_inr:g}")
    try:
        candidates = [float(x) for x in args.candidates.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--candidates must be comma-separated numbers, got {args.candidates!r}") from None
    if any(not 0 <= c <= 30 for c in candidates):
        raise UsageError(f"--candidates must be daily doses of 0 to 30 mg, got {args.candidates}")
    lake = lake_of(args)
    patients = delta.read(lake, "patients")
    if patients is None:
        raise UsageError(f"no patients table in {lake}: simulate some with biopilot simulate --plant patient")
    rows = patients.filter(pc.equal(patients["patient_id"], args.patient))
    if args.run:
        rows = rows.filter(pc.equal(rows["run_id"], args.run))
    runs = rows["run_id"].to_pylist()
    if not runs:
        raise UsageError(f"no patient {args.patient}{f' in run {args.run}' if args.run else ''} in {lake}")
    if len(runs) > 1:
        raise UsageError(f"{len(runs)} runs hold {args.patient}; pick one with --run: {', '.join(sorted(runs)[:5])}")
    row = rows.to_pylist()[0]
    doses = delta.read(lake, "doses", run_ids=runs)
    labs = delta.read(lake, "labs", run_ids=runs)
    dose_rows = [] if doses is None else [
        d for d in doses.to_pylist() if d["drug"] == "warfarin" and d["taken"] and d["dose_mg"] is not None]
    lab_rows = [] if labs is None else [r for r in labs.to_pylist() if r["inr"] is not None]
    if args.until:
        until = _utc(args.until)
        dose_rows = [d for d in dose_rows if d["ts"] <= until]
        lab_rows = [r for r in lab_rows if r["reported_ts"] <= until]
    if not dose_rows:
        raise UsageError(f"{args.patient} has taken no warfarin{' by ' + args.until if args.until else ''}")
    dose_rows.sort(key=lambda d: d["ts"])
    t0 = dose_rows[0]["ts"]

    def hours(ts: datetime) -> float:
        return (ts - t0).total_seconds() / 3600.0

    dose_t_h = np.array([hours(d["ts"]) for d in dose_rows])
    dose_mg = np.array([d["dose_mg"] for d in dose_rows])
    lab_t_h = np.array([hours(r["sample_ts"]) for r in lab_rows])
    inr = np.array([r["inr"] for r in lab_rows], float)
    keep = lab_t_h > 0  # a baseline INR before the first dose says nothing about the drug
    cov = warfarin.Covariates(np.array([row["age_years"]]), np.array([row["weight_kg"]]), np.array([row["cyp2c9"]]),
                              np.array([row["vkorc1_1639"]]), np.array([bool(row["amiodarone"])]),
                              np.array([bool(row["enzyme_inducer"])]))
    steady = float(warfarin.steady_state_factor(cov)[0])  # the cohort's co-medications are established

    with user_errors(ValueError):
        fit = fit_patient(cov, dose_t_h, dose_mg, lab_t_h[keep], inr[keep],
                          cl_factor_h=lambda t_h: np.full_like(t_h, steady))
    weekly, weekly_lo, weekly_hi = fit.stable_weekly_dose_mg(args.target_inr)
    # forecasts: the same daily dose at the hour of the last dose, for --days days after it
    start_h = dose_t_h[-1] + 24.0
    future_t_h = start_h + 24.0 * np.arange(args.days)
    t0_hour = t0.hour + t0.minute / 60.0
    at_h = start_h + 24.0 * np.arange(1, args.days + 1) - 10.0  # mornings' INR samples (doses in the evening)
    schedules = [("current", float(dose_mg[-1])), ("advised", weekly / 7.0)] + [
        (f"candidate {c:g}", c) for c in candidates]
    forecasts = []
    for label, daily in schedules:
        best, lo, hi = fit.forecast(at_h, future_t_h, np.full(args.days, daily))
        forecasts.append({"schedule": label, "daily_dose_mg": round(daily, 2),
                          "day": [int((t + t0_hour) // 24.0) + 1 for t in at_h],  # the first dose's day is 1
                          "inr": best.round(2).tolist(), "inr_lo": lo.round(2).tolist(),
                          "inr_hi": hi.round(2).tolist()})
    sd = np.sqrt(np.diag(fit.eta_cov))
    map_params = fit.params()
    result = {
        "run_id": runs[0], "patient_id": args.patient, "first_dose": t0.isoformat(),
        "until": _utc(args.until).isoformat() if args.until else None,
        "doses_used": len(dose_rows), "inr_readings_used": int(keep.sum()),
        "parameters": {key: {"typical": round(float(fit.typical[key][0]), 4),
                             "map": round(float(map_params[key][0]), 4),
                             "sd_log": round(float(s), 3)} for key, s in zip(fit.keys, sd, strict=True)},
        "advice": {"target_inr": args.target_inr, "weekly_dose_mg": round(weekly, 2),
                   "dose_lo_mg": round(weekly_lo, 2), "dose_hi_mg": round(weekly_hi, 2)},
        "forecasts": forecasts,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.patient} ({runs[0]}): {len(dose_rows)} warfarin doses, {int(keep.sum())} INR readings used")
    for key, p in result["parameters"].items():
        print(f"  {key:<10} typical {p['typical']:<8g} fitted {p['map']:<8g} (log SD {p['sd_log']:g})")
    print(f"  advice: {weekly:.1f} mg/week ({weekly_lo:.1f}-{weekly_hi:.1f}) for INR {args.target_inr:g}")
    for f in forecasts:
        print(f"  {f['schedule']:<14} {f['daily_dose_mg']:>5g} mg/day: INR on day {f['day'][-1]} "
              f"{f['inr'][-1]:.2f} ({f['inr_lo'][-1]:.2f}-{f['inr_hi'][-1]:.2f})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    twin = group(subparsers, "twin", help="the virtual-patient twin: dose advice, a patient's own fitted twin",
                 description="The virtual-patient twin (warfarin): dose advice from covariates, and a patient's "
                             "own twin fitted to its readings.",
                 metavar="TWIN_COMMAND")
    add_dose(twin)
    add_genotypes(twin)
    add_fit(twin)
