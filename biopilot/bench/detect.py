"""`biopilot bench detect`: `biopilot detect`'s detectors under a false-alarm budget, on a folder of labelled
CSV runs, and the twin suite that fills such a folder (the generated continuous plant's suite:
biopilot/bench/process_plant.py).

A folder holds one normal training file (its name contains "train", or `--train`) and test files with a label
column (1 = a fault is active): a file whose labels are all 0 is a normal run, where only the false-alarm rate
counts. Every detector is fitted once on the training file, with its out-of-fold scores there
(detectors/external.py, `normal_scores`), and goes on over each test file as if it followed the training rows;
each budget then sets the thresholds and rules of the detectors and the fusion (`fit_budget`; on each
detector's EWMA-smoothed statistic with `--stat-smooth-rows`). Per file: detection rate (the share of fault
rows that alarm), false-alarm rate (the share of normal rows that alarm), detection delay
(rows from the fault's first row to the first alarm at or after it).

The twin suite (`--make-suite DIR`): normal training runs (one file, one run after another) and a normal test
run (the same recipe, other seeds), and each fault archetype's scenario at several seeds, all `days` long at one
reading every `tick_s`, the first 12 h (the inoculation) left out: the default 2.5 days end before the DO
cascade's first steps, whose timing varies from run to run by hours (a steady stretch, as on a continuous
plant); each fault's onset is drawn in the middle fifth of the run and it lasts at most
a third of it. Signals are the detectors' (levels and the totalisers' increments), each as its deviation from
the median of `reference_runs` other normal runs at the same culture age: a fed-batch has no steady state, and
batch MSPC (Nomikos & MacGregor 1995) monitors the deviation from the mean trajectory, which a continuous
plant's export gives as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from core.config import DetectOptions
from detectors.base import DETECTOR_SIGNALS
from detectors.external import (
    Conditioning,
    InputError,
    fit_budget,
    go_on,
    normal_scores,
    read_table,
    signal_matrix,
    take_rows,
    with_beyond,
)
from detectors.false_alarm_budget import Check, Persistence

SKIP_H = 12.0
ONSET_SHARES = (0.4, 0.6)  # a fault's onset, drawn in the middle fifth of the run
# the shortest run whose faults all start after SKIP_H (1.25 days): a shorter one cuts a fault's onset off (its
# delay counted from the wrong row) or all its rows (its file benched as a normal run)
MIN_DAYS = SKIP_H / 24 / ONSET_SHARES[0]
# readings a run keeps after SKIP_H at the least: 10 out-of-fold folds of the training runs and the dynamic
# detectors' lags need rows (at 9 rows a run the bench printed figures of a few rows each)
MIN_RUN_ROWS = 50


def run_rows(days: float, tick_s: float) -> int:
    """The readings a suite's run keeps after SKIP_H."""
    return max(int((days * 24 - SKIP_H) * 3600 / tick_s), 0)


def twin_run(scenario: str, seed: int, days: float, tick_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One simulated run after its first SKIP_H: (minutes since inoculation, detector signals, 0/1 label)."""
    from detectors.features import features
    from sources.fleet import simulate_run
    from sources.scenarios import load_scenario

    base = load_scenario(scenario)
    rng = np.random.default_rng(seed)
    faults = []
    for spec in base.faults:
        duration = spec.duration_h if isinstance(spec.duration_h, float) else float(np.mean(spec.duration_h))
        onset = float(rng.uniform(*ONSET_SHARES) * days)
        faults.append(spec.model_copy(update={"start_day": onset, "duration_h": min(duration, days * 24 / 3)}))
    run = simulate_run(base.model_copy(update={"days": days, "tick_s": tick_s, "faults": faults}), seed)
    minutes = run.minutes()
    label = np.zeros(len(minutes), dtype=np.int64)
    for lab in run.labels:
        start = (lab.start_ts - run.started).total_seconds() / 60
        end = (lab.end_ts - run.started).total_seconds() / 60
        label[(minutes >= start) & (minutes < end)] = 1
    keep = minutes >= SKIP_H * 60
    return minutes[keep], features(run.ticks, np.array([np.nan, np.nan]))[keep], label[keep]


def make_suite(out: str | Path, faults: Sequence[str], seeds: int, days: float = 2.5, tick_s: float = 300.0,
               train_runs: int = 3, reference_runs: int = 5,
               progress: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """Write the twin suite into `out` (module doc); returns the files written."""
    from sources.scenarios import ARCHETYPE_SCENARIOS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [("reference", "normal", 8000 + i) for i in range(reference_runs)]
    plan += [("normal_train", "normal", 9000 + i) for i in range(train_runs)] + [("normal_test", "normal", 8999)]
    plan += [(f"{fault}_s{seed}", ARCHETYPE_SCENARIOS[fault], 9100 + seed) for fault in faults for seed in range(seeds)]
    runs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for i, (name, scenario, seed) in enumerate(plan):
        progress(f"[{i + 1}/{len(plan)}] {name} (seed {seed})")
        runs.setdefault(name, []).append(twin_run(scenario, seed, days, tick_s))
    reference = np.nanmedian(np.stack([X for _, X, _ in runs.pop("reference")]), axis=0)
    written = []
    for name, parts in runs.items():
        minutes = np.concatenate([m + i * days * 1440 for i, (m, _, _) in enumerate(parts)])  # runs one after another
        deviation = np.concatenate([X - reference for _, X, _ in parts])
        path = out / f"{name}.csv"
        pacsv.write_csv(pa.table({"time_min": minutes, **{n: deviation[:, j] for j, n in enumerate(DETECTOR_SIGNALS)},
                                  "label": np.concatenate([lab for _, _, lab in parts])}), path)
        written.append(path)
    return written


TIME_COL = "time_min"  # the suites' own time column; a folder without one is read in row order


def suite_files(data: str | Path, train: str | None) -> tuple[Path, list[Path]]:
    files = sorted(Path(data).glob("*.csv"))
    if not files:
        raise InputError(f"{data}: no .csv files")
    if train:
        chosen = [f for f in files if f.name == train or f.stem == train]
    else:
        chosen = [f for f in files if "train" in f.stem]
    if len(chosen) != 1:
        what = f"no file named {train}" if train else f"{len(chosen)} files with 'train' in their name"
        raise InputError(f"{data}: {what}; name the normal training file with --train")
    return chosen[0], [f for f in files if f != chosen[0]]


def file_metrics(label: np.ndarray, alarm: np.ndarray) -> dict[str, float | None]:
    fault, normal = label > 0.5, label <= 0.5
    delay = None
    if fault.any():
        first = int(np.argmax(fault))
        hits = np.flatnonzero(alarm[first:])
        delay = float(hits[0]) if len(hits) else None
    return {"detection_rate": float(alarm[fault].mean()) if fault.any() else None,
            "false_alarm_rate": float(alarm[normal].mean()) if normal.any() else None, "delay_rows": delay}


def run(data: str | Path, detectors_: list[str], fars: Sequence[float], train: str | None = None,
        time_col: str | None = None, label_col: str = "label", sep: str = ",", options: DetectOptions | None = None,
        persist: Persistence | None = None, progress: Callable[[str], None] = lambda _m: None,
        ignore: frozenset[str] = frozenset(), beyond: Sequence[str] = ()) -> dict:
    """Per budget, detector (and the fusion) and test file: detection rate, false-alarm rate, delay; and a
    summary per budget and detector (module doc). `time_col` None: the suites' `time_min` where the training file
    has it, else none (the rows are in time order); `ignore`: columns that are not signals (a run number, a
    sample counter); `beyond`: detectors that join each fusion beyond `options.margin`, outside the budget
    (detectors/external.py, `fit_budget`)."""
    detectors_ = with_beyond(detectors_, beyond)
    options = options or DetectOptions()
    train_path, tests = suite_files(data, train)
    train_table = read_table(train_path, sep)
    if time_col is None and TIME_COL in train_table.column_names:
        time_col = TIME_COL
    skip = {label_col, *ignore}
    all_names, X_train = signal_matrix(train_table, time_col, skip)
    conditioning = Conditioning.fit(all_names, X_train, replace(options, far=fars[0]))
    names = conditioning.scored
    conditioned_train = conditioning.inputs(X_train, detectors_)
    progress(f"fitting {', '.join(detectors_)} on {train_path.name}")
    normal = normal_scores(names, conditioned_train, detectors_, conditioning.settle_rows)
    scored = {}  # per test file: its label and each detector's scores (the same whatever the budget)
    for path in tests:
        table = read_table(path, sep)
        if label_col not in table.column_names:
            raise InputError(f"{path}: no label column {label_col!r}")
        test_names, X = signal_matrix(table, time_col, skip)
        if set(test_names) != set(all_names):
            missing, extra = sorted(set(all_names) - set(test_names)), sorted(set(test_names) - set(all_names))
            raise InputError(f"{path.name}: its signal columns differ from the training file's"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; not in training: {', '.join(extra)}" if extra else ""))
        X = X[:, [test_names.index(n) for n in all_names]]  # the same columns in another order are fine
        after = go_on(normal.streamed, take_rows(conditioning.inputs(np.vstack([X_train, X]), detectors_),
                                                 len(X_train)))
        scored[path.stem] = (table[label_col].cast(pa.float64()).fill_null(0).to_numpy(),
                             np.stack([after[n].scores for n in detectors_]))
    rows, summary, budgets = [], [], {}
    for far in fars:
        model = fit_budget(names, conditioned_train, detectors_, far, persist, normal, options.stat_smooth_rows,
                           beyond=beyond, margin=options.margin)
        budgets[str(far)] = {n: {"threshold": b.threshold, "rule": str(b.rule), "held_back_rate": b.held_back_rate,
                                 "short_of_rows": b.short_of_rows, **check_of(b.check, far)}
                             for n, b in model.budget.items()}
        budgets[str(far)]["fusion"]["share"] = model.union.share
        for n in beyond:
            budgets[str(far)][n]["margin"] = options.margin  # its threshold: this x its largest training score
        for stem, (label, scores) in scored.items():
            stats = model.statistics(scores)
            alarms = {n: model.budget[n].alarms(s) for n, s in zip(detectors_, stats, strict=True)}
            alarms["fusion"] = model.budget["fusion"].alarms(model.union.ratios(stats).max(axis=0))
            for name, alarm in alarms.items():
                rows.append({"far": far, "detector": name, "file": stem, **file_metrics(label, alarm)})
        for name in [*detectors_, "fusion"]:
            mine = [r for r in rows if r["far"] == far and r["detector"] == name]
            faults = [r for r in mine if r["detection_rate"] is not None]
            normal_runs = [r for r in mine if r["detection_rate"] is None]
            delays = [r["delay_rows"] for r in faults if r["delay_rows"] is not None]
            summary.append({
                "far": far, "detector": name, "fault_files": len(faults),
                "mean_detection_rate": float(np.mean([r["detection_rate"] for r in faults])) if faults else None,
                "normal_false_alarm_rate": (float(np.mean([r["false_alarm_rate"] for r in normal_runs]))
                                            if normal_runs else None),
                "mean_delay_rows": float(np.mean(delays)) if delays else None,
                "held_back_rate": model.budget[name].held_back_rate, "beyond_margin": name in beyond,
                **check_of(model.budget[name].check, far)})
    return {"train": train_path.name, "signals": names, "wandering": conditioning.wander,
            "wandering_detrended": conditioning.detrend, "budgets": budgets,
            "summary": summary, "results": rows}


def check_of(check: Check | None, far: float) -> dict:
    """The budget's check (`blocked_check`) as json: mean rate over the held-back blocks, its interval's half
    width, the blocks' rates and whether the command warns."""
    if check is None:  # a detector beyond the margin: outside the budget, nothing to check
        return {"check_rate": None, "check_half_width": None, "check_block_rates": None, "check_trend_p": None,
                "check_warns": False}
    return {"check_rate": check.rate, "check_half_width": check.half_width, "check_block_rates": list(check.rates),
            "check_trend_p": check.trend_p, "check_warns": check.warns(far)}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def markdown(res: dict) -> str:
    lines = [f"training file {res['train']}; signals {len(res['signals'])}"
             + (f" (wandering, {'detrended' if res['wandering_detrended'] else 'left out'}: "
                f"{', '.join(res['wandering'])})" if res["wandering"] else ""), "",
             "| budget | detector | mean detection % | normal-file FAR % | check FAR % (± 95 %) | mean delay (rows) |",
             "|---|---|---|---|---|---|"]
    for s in res["summary"]:
        delay = "—" if s["mean_delay_rows"] is None else f"{s['mean_delay_rows']:.1f}"
        check = ("— (beyond the margin)" if s["beyond_margin"] else
                 f"{_pct(s['check_rate'])} ± {_pct(s['check_half_width'])}{' (warns)' if s['check_warns'] else ''}")
        lines.append(f"| {s['far']:g} | {s['detector']} | {_pct(s['mean_detection_rate'])} | "
                     f"{_pct(s['normal_false_alarm_rate'])} | {check} | {delay} |")
    detectors_ = list(dict.fromkeys(r["detector"] for r in res["results"]))
    for far in dict.fromkeys(r["far"] for r in res["results"]):
        lines += ["", f"detection % (false-alarm % on a normal file) per file at budget {far:g}:", "",
                  "| file | " + " | ".join(detectors_) + " |", "|---|" + "---|" * len(detectors_)]
        for stem in dict.fromkeys(r["file"] for r in res["results"]):
            cells = []
            for name in detectors_:
                (r,) = [r for r in res["results"] if r["far"] == far and r["file"] == stem and r["detector"] == name]
                cells.append(_pct(r["detection_rate"]) if r["detection_rate"] is not None
                             else f"({_pct(r['false_alarm_rate'])})")
            lines.append(f"| {stem} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: dict, path: str | Path) -> Path:
    """Detection % per fault file and detector (the fusion last), one panel per budget, each titled with the
    fusion's mean and the normal runs' false-alarm rate."""
    from design import plots

    detectors_ = list(dict.fromkeys(r["detector"] for r in res["results"]))
    fars = list(dict.fromkeys(r["far"] for r in res["results"]))
    files = [f for f in dict.fromkeys(r["file"] for r in res["results"])
             if any(r["file"] == f and r["detection_rate"] is not None for r in res["results"])]
    fig, axes = plots.plt.subplots(1, len(fars), figsize=(1.0 + 0.62 * len(detectors_) * len(fars),
                                                          1.6 + 0.27 * len(files)), squeeze=False)
    for ax, far in zip(axes[0], fars, strict=True):
        rate = {(r["file"], r["detector"]): r["detection_rate"] for r in res["results"] if r["far"] == far}
        grid = np.array([[100 * rate[f, d] for d in detectors_] for f in files])
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        beyond = {s["detector"] for s in res["summary"] if s.get("beyond_margin")}
        ax.set_xticks(range(len(detectors_)), [f"{d} (beyond margin)" if d in beyond else d for d in detectors_],
                      rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(files)), files, fontsize=8)
        fused = next(s for s in res["summary"] if s["far"] == far and s["detector"] == "fusion")
        normal = fused["normal_false_alarm_rate"]
        ax.set_title(f"budget {100 * far:g} %: fusion {_pct(fused['mean_detection_rate'])} % of fault rows"
                     + (f",\n{_pct(normal)} % of the normal runs' rows alarm" if normal is not None else ""),
                     fontsize=9)
    fig.suptitle(f"detection % per fault file ({res['train']}, {len(res['signals'])} signals)", fontsize=10)
    fig.tight_layout()
    return plots.save(fig, path)
