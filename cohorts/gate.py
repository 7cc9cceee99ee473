"""The quality gate: is a synthetic cohort like the real one, useful in its place, and no copy of it?

Metrics (SDMetrics unless said otherwise; ids are left out of all of them):
- `shapes`: Column Shapes of SDMetrics' quality report, the mean over columns of KSComplement (numbers) and
  TVComplement (categories); `pairs`: its Column Pair Trends, the mean over column pairs of CorrelationSimilarity
  (two numbers) and ContingencySimilarity (otherwise).
- `detection_auc` (ours, SDMetrics' detection protocol): a gradient-boosted classifier told to separate real
  from synthetic rows, ROC AUC over 3 stratified folds; 0.5 means it cannot. Non-linear on purpose: SDMetrics'
  LogisticDetection cannot see broken dependencies between columns (it scored independently shuffled columns
  0.5); and its own, since SDMetrics' encoder fails on a category the real table lacks.
- `adherence`: the mean over columns of BoundaryAdherence (numbers inside the real range) and CategoryAdherence.
- `exact_copies` (ours): synthetic rows equal to some real row in every learned column, holdout included.
- `dcr_protection`: DCROverfittingProtection against a real holdout the generator never saw: 1 when synthetic
  rows lie no more often nearer the training rows than the holdout rows (equal-size samples).
- `tstr` / `trtr` (ours, scikit-learn): a gradient-boosted model of the target column trained on synthetic
  (TSTR) or real (TRTR) rows, scored on real rows that neither saw: ROC AUC for a category (one-vs-rest mean for
  more than two), R² for a number.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from cohorts.table import CohortInputError, ColumnSpec, sdmetrics_metadata

DETECTION_TREES = 40
MIN_SCORED_ROWS = 2  # the detection's 3 folds each need a synthetic row to train on; the DCR needs 2 rows


@dataclass(frozen=True)
class GateSettings:
    """Pass thresholds (docs/COHORTS.md explains each default)."""

    min_shapes: float = 0.90
    min_pairs: float = 0.85
    max_detection_auc: float = 0.70
    max_exact_copies: int = 0
    min_adherence: float = 0.99
    min_dcr_protection: float = 0.80
    max_utility_drop: float = 0.10  # TSTR may fall this far below TRTR


@dataclass
class GateReport:
    scores: dict[str, float | int | str | None]
    passed_checks: dict[str, bool]
    column_shapes: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.passed_checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.passed_checks.items() if not ok]

    def as_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        """One line of scores, each marked with whether it passed."""
        def mark(name: str) -> str:
            return "" if name not in self.passed_checks else (" ok" if self.passed_checks[name] else " FAIL")
        s = self.scores
        pairs = "pairs n/a (one column)" if s["pairs"] is None else f"pairs {s['pairs']:.3f}{mark('pairs')}"
        parts = [f"shapes {s['shapes']:.3f}{mark('shapes')}", pairs,
                 f"detection AUC {s['detection_auc']:.3f}{mark('detection_auc')}",
                 f"adherence {s['adherence']:.3f}{mark('adherence')}",
                 f"exact copies {s['exact_copies']}{mark('exact_copies')}"]
        if s.get("dcr_protection") is not None:
            parts.append(f"DCR protection {s['dcr_protection']:.3f}{mark('dcr_protection')}")
        if s.get("tstr") is not None:
            parts.append(f"{s['utility_metric']} TSTR {s['tstr']:.3f} / TRTR {s['trtr']:.3f}{mark('utility')}")
        return ", ".join(parts)


def learned(spec: list[ColumnSpec]) -> list[ColumnSpec]:
    return [c for c in spec if c.kind != "id"]


def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def copy_mask(real: pd.DataFrame, synthetic: pd.DataFrame, spec: list[ColumnSpec]) -> np.ndarray:
    """True for each synthetic row equal to a real row in every learned column (numbers as rounded)."""
    cols = [c.name for c in learned(spec)]
    return np.isin(_row_hashes(synthetic[cols]), _row_hashes(real[cols]))


def _detection_scores(real: pd.DataFrame, synthetic: pd.DataFrame, columns: list[ColumnSpec],
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(is synthetic, out-of-fold probability of being synthetic) for every real then synthetic row: a
    gradient-boosted classifier over 3 stratified folds."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = _features(pd.concat([real, synthetic], ignore_index=True), columns, real)
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    model = HistGradientBoostingClassifier(max_iter=DETECTION_TREES, max_leaf_nodes=15, random_state=seed,
                                           categorical_features=_categorical_mask(columns))
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    return y, cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]


def detection_auc(real: pd.DataFrame, synthetic: pd.DataFrame, spec: list[ColumnSpec], seed: int) -> float:
    """ROC AUC of telling synthetic from real rows, out of fold: 0.5 when the classifier cannot."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*_detection_scores(real, synthetic, learned(spec), seed)))


def classifier_scores(real: pd.DataFrame, synthetic: pd.DataFrame, spec: list[ColumnSpec], seed: int) -> np.ndarray:
    """Each synthetic row's out-of-fold probability of being synthetic: what the loop's rejection ranks by."""
    return _detection_scores(real, synthetic, learned(spec), seed)[1][len(real):]


def _categorical_mask(columns: list[ColumnSpec]) -> np.ndarray:
    return np.array([c.kind == "categorical" for c in columns], bool)


def _features(frame: pd.DataFrame, columns: list[ColumnSpec], reference: pd.DataFrame) -> np.ndarray:
    """Numbers as they are (NaN = missing), categories as codes of the reference's categories (unseen = missing)."""
    parts = []
    for c in columns:
        if c.kind == "numeric":
            parts.append(frame[c.name].to_numpy(float))
        else:
            levels = sorted({v for v in reference[c.name] if v is not None})
            codes = pd.Categorical(frame[c.name], categories=levels).codes.astype(float)
            parts.append(np.where(codes < 0, np.nan, codes))
    return np.column_stack(parts) if parts else np.zeros((len(frame), 0))


def utility(train: pd.DataFrame, test: pd.DataFrame, spec: list[ColumnSpec], target: str,
            seed: int) -> tuple[str, float]:
    """(metric, score) of a gradient-boosted model of `target` trained on `train`, scored on `test`."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import r2_score, roc_auc_score

    target_spec = next(c for c in spec if c.name == target)
    columns = [c for c in learned(spec) if c.name != target]
    train = train[train[target].notna()]
    test = test[test[target].notna()]
    x_train, x_test = _features(train, columns, train), _features(test, columns, train)
    mask = _categorical_mask(columns)
    if target_spec.kind == "numeric":
        model = HistGradientBoostingRegressor(max_iter=100, random_state=seed, categorical_features=mask)
        model.fit(x_train, train[target].to_numpy(float))
        return "r2", float(r2_score(test[target].to_numpy(float), model.predict(x_test)))
    y_train, y_test = train[target].astype(str).to_numpy(), test[target].astype(str).to_numpy()
    if len(set(y_train)) < 2:
        return "auc", 0.5  # one class only: it ranks nothing
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed, categorical_features=mask)
    model.fit(x_train, y_train)
    proba = model.predict_proba(x_test)
    aucs = [roc_auc_score(y_test == label, proba[:, i]) for i, label in enumerate(model.classes_)
            if 0 < (y_test == label).sum() < len(y_test)]
    if len(model.classes_) == 2:
        aucs = aucs[1:]  # one AUC says it all for two classes
    return "auc", float(np.mean(aucs)) if aucs else 0.5


def check_target(spec: list[ColumnSpec], target: str | None) -> None:
    if target is None:
        return
    names = {c.name: c for c in spec}
    if target not in names:
        raise CohortInputError(f"unknown target column {target!r} (columns: {', '.join(names)})")
    if names[target].kind == "id":
        raise CohortInputError(f"target column {target!r} is an id (one distinct value per row): pick another")
    if not [c for c in learned(spec) if c.name != target]:  # the utility models would have no feature
        raise CohortInputError(f"target column {target!r} is the only learned column: nothing predicts it; "
                               "drop --target")


def evaluate(real: pd.DataFrame, synthetic: pd.DataFrame, spec: list[ColumnSpec], *,
             holdout: pd.DataFrame | None = None, target: str | None = None,
             settings: GateSettings | None = None, seed: int = 0) -> GateReport:
    """Score `synthetic` against `real` (the rows the generator learned from). `holdout`: real rows it never saw,
    for the DCR and as the utility's test rows; without one the utility is tested on a seeded half of `real`
    (TRTR trained on the other half) and the DCR is not measured."""
    from sdmetrics.single_column import BoundaryAdherence, CategoryAdherence
    from sdmetrics.single_table import DCROverfittingProtection

    check_target(spec, target)
    for what, frame in (("synthetic", synthetic), ("holdout", holdout)):
        if frame is not None and len(frame) < MIN_SCORED_ROWS:
            raise CohortInputError(f"the {what} table has {len(frame)} row(s); the gate needs at least "
                                   f"{MIN_SCORED_ROWS}")
    settings = settings or GateSettings()
    columns = learned(spec)
    names = [c.name for c in columns]
    metadata = sdmetrics_metadata(columns)
    real, synthetic = real[names].reset_index(drop=True), synthetic[names].reset_index(drop=True)
    scores: dict[str, float | int | str | None] = {"real_rows": len(real), "synthetic_rows": len(synthetic)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDMetrics warns about its own deprecations and constant columns
        from sdmetrics.reports.single_table.quality_report import QualityReport

        report = QualityReport()
        report.generate(real, synthetic, metadata, verbose=False)
        props = report.get_properties().set_index("Property")["Score"]
        scores["shapes"], scores["pairs"] = float(props["Column Shapes"]), float(props["Column Pair Trends"])
        if len(columns) < 2:  # no pair to trend (SDMetrics gives NaN, which no threshold passes): not measured
            scores["pairs"] = None
        details = report.get_details("Column Shapes")
        column_shapes = {str(r.Column): round(float(r.Score), 4) for r in details.itertuples()}
        scores["detection_auc"] = detection_auc(real, synthetic, columns, seed)
        adherence = [(BoundaryAdherence if c.kind == "numeric" else CategoryAdherence).compute(
            real[c.name], synthetic[c.name]) for c in columns]
        scores["adherence"] = float(np.nanmean(adherence))
        every_real = real if holdout is None else pd.concat([real, holdout[names]], ignore_index=True)
        scores["exact_copies"] = int(copy_mask(every_real, synthetic, columns).sum())
        scores["dcr_protection"] = None
        if holdout is not None:
            np.random.seed(seed)  # its subsamples are drawn by numpy's global generator
            size = min(len(holdout), len(real), len(synthetic))
            dcr = DCROverfittingProtection.compute_breakdown(real, synthetic, holdout[names].reset_index(drop=True),
                                                             metadata, None, num_rows_subsample=size,
                                                             num_iterations=3)
            scores["dcr_protection"] = float(dcr["score"])
            scores["dcr_closer_to_training"] = float(dcr["synthetic_data_percentages"]["closer_to_training"])
    checks = {"shapes": scores["shapes"] >= settings.min_shapes,
              **({} if scores["pairs"] is None else {"pairs": scores["pairs"] >= settings.min_pairs}),
              "detection_auc": scores["detection_auc"] <= settings.max_detection_auc,
              "adherence": scores["adherence"] >= settings.min_adherence,
              "exact_copies": scores["exact_copies"] <= settings.max_exact_copies}
    if scores["dcr_protection"] is not None:
        checks["dcr_protection"] = scores["dcr_protection"] >= settings.min_dcr_protection
    if target is not None:
        if holdout is not None:
            train_real, test_real = real, holdout
        else:
            half = np.random.default_rng(seed).permutation(len(real)) < len(real) // 2
            train_real, test_real = real[half], real[~half]
        metric, scores["tstr"] = utility(synthetic, test_real, spec, target, seed)
        _, scores["trtr"] = utility(train_real, test_real, spec, target, seed)
        scores["utility_metric"], scores["target"] = metric, target
        checks["utility"] = scores["tstr"] >= scores["trtr"] - settings.max_utility_drop
    return GateReport(scores, checks, column_shapes)
