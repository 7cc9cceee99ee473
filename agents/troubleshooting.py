"""Troubleshooting: rank the fault archetypes for an incident from its evidence, or abstain.

The ranking is code, not a language model. Each signature scores how well the evidence matches it, in [0, 1]:
for a process fault, the weighted share of its expected moves that happened (a move counts fully at
|z| >= `Z_FULL`, the golden batch's robust z), minus half the weight of moves in the opposite direction; for a
sensor fault, how long the reading was frozen or missing, or how alone and how slowly one reading wandered. Confidence is the
match times its share of all matches. Below `ABSTAIN_BELOW` the agent says "insufficient evidence". The
deviations are against the run's own recipe (`agents.evidence`), so the signatures are recipe-relative (DO against
the run's DO setpoint, a feed against its own schedule and vessel size), and how far
a feed must deviate depends on the feed mode; the operator's recipe changes near the incident are cited with
every hypothesis and lead the facts.

>>> from datetime import UTC, datetime
>>> from agents.evidence import Deviation, Evidence
>>> t = datetime(2026, 1, 5, 12, tzinfo=UTC)
>>> ev = Evidence("run", "r1", t, t)
>>> ev.deviations = {"temp_c": Deviation("temp_c", 60.0, t, 36.2, 33.0),
...                  "our_mmol_l_h": Deviation("our_mmol_l_h", 4.0, t, 9.1, 7.5)}
>>> diagnosis = rank(ev)
>>> diagnosis.hypotheses[0].fault, diagnosis.abstained
('temperature_spike', False)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.evidence import Evidence, beyond
from agents.knowledge import COUPLED, SIGNATURES, Signature

Z_FULL = 8.0
# Fed by boluses, the feed counts in full at a tenth of the pump's rate (z 200 against the shipped reference):
# a bolus a few minutes off the golden timing reads ~1 % of it; a real overfeed a third or more, a missed bolus
# all of it. Fed continuously, the feed is steady: a stopped pump reads z ~ -10 to -50.
FEED_FULL_OF_PUMP_RATE = 0.1
Z_FULL_BOLUS_FEED = 200.0  # evidence that does not say its pump's rate: the shipped reference's
Z_FULL_CONTINUOUS_FEED = Z_FULL
ABSTAIN_BELOW = 0.3
FROZEN_FULL_MIN = 30.0
MISSING_FULL_MIN = 10.0
DRIFT_FULL_MIN = 12 * 60.0
MENTION_ABOVE = 0.05  # a hypothesis matching less than this is not worth an operator's attention


@dataclass
class Hypothesis:
    fault: str
    confidence: float
    match: float
    evidence: list[str]
    root_cause: str
    action: str

    def as_dict(self) -> dict:
        return {"fault": self.fault, "confidence": round(self.confidence, 3), "match": round(self.match, 3),
                "evidence": self.evidence, "root_cause": self.root_cause, "action": self.action}


@dataclass
class Diagnosis:
    hypotheses: list[Hypothesis] = field(default_factory=list)
    abstained: bool = True
    facts: list[str] = field(default_factory=list)  # the strongest observations, whatever the ranking

    def ranked(self, k: int = 3) -> list[Hypothesis]:
        """The best `k` hypotheses worth mentioning."""
        return [h for h in self.hypotheses[:k] if h.match >= MENTION_ABOVE]

    @property
    def top(self) -> Hypothesis | None:
        return None if self.abstained or not self.hypotheses else self.hypotheses[0]

    def as_dict(self) -> dict:
        return {"abstained": self.abstained, "facts": self.facts,
                "hypotheses": [h.as_dict() for h in self.hypotheses]}


def _strength(z: float, signal: str = "", ev: Evidence | None = None) -> float:
    full = Z_FULL
    if signal == "feed_ml_per_tick" and ev is not None:
        rate_z = ev.pump_rate_z.get(signal)
        full = Z_FULL_CONTINUOUS_FEED if ev.feed_mode == "continuous" else \
            Z_FULL_BOLUS_FEED if rate_z is None else FEED_FULL_OF_PUMP_RATE * rate_z
    return float(np.clip(z / full, 0.0, 1.0))


def _process_match(sig: Signature, ev: Evidence) -> tuple[float, list[str]]:
    total = sum(abs(w) for w in sig.expect.values())
    score, cited = 0.0, []
    for signal, w in sig.expect.items():
        z = ev.move(signal) * np.sign(w)
        score += abs(w) * (_strength(z, signal, ev) - 0.5 * _strength(-z, signal, ev))
        if _strength(z, signal, ev) >= 0.25:
            cited.append(ev.deviations[signal].sentence())
    return max(score / total, 0.0), cited


def _sensor_match(sig: Signature, ev: Evidence) -> tuple[float, list[str]]:
    if sig.sensor in ("frozen", "missing"):
        full = FROZEN_FULL_MIN if sig.sensor == "frozen" else MISSING_FULL_MIN
        runs = [r for r in ev.sensor_runs if r.kind == sig.sensor]
        if not runs:
            return 0.0, []
        worst = max(runs, key=lambda r: r.minutes)
        return float(np.clip(worst.minutes / full, 0.0, 1.0)), [worst.sentence()]
    # "lone": one watched reading far from normal while the signals coupled to it stay normal
    best, cited = 0.0, []
    for signal, coupled in COUPLED.items():
        own = _strength(abs(ev.z(signal)))
        echo = max((_strength(abs(_echo(ev, c, signal, drag))) for c, drag in coupled.items()), default=0.0)
        # a probe drifts over days: a deviation that built up within hours is the process, not the probe
        slow = float(np.clip(ev.deviations[signal].onset_min / DRIFT_FULL_MIN, 0.0, 1.0)) if signal in ev.deviations else 0.0
        match = own * (1.0 - echo) * slow * 0.8  # never as sure as a direct observation
        if match > best and signal in ev.deviations:
            best, cited = match, [ev.deviations[signal].sentence() + ", while "
                                  + ", ".join(c for c in coupled) + " stayed near normal"]
    return best, cited


def _echo(ev: Evidence, signal: str, reading: str, drag: int) -> float:
    """`signal`'s deviation as an echo of `reading`'s (`drag`: the way the process would move it with the
    reading). A controller answers a real change the way `drag` says, often before the reading moves (a cascade
    holds DO until it saturates): that move is an echo whenever it came. One the other way, already there when
    the reading left normal after an earlier incident (`Evidence.onset_z`), is that fault's aftermath: only what
    the signal moved since counts."""
    before = ev.onset_z.get(reading, {}).get(signal, 0.0)
    against = before * drag * np.sign(ev.z(reading)) < 0
    return beyond(ev.z(signal), before) if against else ev.z(signal)


def rank(ev: Evidence) -> Diagnosis:
    """Hypotheses over every archetype, best first; abstains when none matches well enough."""
    matches: list[tuple[str, float, list[str]]] = []
    for fault, sig in SIGNATURES.items():
        match, cited = (_sensor_match if sig.sensor else _process_match)(sig, ev)
        matches.append((fault, match, cited))
    facts = [d.sentence() for d in ev.strongest(3) if abs(d.z) >= 3.0] + [r.sentence() for r in ev.sensor_runs
                                                                           if r.minutes >= 10]
    # the operator's own recipe changes come first: what an engineer asks before blaming the process
    changes = [f"operator change: {c}" for c in ev.operator_changes]
    diagnosis = diagnosis_of(matches, SIGNATURES, changes + facts)
    for h in diagnosis.ranked(3):
        h.evidence += changes
    return diagnosis


def diagnosis_of(matches: list[tuple[str, float, list[str]]], signatures: Mapping[str, Any],
                 facts: list[str]) -> Diagnosis:
    """Hypotheses from (cause, match, cited evidence) triples, best first, with root causes and actions from
    `signatures`; confidence is the match times its share of all matches; abstains below `ABSTAIN_BELOW`."""
    total = sum(m for _, m, _ in matches) or 1.0
    hyps = [Hypothesis(f, m * m / total, m, cited, signatures[f].root_cause, signatures[f].action)
            for f, m, cited in matches]
    hyps.sort(key=lambda h: (-h.match, h.fault))
    return Diagnosis(hyps, not hyps or hyps[0].match < ABSTAIN_BELOW, facts)
