"""Scoring a user's own time series (a historian export): `biopilot detect`.

Every numeric column except the time, label and ignored columns is a signal. Detectors learn from the data in
time order; the reference-window ones are fitted on the training rows (the first `train_rows`, or a separate
training file prepended). Each detector's alarm threshold is set on the training rows — the highest level its
score holds for a few ticks there, times a margin — so `is_alarm` needs no labels. With a label column the
command reports F1, FAR and MAR on the rows after the training part (SKAB's protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

import detectors  # noqa: F401 - registers every detector
from detectors.base import REGISTRY, make_detector

PERSIST = 3
MARGIN = 1.1


class InputError(ValueError):
    """Bad input file or arguments; the message is one line for the user."""


@dataclass
class Scored:
    table: pa.Table  # time column, one score column per detector, fused score, is_alarm
    train_rows: int
    metrics: dict[str, float] | None


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


def threshold_from(scores: np.ndarray) -> float:
    """The highest level the score holds for PERSIST rows on the training part, times a margin."""
    if len(scores) < PERSIST:
        return MARGIN * float(scores.max(initial=1e-9)) + 1e-9
    held = np.lib.stride_tricks.sliding_window_view(scores, PERSIST).min(axis=1)
    return MARGIN * float(held.max()) + 1e-9


def persisted(alarm: np.ndarray) -> np.ndarray:
    """True where the last PERSIST rows were all above threshold (the alarm's persistence)."""
    run = np.zeros(len(alarm), dtype=np.int64)
    count = 0
    for i, a in enumerate(alarm):
        count = count + 1 if a else 0
        run[i] = count
    return run >= PERSIST


def score(table: pa.Table, time_col: str, detectors_: list[str], train_rows: int, label_col: str | None = None,
          ignore: set[str] | None = None) -> Scored:
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
    ts = np.arange(len(X))
    columns: dict[str, pa.Array] = {time_col: table[time_col]}
    ratios = []
    for name in detectors_:
        params = {"reference_ticks": train_rows} if name in ("pca", "iforest") else {}
        if name in ("zscore", "moving_average", "ewma"):
            params["warmup_ticks"] = min(train_rows // 2, 60)
        det = make_detector(name, **params)
        _, s = det.score_learn(det.init_state(names), ts, X)
        columns[f"score_{name}"] = pa.array(s)
        if name not in ("pca", "iforest"):
            thr = threshold_from(s[min(60, train_rows // 2):train_rows])
        else:  # fitted on the training rows: their own scores are optimistic, use the model's control limit
            thr = 1.0
        ratios.append(s / thr)
    fused = np.max(np.stack(ratios), axis=0)
    alarm = persisted(fused > 1.0)
    columns["score_fusion"] = pa.array(fused)
    columns["is_alarm"] = pa.array(alarm)
    metrics = None
    if label_col:
        y = table[label_col].cast(pa.float64()).fill_null(0).to_numpy() > 0.5
        metrics = classification(y[train_rows:], alarm[train_rows:])
    return Scored(pa.table(columns), train_rows, metrics)


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


def skab(root: str | Path, detectors_: list[str]) -> tuple[dict[str, float], int]:
    """SKAB's leaderboard protocol over every anomalous file under `root` (train on the first 400 rows)."""
    files = sorted(p for sub in ("valve1", "valve2", "other") for p in (Path(root) / sub).glob("*.csv"))
    parts = []
    for f in files:
        table = read_table(f, ";")
        scored = score(table, "datetime", detectors_, 400, "anomaly", {"changepoint"})
        parts.append(scored.metrics)
    return combine(parts), len(files)
