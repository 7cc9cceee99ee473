"""Scoring a user's own time series (a historian export): `biopilot detect`.

Every numeric column except the time, label and ignored columns is a signal. Two conditioning steps come first:
- signals whose level wanders on the training rows (a slow drift, a temperature creeping up) are found by their
  roughness sd(first differences) / (sqrt(2) sd(level)): about 1 for noise around a level, near 0 for a smooth
  drift. With a margin they are left out and named: a few hundred rows give no reference for where such a level
  will be an hour later, and scoring it anyway alarms on the drift (on SKAB, half the normal rows after each
  anomaly). Under a false-alarm budget the roughness is taken over a twentieth of the training rows
  (`WANDER_SHARE`), so a slow but stationary signal counts as steady, and the wandering ones are kept, each as
  its departure from its own slow baseline (a causal EWMA over DETREND_ROWS): dropping them hides the faults
  that show in them (a drifting or biased sensor, a stuck valve's controller output), and the budget's
  out-of-fold calibration prices in what wander is left (`--wander` chooses);
- a causal EWMA (`smooth_rows`) takes the sample noise off every signal, so a persistent shift stands out. A
  detector named `<name>:raw` (e.g. `cva:raw`) sees the signals before that EWMA, wander handled the same: a
  random variation or a faster oscillation, whose signature is spread rather than level, is what the EWMA
  smooths away. Under a budget both kinds join the same union, each at its share. A detector may also join it
  beyond the margin, outside the budget (`beyond`): the smoothed signals vary slowly, so a training run of a few
  hundred rows holds few independent stretches of them and cannot set their tail at a budget; past `margin`
  times their largest out-of-fold score they still find a large fault (docs/DETECT.md).
Detectors learn from the data in time order; the reference-window ones are fitted on the training rows (the
first `train_rows`, or a separate training file prepended). Each detector's alarm threshold is set on the
training rows, so `is_alarm` needs no labels, in one of two ways:
- a margin: the highest level its score holds for a few rows there, times `margin`;
- a false-alarm budget (`far`, detectors/false_alarm_budget.py), from out-of-fold scores: `FOLDS` contiguous
  folds, each scored by a model fitted on the others (the online detectors: their own scores after their
  warm-up). First the rule: the last quarter of the training rows is held back; each detector's threshold and
  persistence rule are set on the first three quarters' out-of-fold scores and the rule is picked on the
  held-back quarter, scored by a model fitted on the three quarters. Then, each rule kept, the thresholds are set
  again on the out-of-fold scores of all the training rows, and the models that score the user's rows are fitted
  on all of them (a model fitted on fewer rows scores normal rows higher: thresholds from three quarters alone sat
  above where the full model needs them). The training rows' first scores, while the signals' EWMA still
  carries its first reading (`SETTLED_WEIGHT`), are left out. The fusion alarms where any detector alarms under
  its own threshold and rule, each set at a share of the budget, the largest share that keeps the fusion within
  the budget (`union` in detectors/false_alarm_budget.py). What the setting gives on new normal rows is checked
  on blocks of the out-of-fold scores, each held back in turn (`blocked_check`; the held-back quarter alone,
  scored by a three-quarter model, read far from what the next normal run measured: docs/DETECT.md).
  `stat_smooth_rows` > 1 thresholds each detector's statistic after a causal EWMA, on the out-of-fold scores as
  on the user's rows (the thresholds are set on the smoothed normal scores, so the budget still holds): a small
  persistent fault lifts the statistic a little on every row, which the average accumulates (the EWMA chart's
  argument, Roberts 1959). Off by default: the signals' own EWMA (`smooth_rows`) already makes T² a MEWMA
  statistic (Lowry et al. 1992), and smoothing the statistic again gained little on the generated plants while
  it widened the spread of the measured false-alarm rate (docs/DETECT.md).
Every alarm row names the signals that drove it (`drivers`): the largest contributions of the detector that
leads the fused score (under a budget: the one furthest above its own alarm level in the fusion). With a label
column the command reports F1, FAR and MAR on the rows after the training part (SKAB's protocol).

>>> rng = np.random.default_rng(0)
>>> level = rng.normal(size=(400, 2))
>>> level[:, 1] = np.cumsum(level[:, 1])  # a random walk: no stable level to learn
>>> wandering(level, ["noisy", "drifting"], 0.6)
['drifting']
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from scipy.signal import lfilter

import detectors  # noqa: F401 - registers every detector
from core.config import DetectOptions
from detectors.base import REGISTRY, Detector, make_detector
from detectors.false_alarm_budget import (
    Calibrated,
    Persistence,
    Union,
    beyond_margin,
    blocked_check,
    calibrate,
    threshold_for,
    union,
)
from detectors.reference import ReferenceWindowDetector

DEFAULT_OPTIONS = DetectOptions()
PERSIST = 3
# contiguous folds of the calibration rows, each scored by a model fitted on the others: a model that has not
# seen a stretch of the run scores it as it will score the plant's next hours (interleaved short blocks were
# optimistic on a new run of the twin suite: docs/DETECT.md)
FOLDS = 10
CONTEXT = 8  # rows before a fold streamed first, so lagged detectors see its rows with their true lags
# under a budget the training rows' first scores are left out of the calibration until the signals' EWMA has
# forgotten its first reading to this weight: a start from one reading is noisier than the steady EWMA (on the
# generated plants the first 30 rows scored 2-7 times the rest, cva 200 times on its first row; the rows
# the user scores follow the training rows and carry no start)
SETTLED_WEIGHT = 0.05
DRIVERS = 3  # signals named per alarm row
# under a budget a wandering signal is scored as its departure from a causal EWMA of this span: the wander goes, a
# drift turns into a lasting offset and a step shows for about this many rows
DETREND_ROWS = 100
# ... and "wanders" is judged by the roughness over this share of the training rows, not over one row: a slow but
# stationary signal (a controlled plant's temperature) is back around its level within that span, a wandering
# one is not (on SKAB's first 400 rows the temperatures score 0.3, the other signals 0.6-1.0)
WANDER_SHARE = 20


class InputError(ValueError):
    """Bad input file or arguments; the message is one line for the user."""


@dataclass
class Scored:
    table: pa.Table  # time column, one score column per detector, fused score, is_alarm, drivers
    train_rows: int
    metrics: dict[str, float] | None
    conditioning: Conditioning  # which signals wander, and whether they were left out or detrended
    budget: dict[str, Calibrated] | None = None  # with a false-alarm budget: each detector's and the fusion's
    union: Union | None = None  # ... and the detectors' thresholds and rules inside the fusion


@dataclass
class Streamed:
    """One detector's scores over a stream and its state after it (to go on with another file)."""

    detector: Detector
    state: object
    scores: np.ndarray
    contributions: np.ndarray


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
    twice = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if twice:  # a column named twice cannot be told apart (pyarrow refuses to pick one)
        raise InputError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")
    return table


def signal_matrix(table: pa.Table, time_col: str | None, skip: set[str]) -> tuple[list[str], np.ndarray]:
    """Every column but the time (None: the rows are in time order, there is no time column) and `skip`."""
    if time_col is not None and time_col not in table.column_names:
        raise InputError(f"time column {time_col!r} not found; columns: {', '.join(table.column_names)}")
    names = [c for c in table.column_names if c != time_col and c not in skip]
    if not names:
        raise InputError("no signal columns left to score")
    cols = []
    for name in names:
        col = table[name]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            raise InputError(f"column {name!r} is not numeric ({col.type}); exclude it with --ignore-cols")
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        infinite = np.flatnonzero(np.isinf(values))
        if infinite.size:  # one infinite reading would poison the smoothing and every model fitted on it
            raise InputError(f"column {name!r} is infinite at row {infinite[0] + 1} ({infinite.size} row(s)): "
                             "leave a missing reading empty")
        cols.append(values)
    return names, np.column_stack(cols)


def check_time_order(table: pa.Table, time_col: str, train_rows: int) -> None:
    """The detectors learn in row order, so a numeric or timestamp time column must not go back, within the
    training rows or within the rows after them (a separate training file may come from a later period)."""
    time = table[time_col]
    kind = time.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)):
        return  # text times (any format): their order cannot be judged
    for start, stop in ((0, train_rows), (train_rows, len(time))):
        part = time.slice(start, stop - start).drop_null()
        if len(part) < 2:
            continue
        back = np.flatnonzero(pc.less(part.slice(1), part.slice(0, len(part) - 1)).to_numpy(zero_copy_only=False))
        if back.size:
            i = int(back[0]) + 1
            raise InputError(f"time column {time_col!r} goes back at row {start + i + 1} ({part[i]} after "
                             f"{part[i - 1]}): sort the rows by time (the detectors learn in time order)")


def wandering(train: np.ndarray, names: list[str], min_roughness: float, lag: int = 1) -> list[str]:
    """Signals whose level drifts on the training rows: roughness over `lag` rows below `min_roughness` (see the
    module doc)."""
    out = []
    for name, x in zip(names, train.T, strict=True):
        x = x[~np.isnan(x)]
        sd = float(np.std(x)) if len(x) > lag + 1 else 0.0
        if sd > 1e-12 and np.std(x[lag:] - x[:-lag]) / (np.sqrt(2) * sd) < min_roughness:
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


@dataclass
class Conditioning:
    """How the signals reach the detectors (module doc), fixed on the training rows: the signals kept, and the
    wandering ones (left out with a margin; under a budget measured from their own slow baseline)."""

    names: list[str]  # every signal, in the input's order
    wander: list[str]
    detrend: bool
    smooth_rows: int

    @classmethod
    def fit(cls, names: list[str], train: np.ndarray, options: DetectOptions) -> Conditioning:
        detrend = options.wander == "detrend" or (options.wander == "auto" and options.far is not None)
        lag = max(len(train) // WANDER_SHARE, 1) if detrend else 1
        wander = wandering(train, names, options.min_roughness, lag) if options.min_roughness > 0 else []
        if len(wander) == len(names) and not detrend:
            wander = []  # nothing would be left to score: keep them all rather than score nothing
        return cls(names, wander, detrend, options.smooth_rows)

    @property
    def settle_rows(self) -> int:
        """Rows until the first reading weighs less than SETTLED_WEIGHT in the signals' EWMA."""
        if self.smooth_rows <= 1:
            return 0
        return math.ceil(math.log(SETTLED_WEIGHT) / math.log(1 - 2 / (self.smooth_rows + 1)))

    @property
    def scored(self) -> list[str]:
        return self.names if self.detrend else [n for n in self.names if n not in self.wander]

    def apply(self, X: np.ndarray, smooth: bool = True) -> np.ndarray:
        """X [rows, names] from the first training row on -> the detectors' input [rows, scored]; `smooth` False:
        without the EWMA (the `:raw` detectors')."""
        X = smoothed(X[:, [self.names.index(n) for n in self.scored]], self.smooth_rows if smooth else 1)
        if self.detrend and self.wander:
            cols = [self.scored.index(n) for n in self.wander]
            X[:, cols] -= smoothed(X[:, cols], DETREND_ROWS)
        return X

    def inputs(self, X: np.ndarray, detectors_: list[str]) -> Inputs:
        """Each detector's input from X: the smoothed signals, or for a `:raw` one the signals before the EWMA
        (each computed once)."""
        kinds = {d.endswith(RAW) for d in detectors_}
        made = {raw: self.apply(X, smooth=not raw) for raw in kinds}
        return {d: made[d.endswith(RAW)] for d in detectors_}


Inputs = dict[str, np.ndarray]  # per detector spec, its input rows [rows, signals]


def take_rows(inputs: Inputs, start: int | None, stop: int | None = None) -> Inputs:
    """The same rows of every detector's input."""
    return {d: X[start:stop] for d, X in inputs.items()}


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


RAW = ":raw"  # `<detector>:raw`: the detector on the signals before their EWMA (module doc)


def detector_kind(spec: str) -> str:
    """The registered detector a spec (`cva`, `cva:raw`) runs."""
    return spec.removesuffix(RAW)


def check_detectors(specs: list[str]) -> None:
    unknown = [d for d in specs if detector_kind(d) not in REGISTRY]
    if unknown:
        raise InputError(f"unknown detector(s) {', '.join(unknown)}; available: {', '.join(sorted(REGISTRY))} "
                         f"(each also as <name>{RAW}: on the signals before their EWMA)")


def with_beyond(budgeted: list[str], beyond: Sequence[str]) -> list[str]:
    """Every detector to score: those under the budget, then those beyond the margin (`fit_budget`); each once."""
    both = [d for d in beyond if d in budgeted]
    if both:
        raise InputError(f"detector(s) {', '.join(both)} both under the budget and beyond the margin: name each once")
    check_detectors([*budgeted, *beyond])
    return [*budgeted, *dict.fromkeys(beyond)]


def is_reference(name: str) -> bool:
    return issubclass(REGISTRY[detector_kind(name)], ReferenceWindowDetector)


def build(name: str, train_rows: int) -> Detector:
    """A detector whose reference (or warm-up) is the training rows; `name` may carry `:raw`."""
    name = detector_kind(name)
    if is_reference(name):
        return make_detector(name, reference_ticks=train_rows)
    return make_detector(name, **({"warmup_ticks": min(train_rows // 2, 60)}
                                  if name in ("zscore", "moving_average", "ewma") else {}))


def stream(det: Detector, state: object, X: np.ndarray) -> Streamed:
    ts = np.arange(len(X))
    if hasattr(det, "score_learn_detail"):
        state, s, c = det.score_learn_detail(state, ts, X)
    else:
        state, s = det.score_learn(state, ts, X)
        c = np.zeros_like(X)
    return Streamed(det, state, s, np.abs(c))


def out_of_sample(name: str, names: list[str], X: np.ndarray, calibration_rows: int) -> tuple[np.ndarray, int]:
    """Scores of the training rows X from models that did not learn from them (module doc), and the first row
    where they are valid."""
    if not is_reference(name):
        det = build(name, len(X))
        return stream(det, det.init_state(names), X).scores, min(60, len(X) // 2)
    scores = np.zeros(len(X))
    edges = np.linspace(0, calibration_rows, FOLDS + 1).astype(int)
    for start, end in itertools.pairwise(edges):
        fit_rows = np.r_[0:start, end:calibration_rows]
        context = max(start - CONTEXT, 0)
        det = build(name, len(fit_rows))
        s = stream(det, det.init_state(names), np.vstack([X[fit_rows], X[context:end]])).scores
        scores[start:end] = s[len(fit_rows) + start - context:]
    if calibration_rows < len(X):  # the rows after: scored by a model fitted on all the calibration rows
        det = build(name, calibration_rows)
        scores[calibration_rows:] = stream(det, det.init_state(names), X).scores[calibration_rows:]
    return scores, CONTEXT  # the first fold's first rows lag into the end of the fitting rows: left out


def statistic(scores: np.ndarray, smooth_rows: int) -> np.ndarray:
    """A detector's scores as a budget thresholds them: a causal EWMA over `smooth_rows` (module doc)."""
    return smoothed(scores[:, None], smooth_rows)[:, 0]


@dataclass
class BudgetModel:
    """Detectors fitted on normal training rows under a false-alarm budget, ready to score what follows."""

    names: list[str]
    streamed: dict[str, Streamed]  # over the training rows, fitted on all of them
    budget: dict[str, Calibrated]  # per detector alone, and "fusion" (threshold 1 on `union.ratios`' largest)
    union: Union  # the detectors' thresholds and rules inside the fusion
    smooth_rows: int  # the EWMA span over each detector's scores before its threshold

    def statistics(self, scores: np.ndarray) -> np.ndarray:
        """The detectors' scores [detectors, rows] of a stretch of rows -> what their thresholds apply to."""
        return np.stack([statistic(s, self.smooth_rows) for s in scores])


@dataclass
class NormalScores:
    """What a budget is set from, whatever the budget: each detector's out-of-fold scores of the training rows,
    for the check (the first three quarters out of fold, the last quarter held back) and for the setting (all
    rows out of fold), and the detectors fitted on all the rows."""

    checked: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    start: int  # the first row whose scores are valid
    calibration_rows: int
    streamed: dict[str, Streamed]


def normal_scores(names: list[str], inputs: Inputs, detectors_: list[str], settle_rows: int = 0) -> NormalScores:
    """`inputs`: each detector's training rows (`Conditioning.inputs`). `settle_rows`: the conditioning's start-up
    (`Conditioning.settle_rows`), left out of the calibration with the first fold's lags (at most a quarter of the
    rows)."""
    n_rows = len(inputs[detectors_[0]])
    calibration_rows = n_rows - max(n_rows // 4, 1)
    checked, starts = zip(*(out_of_sample(n, names, inputs[n], calibration_rows) for n in detectors_), strict=True)
    final, _ = zip(*(out_of_sample(n, names, inputs[n], n_rows) for n in detectors_), strict=True)
    dets = {n: build(n, n_rows) for n in detectors_}
    return NormalScores(dict(zip(detectors_, checked, strict=True)), dict(zip(detectors_, final, strict=True)),
                        min(settle_rows + max(starts), max(n_rows // 4, max(starts))), calibration_rows,
                        {n: stream(d, d.init_state(names), inputs[n]) for n, d in dets.items()})


def fit_budget(names: list[str], train: Inputs | None, detectors_: list[str], far: float,
               rule: Persistence | None = None, normal: NormalScores | None = None,
               smooth_rows: int = DEFAULT_OPTIONS.stat_smooth_rows, settle_rows: int = 0,
               beyond: Sequence[str] = (), margin: float = DEFAULT_OPTIONS.margin) -> BudgetModel:
    """The budget's rules, setting and check (module doc): thresholds and rules set on the first three quarters'
    out-of-fold statistics and the rules picked on the last quarter; then, with each rule kept, the thresholds set
    again on the out-of-fold statistics of all the training rows, for the models fitted on all of them, and
    checked on blocks of those statistics held back in turn. The detectors in `beyond` join the fusion outside the
    budget, beyond `margin` times their largest out-of-fold statistic (`beyond_margin`). `normal`: the training
    rows' scores when already computed (several budgets on one training run); else computed, leaving out the first
    `settle_rows` (`normal_scores`)."""
    budgeted = [n for n in detectors_ if n not in beyond]
    if not budgeted:
        raise InputError("every detector is beyond the margin: at least one must keep the budget")
    normal = normal or normal_scores(names, train, detectors_, settle_rows)
    cal = normal.calibration_rows - normal.start
    checked = {n: statistic(normal.checked[n][normal.start:], smooth_rows) for n in detectors_}
    final = {n: statistic(normal.final[n][normal.start:], smooth_rows) for n in detectors_}
    budget = {n: calibrate(checked[n][:cal], checked[n][cal:], far, rule) for n in budgeted}
    for n in budgeted:
        budget[n].threshold = threshold_for(final[n], far, budget[n].rule)
        budget[n].check = blocked_check({n: final[n]}, {n: budget[n].rule}, far)
    fused = union({n: checked[n] for n in budgeted}, {n: final[n] for n in budgeted}, cal, far, rule)
    fused.fusion.check = blocked_check({n: final[n] for n in budgeted},
                                       {n: m.rule for n, m in fused.members.items()}, fused.share)
    for n in beyond:
        budget[n] = beyond_margin(final[n], checked[n][cal:], margin)
    fused.members = {n: fused.members.get(n) or budget[n] for n in detectors_}  # the scores' order
    budget = {n: budget[n] for n in detectors_} | {"fusion": fused.fusion}
    return BudgetModel(names, normal.streamed, budget, fused, smooth_rows)


def go_on(streamed: dict[str, Streamed], inputs: Inputs) -> dict[str, Streamed]:
    """Each fitted detector over its input's rows that follow the training rows (the fitted ones are left as they
    were)."""
    import copy

    return {name: stream(fitted.detector, copy.deepcopy(fitted.state), inputs[name])
            for name, fitted in streamed.items()}


def drivers(names: list[str], ratios: np.ndarray, contributions: np.ndarray, alarm: np.ndarray) -> list[str | None]:
    """On alarm rows, the signals with the largest contributions to the detector that leads the fused score."""
    lead = ratios.argmax(axis=0)
    out: list[str | None] = [None] * len(alarm)
    for i in np.flatnonzero(alarm):
        c = contributions[lead[i], i]
        top = [j for j in np.argsort(-c)[:DRIVERS] if c[j] > 0]
        out[i] = ",".join(names[j] for j in top) or None
    return out


def score(table: pa.Table, time_col: str, detectors_: list[str], train_rows: int, label_col: str | None = None,
          ignore: set[str] | None = None, options: DetectOptions = DEFAULT_OPTIONS,
          beyond: Sequence[str] = ()) -> Scored:
    """`beyond`: under a budget, detectors (also in `detectors_`) that join the fusion beyond `options.margin`
    outside the budget (`fit_budget`)."""
    check_detectors(detectors_)
    skip = set(ignore or ())
    if label_col:
        if label_col not in table.column_names:
            raise InputError(f"label column {label_col!r} not found; columns: {', '.join(table.column_names)}")
        skip.add(label_col)
    names, X = signal_matrix(table, time_col, skip)
    if len(X) < 3:  # else the range below reads "between 2 and 0"
        raise InputError(f"{len(X)} row(s) are too few: give at least 3 (2 to train on, 1 to score)")
    if not 2 <= train_rows < len(X):
        raise InputError(f"--train-rows must be between 2 and {len(X) - 1} for {len(X)} rows, got {train_rows}")
    check_time_order(table, time_col, train_rows)
    conditioning = Conditioning.fit(names, X[:train_rows], options)
    names, inputs = conditioning.scored, conditioning.inputs(X, detectors_)
    columns: dict[str, pa.Array] = {time_col: table[time_col]}
    budget, fused_by = None, None
    if options.far is not None:
        model = fit_budget(names, take_rows(inputs, None, train_rows), detectors_, options.far,
                           Persistence.parse(options.persist) if options.persist else None,
                           smooth_rows=options.stat_smooth_rows, settle_rows=conditioning.settle_rows,
                           beyond=beyond, margin=options.margin)
        after = go_on(model.streamed, take_rows(inputs, train_rows))
        # the training rows and the rows after are each smoothed from their own first row: on the training rows
        # the reference detectors score 0 while they collect their reference
        scores = np.hstack([model.statistics(np.stack([model.streamed[n].scores for n in detectors_])),
                            model.statistics(np.stack([after[n].scores for n in detectors_]))])
        contributions = np.stack([np.concatenate([model.streamed[n].contributions, after[n].contributions])
                                  for n in detectors_])
        ratios = model.union.ratios(scores)
        budget, fused_by = model.budget, model.union
        fused = ratios.max(axis=0)
        alarm = budget["fusion"].alarms(fused)
        for name, s in zip(detectors_, scores, strict=True):
            columns[f"score_{name}"] = pa.array(s)
        for name, s in zip(detectors_, scores, strict=True):
            columns[f"alarm_{name}"] = pa.array(budget[name].alarms(s))
    else:
        ratios, contributions = margin_ratios(names, inputs, detectors_, train_rows, options.margin, columns)
        fused = ratios.max(axis=0)
        alarm = persisted(fused > 1.0)
    columns["score_fusion"] = pa.array(fused)
    columns["is_alarm"] = pa.array(alarm)
    columns["drivers"] = pa.array(drivers(names, ratios, contributions, alarm), pa.string())
    metrics = None
    if label_col:
        y = table[label_col].cast(pa.float64()).fill_null(0).to_numpy() > 0.5
        metrics = classification(y[train_rows:], alarm[train_rows:])
    return Scored(pa.table(columns), train_rows, metrics, conditioning, budget, fused_by)


def margin_ratios(names: list[str], inputs: Inputs, detectors_: list[str], train_rows: int, margin: float,
                  columns: dict[str, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """Each detector's score over its margin threshold [detectors, n] and its contributions [detectors, n, m];
    adds the score columns."""
    ratios, contributions = [], []
    for name in detectors_:
        X = inputs[name]
        det = build(name, train_rows)
        run = stream(det, det.init_state(names), X)
        s = run.scores
        columns[f"score_{name}"] = pa.array(s)
        contributions.append(run.contributions)
        if detector_kind(name) == "iforest":  # a bounded score (a path-length ratio): a multiplied margin means nothing to it
            ratios.append(s)  # already relative to its reference's 99.5th percentile
            continue
        if is_reference(name):
            # it scores 0 while collecting its reference: score the training rows again with the fitted model
            # (optimistic on its own rows, which the margin covers; the textbook T²/SPE limits assume independent
            # rows, and smoothed rows are not)
            train = stream(det, run.state, X[:train_rows]).scores
        else:
            train = s[min(60, train_rows // 2):train_rows]  # after the adaptive ones settle
        ratios.append(s / threshold_from(train, margin))
    return np.stack(ratios), np.stack(contributions)


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
