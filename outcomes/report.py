"""One training run of the outcome model as `biopilot train outcome` reports it: simulate, split by patient,
train, evaluate on held-out patients and on an ancestry-shift set, train and score the baselines in the same
run, and check the issue's targets (AUROC >= 0.80 and >= the best baseline + 0.03, ECE <= 0.05, conformal
coverage 0.88-0.92 overall and in every genotype group).

Coverage is a guarantee in expectation over calibration sets: a genotype group of 10-20 test patients moves by
+-0.1 from one split to the next. So the coverage figures a head reports (`coverage`, `min_group_coverage`,
`max_group_coverage`, `coverage_by_group`) and its targets are the means over `RESPLITS` re-splits of the
calibration and test patients (`outcomes.train.coverage_over_resplits`); the one test split's are kept beside
them (`*_test_split`). Every coverage counts each patient once (`outcomes.train.patient_weights`), as the
conformal is calibrated.

`previous` (the model shipped before, say): scored on the same test patients, and `ship_ok` says whether the
new model may replace it: on no risk an AUROC lower by more than its standard error (Hanley & McNeil) and on
at least one higher by more than it, ECE <= 0.05 and mean coverage in 0.88-0.92 on every risk.

The tabular baselines read the model's inputs, the twin's forecast included (`best_baseline_auroc`); the same
baselines on the inputs from before it (`features.STATIC_BASE`) are reported beside them
(`baselines_without_twin_inputs`): how much of the gain is the input, how much the model. A risk the model
serves by logistic regression (`served_by`, chosen on the validation patients: `outcomes.train.choose_heads`)
reports that regression's AUROC: it ties the baseline of the same name, and misses the +0.03 target plainly."""

from __future__ import annotations

import time

import numpy as np

from outcomes.baselines import tabular_baselines, twin_baseline, twin_bleed_auroc
from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS
from outcomes.dataset import OutcomeDataset, label_counts, simulate_dataset
from outcomes.features import STATIC_BASE
from outcomes.model import OutcomeModel
from outcomes.performance_drift import auroc_standard_error
from outcomes.train import TrainConfig, coverage_over_resplits, evaluate, train_outcome

# the held-out shift: the ancestry mix turned round (mostly Asian and Black patients) and a third on amiodarone
SHIFT_ANCESTRY = {"asian": 0.5, "black": 0.3, "white": 0.15, "other": 0.05}
SHIFT_AMIODARONE_SHARE = 0.3
TARGET_AUROC, TARGET_MARGIN, TARGET_ECE, COVERAGE_BAND = 0.80, 0.03, 0.05, (0.88, 0.92)
CLASS_KEYS = ("auroc", "auprc", "brier", "ece", "coverage", "min_group_coverage", "max_group_coverage",
              "coverage_by_group", "coverage_by_ancestry", "mean_set_size", "threshold", "n", "positives")


COVERAGE_KEYS = ("coverage", "coverage_by_group", "min_group_coverage", "max_group_coverage")


def _coverage_over_resplits(head: dict, resplits: dict) -> dict:
    """`head` with its coverage figures taken from the re-splits' means, the test split's kept as `*_test_split`."""
    out = dict(head) | {f"{k}_test_split": head[k] for k in COVERAGE_KEYS} | {"coverage_over_resplits": resplits}
    if resplits:
        out |= {"coverage": resplits["coverage_mean"], "coverage_by_group": resplits["group_coverage_mean"],
                "min_group_coverage": resplits["min_group_coverage_mean"],
                "max_group_coverage": resplits["max_group_coverage_mean"]}
    return out


def compare_with_previous(previous: OutcomeModel, test: OutcomeDataset, heads: dict) -> dict:
    """The previous model's AUROC and ECE on the same test patients, and whether the new one may replace it."""
    scored = evaluate(previous, test)["heads"]
    lo, hi = COVERAGE_BAND
    per_head = {}
    for h in CLASS_HEADS:
        new, old = heads[h]["auroc"], scored[h]["auroc"]
        se = auroc_standard_error(new, scored[h]["positives"], scored[h]["n"] - scored[h]["positives"])
        per_head[h] = {"auroc": old, "ece": scored[h]["ece"], "auroc_gain": round(new - old, 4),
                       "auroc_se": round(se, 4)}
    # a risk without both outcomes among the test patients has no AUROC to compare: it neither blocks nor helps
    gains = [v["auroc_gain"] / max(v["auroc_se"], 1e-9) for v in per_head.values() if np.isfinite(v["auroc_gain"])]
    ok = (bool(gains) and min(gains) >= -1.0 and max(gains) > 1.0
          and all(heads[h]["ece"] <= TARGET_ECE and lo <= heads[h]["coverage"] <= hi for h in CLASS_HEADS))
    return {"version": previous.version, "heads": per_head, "ship_ok": bool(ok)}


def _targets(head: dict) -> dict[str, bool]:
    lo, hi = COVERAGE_BAND
    best = head.get("best_baseline_auroc")
    return {"auroc_ge_0_80": bool(head["auroc"] >= TARGET_AUROC),
            "beats_best_baseline_by_0_03": bool(best is None or np.isnan(best) or head["auroc"] >= best + TARGET_MARGIN),
            "ece_le_0_05": bool(head["ece"] <= TARGET_ECE),
            "coverage_in_band": bool(lo <= head["coverage"] <= hi),
            "every_group_in_band": bool(lo <= head["min_group_coverage"] and head["max_group_coverage"] <= hi)}


def train_and_report(patients: int, shift_patients: int, days: int, samples_per_patient: int, epochs: int,
                     twin_samples: int, seed: int, progress: bool = False,
                     previous: OutcomeModel | None = None, choose_heads: bool = False) -> tuple[dict, OutcomeModel]:
    seconds = {}
    t = time.perf_counter()
    ds = simulate_dataset(patients, seed, days=days, samples_per_patient=samples_per_patient, progress=progress)
    shift = simulate_dataset(shift_patients, seed + 1, ancestry=SHIFT_ANCESTRY,
                             amiodarone_share=SHIFT_AMIODARONE_SHARE, days=days,
                             samples_per_patient=samples_per_patient, progress=progress)
    train, calibration, test = ds.split((0.6, 0.2, 0.2), seed=seed)
    seconds["simulate"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    model = train_outcome(train, calibration, config=TrainConfig(epochs=epochs, choose_heads=choose_heads), seed=seed,
                          progress=progress)
    seconds["train"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    result, shifted = evaluate(model, test), evaluate(model, shift)
    resplits = coverage_over_resplits(model, calibration, test, seed=seed)
    baselines = tabular_baselines(train, test, seed)
    baselines_before = tabular_baselines(train, test, seed, static_columns=len(STATIC_BASE))
    seconds["evaluate_and_baselines"] = round(time.perf_counter() - t, 1)
    twin = {}
    if twin_samples > 0:
        t = time.perf_counter()
        twin = twin_baseline(model.predict_dataset(test)["inr_ge4_7d"]["estimate"], test, seed, twin_samples)
        seconds["twin"] = round(time.perf_counter() - t, 1)
    heads = {}
    for h in CLASS_HEADS:
        head = _coverage_over_resplits({k: result["heads"][h][k] for k in CLASS_KEYS}, resplits.get(h, {}))
        others = dict(baselines[h])
        if h == "inr_ge4_7d" and twin:
            # the twin was scored on a subsample: its margin over the model on that subsample, carried over
            others["mechanistic_twin"] = round(head["auroc"] - twin["model_auroc_same_samples"]
                                               + twin["twin_auroc_inr_ge4_7d"], 4)
        if h == "major_bleed_14d":
            others["mechanistic_twin"] = twin_bleed_auroc(test)
        valid = {k: v for k, v in others.items() if not np.isnan(v)}
        best = max(valid, key=valid.get) if valid else None
        head |= {"baselines": others, "baselines_without_twin_inputs": baselines_before[h], "best_baseline": best,
                 "best_baseline_auroc": valid[best] if best else float("nan"),
                 # who ranks best on this run's test patients; what the model serves was chosen before, on the
                 # validation (calibration) patients: `served_by`
                 "winner": "outcome_model" if not best or head["auroc"] >= valid[best] else best,
                 "served_by": model.served_by[h], "validation_auroc": model.validation_auroc.get(h, {})}
        head["targets_met"] = _targets(head)
        heads[h] = head
    report = {
        "version": model.version,
        "patients": {"train": len(set(train.run_id)), "calibration": len(set(calibration.run_id)),
                     "test": len(set(test.run_id)), "shift": len(set(shift.run_id))},
        "labels": {name: label_counts(part) for name, part in (("train", train), ("calibration", calibration),
                                                                ("test", test), ("shift", shift))},
        "heads": heads,
        "regression": {h: _coverage_over_resplits(result["heads"][h], resplits.get(h, {})) for h in REGRESSION_HEADS},
        "twin": twin,
        "shift": {"ancestry": SHIFT_ANCESTRY, "amiodarone_share": SHIFT_AMIODARONE_SHARE,
                  "heads": {h: {k: shifted["heads"][h].get(k) for k in ("auroc", "ece", "coverage",
                                                                           "min_group_coverage",
                                                                           "max_group_coverage", "mae",
                                                                           "interval_width")
                                if k in shifted["heads"][h]} for h in (*CLASS_HEADS, *REGRESSION_HEADS)}},
        "seconds": seconds,
    }
    if previous is not None:
        report["previous"] = compare_with_previous(previous, test, heads)
    model.metrics = report
    return report, model


def jsonable(value: object) -> object:
    """NaN and infinity (a head without positives, a group too small for an interval) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def format_report(report: dict) -> str:
    """The report as a few aligned lines per head."""
    lines = [f"outcome model {report['version']}  patients {report['patients']}"]
    for h, v in report["heads"].items():
        met = [k for k, ok in v["targets_met"].items() if not ok]
        lines.append(f"{h:17s} AUROC {v['auroc']:.3f} (best baseline {v['best_baseline']} "
                     f"{v['best_baseline_auroc']:.3f})  AUPRC {v['auprc']:.3f}  Brier {v['brier']:.3f}  "
                     f"ECE {v['ece']:.3f}  coverage {v['coverage']:.3f} (groups {v['min_group_coverage']:.3f}-"
                     f"{v['max_group_coverage']:.3f})  {'targets met' if not met else 'missed: ' + ', '.join(met)}")
        r = v["coverage_over_resplits"]
        over = f"mean over {r['repeats']} re-splits" if r else "the test split"
        lines.append(f"{'':17s} served by {v['served_by']} (validation AUROC {v['validation_auroc']}); "
                     f"winner on test {v['winner']}; coverage ({over}) by group {v['coverage_by_group']}; "
                     f"on the test split {v['coverage_test_split']:.3f} (groups "
                     f"{v['min_group_coverage_test_split']:.3f}-{v['max_group_coverage_test_split']:.3f}), "
                     f"by ancestry {v['coverage_by_ancestry']}")
    for h, v in report["regression"].items():
        lines.append(f"{h:17s} MAE {v['mae']:.3f}  coverage {v['coverage']:.3f} (groups {v['min_group_coverage']:.3f}-"
                     f"{v['max_group_coverage']:.3f})  interval width {v['interval_width']:.3f}")
    if report["twin"]:
        t = report["twin"]
        lines.append(f"mechanistic twin on {t['samples']} test samples: AUROC inr_ge4_7d {t['twin_auroc_inr_ge4_7d']}"
                     f" (model {t['model_auroc_same_samples']}), MAE inr_3d {t['twin_mae_inr_3d']}")
    shift = ", ".join(f"{h} AUROC {v['auroc']:.3f} coverage {v['coverage']:.3f}"
                      for h, v in report["shift"]["heads"].items() if "auroc" in v)
    lines.append(f"ancestry shift: {shift}")
    if "previous" in report:
        prev = report["previous"]
        gains = ", ".join(f"{h} {v['auroc']:.3f} ({v['auroc_gain']:+.3f})" for h, v in prev["heads"].items())
        lines.append(f"previous model {prev['version']} on the same test patients: AUROC {gains}; "
                     f"{'the new model may replace it' if prev['ship_ok'] else 'the new model does not beat it'}")
    return "\n".join(lines)
