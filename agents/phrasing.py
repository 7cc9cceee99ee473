"""Deterministic text from structured findings (the `offline` language backend).

Every sentence that states a fact comes from an evidence sentence, which names its signal, time and value.
Findings are the dicts of `IncidentFinding.as_dict()`.

>>> finding = {"incident_id": "abc", "reactor_id": "r1", "start_ts": "2026-01-05T12:00:00+00:00",
...            "end_ts": None, "severity": "warning", "alert_count": 1, "signals": ["temp_c"],
...            "abstained": False, "facts": [], "hypotheses": [{"fault": "temperature_spike",
...            "confidence": 0.7, "match": 0.9, "root_cause": "jacket temperature control failure",
...            "action": "switch the jacket to manual cooling",
...            "evidence": ["temp_c read 36.2 °C at 2026-01-05 12:05 UTC, above the 33 °C normal runs show"]}]}
>>> print(explain(finding)[1])
Most likely cause: temperature_spike (confidence 0.70): jacket temperature control failure.
"""

from __future__ import annotations

import re

from agents.knowledge import SIGNATURES
from agents.patient_knowledge import SIGNATURES as PATIENT_SIGNATURES

SIGNAL_WORDS = {"do": "do_pct", "oxygen": "do_pct", "ph": "ph", "temperature": "temp_c", "temp": "temp_c",
                "feed": "feed_ml_per_tick", "base": "base_ml_per_tick", "co2": "co2_sccm", "o2": "o2_sccm",
                "our": "our_mmol_l_h", "cer": "cer_mmol_l_h", "capacitance": "capacitance_pf_cm",
                "agitation": "agitation_rpm", "air": "air_sccm",
                # the patient plant's
                "inr": "inr", "hb": "hb_g_dl", "haemoglobin": "hb_g_dl", "hemoglobin": "hb_g_dl", "pulse": "hr_bpm",
                "heart": "hr_bpm", "hr": "hr_bpm", "systolic": "sbp_mmhg", "pressure": "sbp_mmhg",
                "diastolic": "dbp_mmhg", "spo2": "spo2_pct", "saturation": "spo2_pct", "breathing": "rr_min",
                "respiratory": "rr_min", "rr": "rr_min", "fever": "temp_c"}
# what to check to confirm a cause, from either plant's knowledge base
CHECKS = {name: sig.checks for kb in (SIGNATURES, PATIENT_SIGNATURES) for name, sig in kb.items()}


def _hypotheses(finding: dict) -> list[dict]:
    return [h for h in finding.get("hypotheses", []) if h.get("match", 0) > 0]


def explain(finding: dict) -> list[str]:
    """Paragraph-sized chunks: what happened, the cause (or an abstention), alternatives, actions."""
    lead = ", ".join(finding.get("signals") or []) or "several signals"
    chunks = [f"Incident {finding['incident_id']} on {finding['reactor_id']} opened at {finding['start_ts']} "
              f"({finding['severity']}, {finding['alert_count']} alert(s)), driven by {lead}."]
    hyps = _hypotheses(finding)
    if finding.get("abstained") or not hyps:
        facts = "; ".join(finding.get("facts") or []) or "no signal left its normal band by enough"
        chunks.append(f"Insufficient evidence to name a cause. Strongest observations: {facts}.")
        chunks.append("Recommended: pull an off-line sample (glucose, VCD, viability) and review the trend.")
        return chunks
    top = hyps[0]
    chunks.append(f"Most likely cause: {top['fault']} (confidence {top['confidence']:.2f}): {top['root_cause']}.")
    if top["evidence"]:
        chunks.append("Evidence: " + "; ".join(top["evidence"]) + ".")
    if len(hyps) > 1:
        chunks.append("Less likely: " + ", ".join(f"{h['fault']} ({h['confidence']:.2f})" for h in hyps[1:3]) + ".")
    if finding.get("scorer"):
        view = finding["scorer"]
        classes = ", ".join(f"{c} {p:.2f} (± {sd:.2f})" for c, (p, sd) in view["classes"].items())
        chunks.append(f"The windowed scorer (a learned second opinion) reads this window as: {classes}; "
                      f"final titer estimate {view['titer_g_l']:.2f} ± {view['titer_g_l_spread']:.2f} g/L.")
    if finding.get("soft_sensors"):
        soft = finding["soft_sensors"]
        text = (f"Soft sensors at {soft['ts'][:16].replace('T', ' ')} UTC: VCD ≈ {soft['vcd_e6_per_ml_est']:.2f} e6/mL, "
                f"glucose ≈ {soft['glucose_g_l_est']:.2f} g/L")
        if "last_assay_sample_ts" in soft:
            text += (f" (last assay, sampled {soft['last_assay_sample_ts'][:16].replace('T', ' ')} UTC: VCD "
                     f"{soft['last_assay_vcd_e6_per_ml']:.2f}, glucose {soft['last_assay_glucose_g_l']:.2f})")
        chunks.append(text + ".")
    if finding.get("counterfactual"):  # agents.counterfactual: the run re-simulated without the named fault
        chunks.append(f"What-if: {finding['counterfactual']['sentence']} (the twin re-ran this run without it).")
    checks = CHECKS.get(top["fault"], ())
    chunks.append(f"Recommended actions: {top['action']}" + (f"; confirm with: {', '.join(checks)}." if checks
                                                             else "."))
    return chunks


def answer(question: str, findings: list[dict]) -> list[str]:
    """A chat answer from the same findings: the incidents that involve the signal asked about (it leads them, or
    their most likely cause's evidence cites it: an unlikely alternative citing it does not make it theirs),
    else all."""
    if not findings:
        return ["No incident was raised for this run: every signal stayed within its calibrated alarm limits."]
    words = set(re.findall(r"[a-z0-9]+", question.lower()))
    asked = {s for w, s in SIGNAL_WORDS.items() if w in words}
    relevant = [f for f in findings if asked & set(f.get("signals") or [])
                or any(asked & set(re.findall(r"[a-z0-9_]+", e)) for h in _hypotheses(f)[:1] for e in h["evidence"])]
    chunks = []
    if asked and not relevant:
        chunks.append(f"No incident involved {', '.join(sorted(asked))}; the incidents of this run were:")
    for f in relevant or findings:
        chunks += explain(f)
    return chunks


# the outcome model's drifted inputs in words (outcomes/drift.py): the name a clinician reads, and the kind of
# change a shift of it is
DRIFT_WORDS: dict[str, tuple[str, str]] = {
    "vkorc1_1639": ("VKORC1", "ancestry mix"), "cyp2c9": ("CYP2C9", "ancestry mix"),
    "cyp2d6": ("CYP2D6", "ancestry mix"), "ancestry": ("", "ancestry mix"),
    "amiodarone": ("amiodarone", "co-medication"), "enzyme_inducer": ("enzyme inducer", "co-medication"),
}


def _drift_shift(shift: dict) -> str:
    name, _ = DRIFT_WORDS.get(shift["feature"], (shift["feature"], "inputs"))
    if shift["level"] is None:
        return f"{name} mean {shift['before']:.2f} → {shift['after']:.2f} (model scale)"
    level = "" if shift["level"] == "True" else shift["level"]
    what = " ".join(w for w in (name, level) if w)
    return f"{what} share {shift['before']:.0%} → {shift['after']:.0%}".replace("%", " %")


def explain_drift(finding: dict) -> list[str]:
    """A drift incident's findings (`outcomes.drift.drift_incident`) in words: one sentence per kind of change,
    its shifts largest first, then what happens next.

    >>> print(explain_drift({"incident_id": "d1", "kind": "inputs_drift", "model_version": "m1",
    ...     "detected_ts": "2026-01-02T05:00:00+00:00", "shifts": [
    ...     {"feature": "vkorc1_1639", "level": "A/A", "before": 0.38, "after": 0.71},
    ...     {"feature": "amiodarone", "level": "True", "before": 0.0, "after": 0.3}]})[0])
    ancestry mix shifted: VKORC1 A/A share 38 % → 71 %. co-medication shifted: amiodarone share 0 % → 30 %.
    """
    if finding["kind"] == "drift_cleared":  # outcomes.drift.DriftLifecycle's resolve
        return [f"The drift of model {finding['model_version']} cleared: its monitor found none on its last "
                "checks, so the incident is resolved."]
    if finding["kind"] == "outcomes_drift":
        s = finding["performance"]
        text = (f"The outcome model's {s['head']} predictions drifted over the last {s['window']} resolved: "
                f"AUROC {s['reference_auroc']:.2f} → {s['auroc']:.2f}, predicted {s['mean_probability']:.0%} "
                f"against {s['observed_rate']:.0%} observed.").replace("%", " %")
    else:
        kinds: dict[str, list[str]] = {}
        for shift in finding["shifts"]:
            kind = DRIFT_WORDS.get(shift["feature"], ("", "inputs"))[1]
            kinds.setdefault(kind, []).append(_drift_shift(shift))
        text = " ".join(f"{kind} shifted: {', '.join(parts)}." for kind, parts in kinds.items())
    return [text, f"Model {finding['model_version']} was trained before this change: a challenger is trained "
                  "on the recent data and evaluated in shadow; it replaces the champion only if it beats it."]
