"""Training and evaluating the outcome model.

`train_outcome(train, calibration)`: the network on the training patients (binary cross-entropy on the three
risks, squared error on the two standardised values, each only where its label exists; AdamW), then on the
calibration patients - never seen in training - the temperatures, the alert thresholds and the conformal
scores. `evaluate(model, test)`: per head the figures `biopilot train outcome` prints.

>>> from outcomes.dataset import simulate_dataset
>>> ds = simulate_dataset(6, seed=3, days=10, samples_per_patient=2)
>>> tr, cal = ds.split((0.5, 0.5))
>>> model = train_outcome(tr, cal, config=TrainConfig(epochs=1))
>>> sorted(evaluate(model, cal)["heads"]) == sorted(CLASS_HEADS + REGRESSION_HEADS)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

from outcomes.calibration import expected_calibration_error, fit_temperature
from outcomes.conformal import ClassConformal, RegressionConformal
from outcomes.contract import CLASS_HEADS, COVERAGE_TARGET, REGRESSION_HEADS
from outcomes.dataset import OutcomeDataset
from outcomes.linear_head import MEMBERS, LinearHead
from outcomes.model import REGRESSION_SCALE, OutcomeConfig, OutcomeModel, OutcomeNet
from outcomes.performance_drift import auroc_standard_error, labelled_auroc


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    regression_weight: float = 0.5
    model: OutcomeConfig = field(default_factory=OutcomeConfig)
    # serve logistic regression on a risk where it ranks the validation patients better: off by default, since at
    # the default size (198 validation patients) the choice followed the noise (docs/OUTCOMES.md, run D)
    choose_heads: bool = False


def choose_heads(model: OutcomeModel, train: OutcomeDataset, validation: OutcomeDataset,
                 heads: Sequence[str] = CLASS_HEADS, names: tuple[str, str] = ("hybrid", "logistic_regression"),
                 seed: int = 0) -> list[str]:
    """Per risk in `heads`, serve logistic regression on the flattened inputs (`outcomes.linear_head`, bagged
    over the training patients; the baseline `train outcome` reports) where it ranks the validation patients
    better than what the model serves now (in training: the network) by more than that predictor's AUROC
    standard error there (Hanley & McNeil): a tie keeps what serves. Sets `model.linear_heads` and
    `model.validation_auroc` (the two AUROCs under `names`); the risks now served by a new regression. The
    validation patients are the calibration ones (never trained on; the test patients are never looked at)."""
    p = model.raw(validation.inputs).p
    x_train, x_validation = model.inputs(train.inputs), model.inputs(validation.inputs)
    chosen = []
    for h in heads:
        linear = LinearHead.fit(x_train, train.labels[h], groups=train.run_id, members=MEMBERS, seed=seed)
        y = validation.labels[h]
        served, refit = (labelled_auroc(y, p[:, CLASS_HEADS.index(h)]),
                         labelled_auroc(y, linear.logit(x_validation)) if linear else float("nan"))
        model.validation_auroc[h] = {names[0]: round(served, 4), names[1]: round(refit, 4)}
        labelled = y[~np.isnan(y)]
        se = auroc_standard_error(served, int(labelled.sum()), int(len(labelled) - labelled.sum()))
        if refit > served + se:  # NaN (a class missing) compares False
            model.linear_heads[h] = linear
            chosen.append(h)
    return chosen


def _targets(ds: OutcomeDataset) -> tuple[np.ndarray, np.ndarray]:
    """(class labels [n, 3], standardised regression labels [n, 2]); NaN = no label."""
    y_c = np.column_stack([ds.labels[h] for h in CLASS_HEADS]).astype(np.float32)
    y_r = np.column_stack([(ds.labels[h] - REGRESSION_SCALE[h][0]) / REGRESSION_SCALE[h][1]
                           for h in REGRESSION_HEADS]).astype(np.float32)
    return y_c, y_r


def _fit_net(train: OutcomeDataset, config: TrainConfig, seed: int, progress: bool,
             init: OutcomeNet | None = None) -> OutcomeNet:
    torch.manual_seed(seed)
    net = OutcomeNet(init.cfg if init is not None else config.model)
    if init is not None:  # a warm start (outcomes/retrain.py: the challenger starts from the champion's weights)
        net.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    series, static, cat = train.inputs.tensors()
    y_c, y_r = (torch.from_numpy(a) for a in _targets(train))
    n = len(series)
    steps = config.epochs * max(1, -(-n // config.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    k = len(CLASS_HEADS)
    with tqdm(total=steps, desc="training outcome model", unit="batch", disable=not progress) as bar:
        for _ in range(config.epochs):
            for idx in torch.randperm(n, generator=gen).split(config.batch):
                out = net(series[idx], static[idx], cat[idx])
                yc, yr = y_c[idx], y_r[idx]
                mc, mr = ~torch.isnan(yc), ~torch.isnan(yr)
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    out[:, :k][mc], yc[mc], reduction="sum") / max(1, int(mc.sum()))
                mse = ((out[:, k:][mr] - yr[mr]) ** 2).sum() / max(1, int(mr.sum()))
                loss = bce * k + config.regression_weight * mse * len(REGRESSION_HEADS)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.update(1)
    net.eval()
    return net


def youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The probability maximising sensitivity + specificity - 1 (0.5 when a class is missing)."""
    keep = ~np.isnan(y)
    p, y = p[keep], y[keep]
    if not len(y) or y.min() == y.max():
        return 0.5
    grid = np.unique(np.quantile(p, np.linspace(0.01, 0.99, 99)))
    j = [(p[y == 1] >= t).mean() - (p[y == 0] >= t).mean() for t in grid]
    return float(grid[int(np.argmax(j))])


def train_outcome(train: OutcomeDataset, calibration: OutcomeDataset, *, config: TrainConfig = TrainConfig(),
                  seed: int = 0, progress: bool = False, init: OutcomeNet | None = None) -> OutcomeModel:
    """The network on `train`; temperatures, thresholds and conformal scores on `calibration` (other patients).
    `init`: start from these weights (a warm start: a challenger fine-tuned from the champion)."""
    if not len(train) or not len(calibration):
        raise ValueError("train and calibration must both hold samples")
    net = _fit_net(train, config, seed, progress, init)
    model = OutcomeModel(net, {h: 1.0 for h in CLASS_HEADS}, {h: 0.5 for h in CLASS_HEADS}, {}, {})
    if config.choose_heads:
        choose_heads(model, train, calibration)
    calibrate(model, calibration)
    # the version was named before the choice: name it again, so that it names the predictors it serves
    return replace(model, version="", created="") if model.linear_heads else model


def calibrate(model: OutcomeModel, calibration: OutcomeDataset,
              heads: Sequence[str] = (*CLASS_HEADS, *REGRESSION_HEADS)) -> None:
    """On `calibration` (patients never trained on), each of `heads`: a risk's temperature, alert threshold and
    conformal scores, a value's conformal scores."""
    passes = model._passes(calibration.inputs)
    for i, h in enumerate(CLASS_HEADS):
        if h in heads:
            model.temperatures[h] = fit_temperature(passes[:, :, i], calibration.labels[h])
    raw = model.raw(calibration.inputs)
    for i, h in enumerate(CLASS_HEADS):
        if h in heads:
            y = calibration.labels[h]
            model.thresholds[h] = youden_threshold(raw.p[:, i], y)
            model.class_conformal[h] = ClassConformal.fit(y, raw.p[:, i], calibration.groups(h),
                                                          calibration.run_id)
    for i, h in enumerate(REGRESSION_HEADS):
        if h in heads:
            model.regression_conformal[h] = RegressionConformal.fit(calibration.labels[h], raw.value[:, i],
                                                                    raw.value_sd[:, i], calibration.groups(h),
                                                                    calibration.run_id)


def patient_weights(run_id: np.ndarray) -> np.ndarray:
    """Each sample's weight in a coverage: 1 / its patient's sample count, so that every patient weighs one - the
    conformal's exchangeable unit (it is calibrated on one sample per patient). Counted per sample instead, a
    patient with more samples weighs more; one who bleeds has none after the bleed, so bleeds weigh less."""
    _, inverse, counts = np.unique(run_id, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def _share(inside: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(weights * inside) / np.sum(weights))


def coverage_by_group(inside: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    return {str(g): round(_share(inside[groups == g], weights[groups == g]), 4) for g in sorted(set(groups)) if g != ""}


def classification_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, Brier, ECE of probabilities `p` for labels `y` (NaN labels skipped)."""
    keep = ~np.isnan(y)
    p, y = p[keep], y[keep]
    two = len(y) and 0 < y.sum() < len(y)
    return {"n": int(len(y)), "positives": int(y.sum()),
            "auroc": round(float(roc_auc_score(y, p)), 4) if two else float("nan"),
            "auprc": round(float(average_precision_score(y, p)), 4) if two else float("nan"),
            "brier": round(float(np.mean((p - y) ** 2)), 4) if len(y) else float("nan"),
            "ece": round(expected_calibration_error(p, y), 4)}


def evaluate(model: OutcomeModel, test: OutcomeDataset) -> dict:
    """Per head: classification - auroc, auprc, brier, ece, coverage of the conformal sets overall and per
    genotype group and per ancestry, the mean set size; regression - MAE, coverage (same groups), mean width.
    Coverage counts every patient once (`patient_weights`); the other figures count samples."""
    pred = model.predict_dataset(test)
    heads = {}
    for h in CLASS_HEADS:
        y = test.labels[h]
        keep = ~np.isnan(y)
        v = pred[h]
        inside = np.where(y[keep] == 1, v["in_set1"][keep], v["in_set0"][keep])
        w = patient_weights(test.run_id[keep])
        groups = coverage_by_group(inside, test.groups(h)[keep], w)
        heads[h] = {**classification_metrics(v["estimate"], y), **_coverage(inside, groups, w),
                    "coverage_by_ancestry": coverage_by_group(inside, test.ancestry[keep], w),
                    "mean_set_size": round(float((v["in_set0"][keep].astype(int)
                                                  + v["in_set1"][keep].astype(int)).mean()), 4) if keep.any() else
                    float("nan"),
                    "threshold": round(model.thresholds[h], 4)}
    for h in REGRESSION_HEADS:
        y = test.labels[h]
        keep = ~np.isnan(y)
        v = pred[h]
        inside = (y[keep] >= v["lo"][keep]) & (y[keep] <= v["hi"][keep])
        w = patient_weights(test.run_id[keep])
        groups = coverage_by_group(inside, test.groups(h)[keep], w)
        heads[h] = {"n": int(keep.sum()),
                    "mae": round(float(np.abs(v["estimate"][keep] - y[keep]).mean()), 4) if keep.any() else
                    float("nan"), **_coverage(inside, groups, w),
                    "coverage_by_ancestry": coverage_by_group(inside, test.ancestry[keep], w),
                    "interval_width": round(float((v["hi"][keep] - v["lo"][keep]).mean()), 4) if keep.any() else
                    float("nan")}
    return {"samples": len(test), "patients": int(len(set(test.run_id))), "coverage_target": COVERAGE_TARGET,
            "heads": heads}


RESPLITS = 200
RESPLIT_QUANTILES = (0.05, 0.95)


def coverage_over_resplits(model: OutcomeModel, calibration: OutcomeDataset, test: OutcomeDataset,
                           repeats: int = RESPLITS, seed: int = 0) -> dict[str, dict]:
    """Conformal coverage is a guarantee in expectation over calibration sets, and one test set of a few hundred
    patients (12 correlated samples each) draws one value from a wide spread, the more so per genotype group.
    So, per head: the calibration and test patients pooled and split again by patient `repeats` times (same
    sizes; the network and its temperatures unchanged, the conformal scores refitted), and the coverage's
    mean and 5th-95th percentiles overall and per group (the check of Angelopoulos & Bates 2021, "A gentle
    introduction to conformal prediction": coverage over many calibration draws)."""
    pool = OutcomeDataset.concat([calibration, test])
    r = model.raw(pool.inputs)
    runs = np.unique(pool.run_id)
    n_cal = len(set(calibration.run_id))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[tuple[float, dict[str, float]]]] = {h: [] for h in (*CLASS_HEADS, *REGRESSION_HEADS)}
    for _ in range(repeats):
        cal = np.isin(pool.run_id, runs[rng.permutation(len(runs))[:n_cal]])
        for i, h in enumerate((*CLASS_HEADS, *REGRESSION_HEADS)):
            y, groups = pool.labels[h], pool.groups(h)
            te = ~cal & ~np.isnan(y)
            if h in CLASS_HEADS:
                sets = ClassConformal.fit(y[cal], r.p[cal, i], groups[cal], pool.run_id[cal]).sets(
                    r.p[te, i], groups[te])
                inside = np.where(y[te] == 1, sets[:, 1], sets[:, 0])
            else:
                j = i - len(CLASS_HEADS)
                lo, hi = RegressionConformal.fit(y[cal], r.value[cal, j], r.value_sd[cal, j], groups[cal],
                                                 pool.run_id[cal]).interval(r.value[te, j], r.value_sd[te, j],
                                                                            groups[te])
                inside = (y[te] >= lo) & (y[te] <= hi)
            if len(inside):
                w = patient_weights(pool.run_id[te])
                draws[h].append((_share(inside, w), coverage_by_group(inside, groups[te], w)))
    out = {}
    for h, d in draws.items():
        if not d:
            continue
        overall = np.array([c for c, _ in d])
        per_group = {g: np.array([gs[g] for _, gs in d if g in gs]) for g in sorted({g for _, gs in d for g in gs})}
        group_mean = {g: round(float(v.mean()), 4) for g, v in per_group.items()}
        out[h] = {"repeats": len(d), "coverage_mean": round(float(overall.mean()), 4),
                  "coverage_p05_p95": [round(float(q), 4) for q in np.quantile(overall, RESPLIT_QUANTILES)],
                  "group_coverage_mean": group_mean,
                  "group_coverage_p05_p95": {g: [round(float(q), 4) for q in np.quantile(v, RESPLIT_QUANTILES)]
                                             for g, v in per_group.items()},
                  "min_group_coverage_mean": min(group_mean.values()),
                  "max_group_coverage_mean": max(group_mean.values())}
    return out


def _coverage(inside: np.ndarray, groups: dict[str, float], weights: np.ndarray) -> dict:
    return {"coverage": round(_share(inside, weights), 4) if len(inside) else float("nan"),
            "coverage_by_group": groups,
            "min_group_coverage": min(groups.values()) if groups else float("nan"),
            "max_group_coverage": max(groups.values()) if groups else float("nan")}
