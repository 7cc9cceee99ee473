"""Scoring a user's own time series (a historian export): `biopilot detect`.

Every numeric column except the time, label and ignored columns is a signal. Two conditioning steps come first:
- signals whose level wanders on the training rows (a slow drift, a temperature creeping up) are left out and
  named: a few hundred rows give no reference for where such a level will be an hour later, and scoring it
  anyway alarms on the drift (on SKAB, half the normal rows after each anomaly). "Wanders" is measured by the
  roughness sd(first differences) / (sqrt(2) sd(level)): about 1 for noise around a level, near 0 for a
  smooth drift;
- a causal EWMA (`smooth_rows`) takes the sample noise off every signal, so a persistent shift stands out.
Detectors learn from the data in time order; the reference-window ones are fitted on the training rows (the
first `train_rows`, or a separate training file prepended). Each detector's alarm threshold is set on the
training rows — the highest level its score holds for a few rows there, times a margin — so `is_alarm` needs no
labels. With a label column the command reports F1, FAR and MAR on the rows after the training part (SKAB's
protocol).

>>> rng = np.random.default_rng(0)
>>> level = rng.normal(size=(400, 2))
>>> level[:, 1] = np.cumsum(level[:, 1])  # a random walk: no stable level to learn
>>> wandering(level, ["noisy", "drifting"], 0.6)
['drifting']
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from scipy.signal import lfilter

import detectors  # noqa: F401 - registers every detector
from core.config import DetectOptions
from detectors.base import REGISTRY, make_detector

DEFAULT_OPTIONS = DetectOptions()
PERSIST = 3


class InputError(ValueError):
    """Bad input file or arguments; the message is one line for the user."""


@dataclass
class Scored:
    table: pa.Table  # time column, one score column per detector, fused score, is_alarm
    train_rows: int
    metrics: dict[str, float] | None
    left_out: list[str]  # wandering signals not scored


def read_table(path: str | Path, sep: str = ",") -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=sep))
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: cannot read: {str(err).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise InputError(f"{path}: no rows")
    return table


def signal_matrix(table: pa.Table, time_col: str, skip: set[str]) -> tuple[list[str], np.ndarray]:
    if time_col not in table.column_names:
        raise InputError(f"time column {time_col!r} not found; columns: {', '.join(table.column_names)}")
    names = [c for c in table.column_names if c != time_col and c not in skip]
    if not names:
        raise InputError("no signal columns left to score")
    cols = []
    for name in names:
        col = table[name]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            raise InputError(f"column {name!r} is not numeric ({col.type}); exclude it with --ignore-cols")
        cols.append(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
    return names, np.column_stack(cols)


def wandering(train: np.ndarray, names: list[str], min_roughness: float) -> list[str]:
    """Signals whose level drifts on the training rows: roughness below `min_roughness` (see the module doc)."""
    out = []
    for name, x in zip(names, train.T, strict=True):
        x = x[~np.isnan(x)]
        sd = float(np.std(x)) if len(x) > 2 else 0.0
        if sd > 1e-12 and np.std(np.diff(x)) / (np.sqrt(2) * sd) < min_roughness:
            out.append(name)
    return out


def smoothed(X: np.ndarray, rows: int) -> np.ndarray:
    """Causal EWMA over `rows` (span) per column; a missing reading stays missing and does not break the mean."""
    if rows <= 1:
        return X
    alpha = 2.0 / (rows + 1)
    missing = np.isnan(X)
    filled = X.copy()
    for j in np.flatnonzero(missing.any(axis=0)):  # carry the last reading over gaps (a leading gap: the first)
        col = filled[:, j]
        ok = np.flatnonzero(~missing[:, j])
        if len(ok) == 0:
            continue
        idx = np.maximum.accumulate(np.where(missing[:, j], 0, np.arange(len(col))))
        idx = np.where(missing[:, j] & (np.arange(len(col)) < ok[0]), ok[0], idx)
        filled[:, j] = col[idx]
    zi = (1 - alpha) * np.nan_to_num(filled[:1])  # start at the first reading, not at 0
    out, _ = lfilter([alpha], [1, alpha - 1], np.nan_to_num(filled), axis=0, zi=zi)
    out[missing] = np.nan
    return out


def threshold_from(scores: np.ndarray, margin: float) -> float:
    """The highest level the score holds for PERSIST rows on the training part, times a margin."""
    if len(scores) < PERSIST:
        return margin * float(scores.max(initial=1e-9)) + 1e-9
    held = np.lib.stride_tricks.sliding_window_view(scores, PERSIST).min(axis=1)
    return margin * float(held.max()) + 1e-9


def persisted(alarm: np.ndarray) -> np.ndarray:
    """True where the last PERSIST rows were all above threshold (the alarm's persistence)."""
    run = np.zeros(len(alarm), dtype=np.int64)
    count = 0
    for i, a in enumerate(alarm):
        count = count + 1 if a else 0
        run[i] = count
    return run >= PERSIST


def score(table: pa.Table, time_col: str, detectors_: list[str], train_rows: int, label_col: str | None = None,
          ignore: set[str] | None = None, options: DetectOptions = DEFAULT_OPTIONS) -> Scored:
    unknown = [d for d in detectors_ if d not in REGISTRY]
    if unknown:
        raise InputError(f"unknown detector(s) {', '.join(unknown)}; available: {', '.join(sorted(REGISTRY))}")
    skip = set(ignore or ())
    if label_col:
        if label_col not in table.column_names:
            raise InputError(f"label column {label_col!r} not found; columns: {', '.join(table.column_names)}")
        skip.add(label_col)
    names, X = signal_matrix(table, time_col, skip)
    if not 2 <= train_rows < len(X):
        raise InputError(f"--train-rows must be between 2 and {len(X) - 1} for {len(X)} rows, got {train_rows}")
    left_out = wandering(X[:train_rows], names, options.min_roughness) if options.min_roughness > 0 else []
    if len(left_out) == len(names):
        left_out = []  # nothing would be left to score: keep them all rather than score nothing
    kept = [i for i, n in enumerate(names) if n not in left_out]
    names, X = [names[i] for i in kept], smoothed(X[:, kept], options.smooth_rows)
    ts = np.arange(len(X))
    columns: dict[str, pa.Array] = {time_col: table[time_col]}
    ratios = []
    for name in detectors_:
        params = {"reference_ticks": train_rows} if name in ("pca", "iforest") else {}
        if name in ("zscore", "moving_average", "ewma"):
            params["warmup_ticks"] = min(train_rows // 2, 60)
        det = make_detector(name, **params)
        state, s = det.score_learn(det.init_state(names), ts, X)
        columns[f"score_{name}"] = pa.array(s)
        if name == "iforest":  # a bounded score (a path-length ratio): a multiplied margin means nothing to it
            ratios.append(s)  # already relative to its reference's 99.5th percentile
            continue
        if name == "pca":
            # it scores 0 while collecting its reference: score the training rows again with the fitted model
            # (optimistic on its own rows, which the margin covers; the textbook T²/SPE limits assume independent
            # rows, and smoothed rows are not)
            _, train = det.score_learn(state, ts[:train_rows], X[:train_rows])
        else:
            train = s[min(60, train_rows // 2):train_rows]  # after the adaptive ones settle
        ratios.append(s / threshold_from(train, options.margin))
    fused = np.max(np.stack(ratios), axis=0)
    alarm = persisted(fused > 1.0)
    columns["score_fusion"] = pa.array(fused)
    columns["is_alarm"] = pa.array(alarm)
    metrics = None
    if label_col:
        y = table[label_col].cast(pa.float64()).fill_null(0).to_numpy() > 0.5
        metrics = classification(y[train_rows:], alarm[train_rows:])
    return Scored(pa.table(columns), train_rows, metrics, left_out)


def classification(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int((y & pred).sum())
    fp = int((~y & pred).sum())
    fn = int((y & ~pred).sum())
    tn = int((~y & ~pred).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "far_pct": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
            "mar_pct": 100.0 * fn / (fn + tp) if fn + tp else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def combine(parts: list[dict[str, float]]) -> dict[str, float]:
    """Metrics over the concatenation of several files' test rows."""
    tp, fp, fn, tn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn", "tn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "far_pct": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
            "mar_pct": 100.0 * fn / (fn + tp) if fn + tp else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def skab_files(root: str | Path, groups: tuple[str, ...] = ("valve1", "valve2", "other")) -> list[Path]:
    files = sorted(p for sub in groups for p in (Path(root) / sub).glob("*.csv"))
    if not files:
        raise InputError(f"{root}: no SKAB files under {', '.join(groups)}")
    return files


def skab(files: list[Path], detectors_: list[str], options: DetectOptions = DEFAULT_OPTIONS) -> dict[str, float]:
    """SKAB's leaderboard protocol over these files (train on each one's first 400 rows)."""
    parts = [score(read_table(f, ";"), "datetime", detectors_, 400, "anomaly", {"changepoint"}, options).metrics
             for f in files]
    return combine(parts)


def skab_cross_check(root: str | Path, grid: dict[str, tuple[float, ...]], detectors_: list[str],
                     progress: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """How much the settings' choice flatters the result: pick the best settings (F1 with FAR <= 15 %) on the
    valve1 files alone and score the other files with them, and the other way round."""
    halves = {"valve1": skab_files(root, ("valve1",)), "valve2+other": skab_files(root, ("valve2", "other"))}
    combos = [DetectOptions(**dict(zip(grid, values, strict=True))) for values in itertools.product(*grid.values())]
    results: dict[tuple[int, str], dict[str, float]] = {}
    for i, combo in enumerate(combos):
        progress(f"[{i + 1}/{len(combos)}] {combo}")
        for half, files in halves.items():
            results[i, half] = skab(files, detectors_, combo)
    rows = []
    for chosen_on, tested_on in (("valve1", "valve2+other"), ("valve2+other", "valve1")):
        fine = [i for i in range(len(combos)) if results[i, chosen_on]["far_pct"] <= 15] or list(range(len(combos)))
        best = max(fine, key=lambda i: results[i, chosen_on]["f1"])
        rows.append({"chosen_on": chosen_on, "settings": asdict(combos[best]), "chosen_on_metrics": results[best, chosen_on],
                     "tested_on": tested_on, "tested_on_metrics": results[best, tested_on]})
    return rows
