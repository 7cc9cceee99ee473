"""`biopilot bench drift`: a population shift in simulated time, found by the input drift monitor, explained by
the agents, answered by a retrained challenger promoted through the registry.

The traffic: patients are admitted at `admissions_per_h`; the drift monitor (`outcomes.drift.FeatureDrift`,
its reference the first two thirds of the pre-shift admissions) reads each new patient's inputs at their first
scoring (one sample per patient: a patient's hourly rescoring
repeats their genotype and would count one person many times). The first `pre_patients` come from the default
population, the next `post_patients` from the shifted one (an ancestry mix toward East Asian, so more VKORC1 A/A,
and a share on amiodarone from the start, a co-medication the champion has only seen started mid-course).
The outcome monitor (`outcomes.performance_drift.PerformanceDrift`) reads each sample's champion probability
when its 7-day outcome resolves.

On detection a drift incident is opened (incidents + the agents' explanation in agent_messages) and updated
once the monitor's window holds only shifted admissions (every feature that moved, with its settled share). The
challenger is trained on the first half of the shifted patients, once their 7-day outcomes have resolved, then
scored in shadow beside the champion on the next quarter (`outcomes.retrain.retrain`); the AUROCs before and
after are on held-out patients of each population (the last quarter of the shifted ones), never trained on.
The simulated hours: detection from the shift's first admission; the retraining once the outcomes of every sample
it trains on have resolved (a sample's time + 7 days; a patient's samples span their course), the shadow decision
once the window's have.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from agents.risk_worker import drift_messages
from core.events import AGENT_MESSAGES, INCIDENTS
from outcomes import registry
from outcomes.dataset import HORIZON_H, OutcomeDataset, simulate_dataset
from outcomes.drift import MONITORED, FeatureDrift, drift_incident, input_features
from outcomes.model import OutcomeModel
from outcomes.performance_drift import PerformanceDrift
from outcomes.retrain import PromotionRule, RetrainPolicy, ensure_champion, retrain
from outcomes.train import TrainConfig, evaluate
from sinks import delta

SHIFTED_ANCESTRY = {"white": 0.25, "black": 0.05, "asian": 0.6, "other": 0.1}  # default: 0.6, 0.15, 0.15, 0.1
AMIODARONE_SHARE = 0.3
HEAD = "inr_ge4_7d"
T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the bench's simulated clock starts here


def _first_sample_per_patient(ds: OutcomeDataset, rng: np.random.Generator) -> np.ndarray:
    """Indices of each patient's earliest sample, patients in a random admission order."""
    order = np.lexsort((ds.as_of_h, ds.run_id))
    first = order[np.r_[True, ds.run_id[order][1:] != ds.run_id[order][:-1]]]
    return rng.permutation(first)


def _scored_h(ds: OutcomeDataset, admitted: np.ndarray, start_h: float, rate: float) -> np.ndarray:
    """Each sample's hour on the bench clock: its patient's first scoring (their place in the admission order)
    plus the sample's time since that first sample."""
    first_h = {ds.run_id[i]: (start_h + k / rate, ds.as_of_h[i]) for k, i in enumerate(admitted)}
    return np.array([first_h[r][0] + t - first_h[r][1] for r, t in zip(ds.run_id, ds.as_of_h, strict=True)])


def _write_incident(lake: str, row: dict, findings: dict, first_seq: int) -> list[str]:
    """A drift incident's event and the agents' explanation of it, as the agent workers write theirs."""
    delta.append(lake, "incidents", pa.Table.from_pylist([row], schema=INCIDENTS), INCIDENTS)
    messages = drift_messages(row, findings, first_seq)
    delta.append(lake, "agent_messages", pa.Table.from_pylist(messages, schema=AGENT_MESSAGES), AGENT_MESSAGES)
    return [m["text"] for m in messages]


def _head(model: OutcomeModel, ds: OutcomeDataset) -> dict[str, float]:
    """The bench head's AUROC and ECE."""
    metrics = evaluate(model, ds)["heads"][HEAD]
    return {"auroc": round(float(metrics["auroc"]), 4), "ece": round(float(metrics["ece"]), 4)}


def run(*, pre_patients: int = 600, post_patients: int = 800, admissions_per_h: float = 10.0, days: int = 40,
        seed: int = 2601, epochs: int = 3, margin: float = 0.01, lake: str | None = None,
        say: Callable[[str], None] = lambda _: None) -> dict:
    started = time.perf_counter()
    lake = lake or tempfile.mkdtemp(prefix="bench-drift-")
    rng = np.random.default_rng(seed)
    champion_entry = ensure_champion(lake, actor="bench:drift")
    champion = registry.load(lake, champion_entry.version)
    say(f"champion {champion.version}; simulating {pre_patients} + {post_patients} patients")
    pre = simulate_dataset(pre_patients, seed, days=days)
    post = simulate_dataset(post_patients, seed + 1, days=days, ancestry=SHIFTED_ANCESTRY,
                            amiodarone_share=AMIODARONE_SHARE)
    pre_admitted, post_admitted = _first_sample_per_patient(pre, rng), _first_sample_per_patient(post, rng)
    shift_h = len(pre_admitted) / admissions_per_h

    # the input drift monitor over the admissions, in order
    monitor = FeatureDrift(MONITORED, reference_size=2 * len(pre_admitted) // 3)
    features = input_features(pre.inputs.take(pre_admitted)) + input_features(post.inputs.take(post_admitted))
    false_alarms, detected_at, first_shifts, settled, settled_at = 0, None, [], [], None
    for k, x in enumerate(features):
        monitor.update(x)
        if not monitor.drift_detected:
            continue
        if k < len(pre_admitted):
            false_alarms += 1
            continue
        if detected_at is None:
            detected_at, first_shifts = k, monitor.shifts
        settled, settled_at = monitor.shifts, k  # the window full of shifted admissions: every feature that moved
        if k >= detected_at + monitor.window:
            break
    detection_h = None if detected_at is None else (detected_at + 1) / admissions_per_h
    opened: list[str] = []
    updated: list[str] = []
    if detected_at is not None:
        row, findings = drift_incident(champion.version, T0 + timedelta(hours=detection_h), shifts=first_shifts)
        opened = _write_incident(lake, row, findings, first_seq=0)
        say(f"drift found {detection_h - shift_h:.1f} h after the shift: {opened[0]}")
        later, later_findings = drift_incident(champion.version,
                                               T0 + timedelta(hours=(settled_at + 1) / admissions_per_h),
                                               shifts=settled)
        later |= {"incident_id": row["incident_id"], "version": 2, "event": "update", "status": "updated",
                  "start_ts": row["start_ts"]}
        updated = _write_incident(lake, later, later_findings | {"incident_id": row["incident_id"]},
                                  first_seq=len(opened))
        say(f"{monitor.window} admissions later: {updated[0]}")

    # the outcome monitor: the champion's probabilities as their outcomes resolve (admission + 7 days)
    pred_pre, pred_post = champion.predict_dataset(pre)[HEAD], champion.predict_dataset(post)[HEAD]
    post_h = _scored_h(post, post_admitted, shift_h, admissions_per_h)
    resolved_h = np.r_[_scored_h(pre, pre_admitted, 0.0, admissions_per_h), post_h] + HORIZON_H[HEAD]
    p = np.r_[pred_pre["estimate"], pred_post["estimate"]]
    y = np.r_[pre.labels[HEAD], post.labels[HEAD]]
    outcome_monitor, outcome_drift_h, outcome_false_alarms = PerformanceDrift(window=500), None, 0
    for i in np.argsort(resolved_h, kind="stable"):
        if np.isnan(y[i]):
            continue
        outcome_monitor.update(p[i], int(y[i]))
        if outcome_monitor.drift_detected:
            if resolved_h[i] < shift_h + HORIZON_H[HEAD]:  # resolved before any shifted patient's could
                outcome_false_alarms += 1
            else:
                outcome_drift_h = float(resolved_h[i])
                break
    outcome_opened = None
    if outcome_drift_h is not None:
        m = outcome_monitor
        row, findings = drift_incident(champion.version, T0 + timedelta(hours=outcome_drift_h), performance={
            "head": HEAD, "reference_auroc": m.reference_auroc, "auroc": m.auroc, "ece": m.ece, "window": m.window,
            "mean_probability": m.mean_probability, "observed_rate": m.observed_rate})
        outcome_opened = _write_incident(lake, row, findings, first_seq=0)[0]
        say(f"outcome drift {outcome_drift_h - shift_h:.0f} h after the shift: {outcome_opened}")

    # retraining on the first half of the shifted patients; shadow on the next quarter; test on the last
    recent, window, test = post.split((0.5, 0.25, 0.25), seed=seed)
    # when the last outcome the challenger trains on, and the last of the shadow window, resolve
    retrained_h = float(post_h[np.isin(post.run_id, recent.run_id)].max()) + HORIZON_H[HEAD]
    decided_h = max(retrained_h, float(post_h[np.isin(post.run_id, window.run_id)].max()) + HORIZON_H[HEAD])
    # the champion dates from the bench's start; outcomes resolve a week on, so the schedule is due by then too
    trigger = RetrainPolicy().due(now_h=retrained_h, last_trained_h=0.0, drift=detected_at is not None) or "schedule"
    say(f"training a challenger on {len(recent)} samples of {len(set(recent.run_id))} shifted patients ({trigger})")
    snapshot = (f"simulate_dataset(n={post_patients}, seed={seed + 1}, days={days}, ancestry={SHIFTED_ANCESTRY}, "
                f"amiodarone_share={AMIODARONE_SHARE}): the first half of its patients")
    result = retrain(lake, recent, window, trigger=trigger, data_snapshot=snapshot,
                     rule=PromotionRule(margin=margin), config=TrainConfig(epochs=epochs), seed=seed)
    serving = registry.load_champion(lake)
    pre_metrics, post_metrics = _head(champion, pre), _head(champion, test)
    challenger_metrics = _head(registry.load(lake, result.challenger_version), test)
    after_metrics = _head(serving, test)
    return {
        "detection_delay_h": None if detection_h is None else round(detection_h - shift_h, 2),
        "auroc_pre": pre_metrics["auroc"],
        "auroc_post_shift": post_metrics["auroc"],
        "auroc_after_promotion": after_metrics["auroc"],
        "promoted": result.promoted,
        "head": HEAD,
        "challenger_auroc": challenger_metrics["auroc"],
        # calibration: what a shift in the event rate moves even when the ranking holds
        "ece_pre": pre_metrics["ece"], "ece_post_shift": post_metrics["ece"],
        "ece_after_promotion": after_metrics["ece"],
        "shadow": {"champion_auroc": round(result.shadow.decision.champion_auroc, 4),
                   "challenger_auroc": round(result.shadow.decision.challenger_auroc, 4),
                   "margin": margin, "decision": result.shadow.decision.reason},
        "incident_opened": opened[0] if opened else None,
        "incident_updated": updated[0] if updated else None,
        "drifted_inputs": [{"feature": s.feature, "level": s.level, "before": round(s.before, 3),
                            "after": round(s.after, 3)} for s in settled],
        "false_alarms_before_shift": false_alarms,
        "outcome_drift_delay_h": None if outcome_drift_h is None else round(outcome_drift_h - shift_h, 1),
        "outcome_false_alarms_before_shift": outcome_false_alarms,
        "outcome_incident": outcome_opened,
        "retrained_at_h_after_shift": round(retrained_h - shift_h, 1),
        "promotion_decided_at_h_after_shift": round(decided_h - shift_h, 1),
        "champion_version": result.champion_version, "challenger_version": result.challenger_version,
        "admissions_per_h": admissions_per_h, "pre_patients": pre_patients, "post_patients": post_patients,
        "shift": {"ancestry": SHIFTED_ANCESTRY, "amiodarone_share": AMIODARONE_SHARE},
        "samples": {"pre": len(pre), "recent": len(recent), "shadow": len(window), "test": len(test)},
        "epochs": epochs, "seed": seed, "wall_s": round(time.perf_counter() - started, 1),
    }
