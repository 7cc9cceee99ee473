"""Retraining: when drift is found (or the schedule says so), a challenger is trained on recent data, scored in
shadow beside the champion on the same window of live traffic whose outcomes have resolved (its answers are
logged, never served), and promoted only when it beats the champion by the rule's margin there. Every step goes
through the registry (`outcomes/registry.py`), so it is audited and `biopilot models rollback` undoes a
promotion in one command.

The challenger starts from the champion's weights (a warm start) by default: the recent data after a shift is
small, and what the champion learnt about the population before it still holds for most patients.

>>> rule = PromotionRule(margin=0.02)
>>> rule.decide({"heads": {"inr_ge4_7d": {"auroc": 0.70}}}, {"heads": {"inr_ge4_7d": {"auroc": 0.75}}}).promote
True
>>> rule.decide({"heads": {"inr_ge4_7d": {"auroc": 0.70}}}, {"heads": {"inr_ge4_7d": {"auroc": 0.71}}}).reason
'challenger AUROC 0.710 vs champion 0.700 on the same window: +0.010 < margin 0.020, kept as challenger'
>>> rule.decide({"heads": {"inr_ge4_7d": {"auroc": 0.70, "ece": 0.02}}},
...             {"heads": {"inr_ge4_7d": {"auroc": 0.75, "ece": 0.09}}}).promote
False
>>> RetrainPolicy(every_h=168.0).due(now_h=200.0, last_trained_h=100.0, drift=False), \\
...     RetrainPolicy(every_h=168.0).due(now_h=300.0, last_trained_h=100.0, drift=False)
(None, 'schedule')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from outcomes import registry

if TYPE_CHECKING:
    from outcomes.dataset import OutcomeDataset
    from outcomes.model import OutcomeModel
    from outcomes.train import TrainConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    champion_auroc: float
    challenger_auroc: float
    reason: str


@dataclass(frozen=True)
class PromotionRule:
    """Promote when the challenger's AUROC (the mean over `heads` with an AUROC in both) beats the champion's
    by at least `margin` on the same window, and not at the cost of calibration: its ECE there at most
    `max_ece_increase` above the champion's (a model that ranks better but whose probabilities are off would
    fire the alerts at the wrong risks)."""

    margin: float = 0.01
    # the warfarin head: what a shift in genotypes or co-medication moves (the bleed head has a few dozen events
    # in a day's window, too few for a stable AUROC; bradycardia is metoprolol's)
    heads: tuple[str, ...] = ("inr_ge4_7d",)
    max_ece_increase: float = 0.02

    def mean(self, metrics: dict, key: str, heads: tuple[str, ...] | None = None) -> float:
        values = [metrics["heads"][h].get(key) for h in heads or self.heads if h in metrics["heads"]]
        values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    def decide(self, champion: dict, challenger: dict) -> Decision:
        both = tuple(h for h in self.heads if not math.isnan(self.mean(champion, "auroc", (h,)))
                     and not math.isnan(self.mean(challenger, "auroc", (h,))))
        a, b = self.mean(champion, "auroc", both), self.mean(challenger, "auroc", both)
        if not both:
            return Decision(False, a, b, "no head with outcomes of both kinds in the window: nothing to compare")
        gain = b - a
        text = f"challenger AUROC {b:.3f} vs champion {a:.3f} on the same window: {gain:+.3f}"
        if gain < self.margin:
            return Decision(False, a, b, f"{text} < margin {self.margin:.3f}, kept as challenger")
        ece_a, ece_b = self.mean(champion, "ece", both), self.mean(challenger, "ece", both)
        if ece_b > ece_a + self.max_ece_increase:  # NaN (no ECE) compares False: not held back
            return Decision(False, a, b, f"{text}, but ECE {ece_b:.3f} vs {ece_a:.3f} (more than "
                                         f"+{self.max_ece_increase:.3f}), kept as challenger")
        return Decision(True, a, b, f"{text} >= margin {self.margin:.3f}, promoted")


@dataclass(frozen=True)
class RetrainPolicy:
    """When to train a challenger: at once on drift, else every `every_h` hours since the last one."""

    every_h: float = 24.0 * 7

    def due(self, now_h: float, last_trained_h: float, drift: bool) -> str | None:
        if drift:
            return "drift"
        return "schedule" if now_h - last_trained_h >= self.every_h else None


@dataclass(frozen=True)
class ShadowResult:
    champion: dict  # outcomes.train.evaluate of each on the window
    challenger: dict
    decision: Decision


def shadow_evaluate(champion: OutcomeModel, challenger: OutcomeModel, window: OutcomeDataset,
                    rule: PromotionRule) -> ShadowResult:
    """Both models on the same resolved window of live traffic; the rule decides."""
    from outcomes.train import evaluate

    a, b = evaluate(champion, window), evaluate(challenger, window)
    return ShadowResult(a, b, rule.decide(a, b))


@dataclass(frozen=True)
class RetrainResult:
    trigger: str
    champion_version: str
    challenger_version: str
    shadow: ShadowResult
    promoted: bool
    registered: list[str] = field(default_factory=list)  # versions this call added to the registry


def ensure_champion(lake: str | Path, actor: str) -> registry.ModelEntry:
    """The registry's champion; while there is none, the shipped checkpoint is registered and promoted, so that
    a later promotion can be rolled back to it."""
    from outcomes.model import load_model

    entry = registry.champion(lake)
    if entry is not None:
        return entry
    shipped = load_model()
    known = {e.version for e in registry.entries(lake)}
    if shipped.version not in known:
        registry.register(lake, shipped, data_snapshot="the shipped checkpoint (outcomes/outcome_model.pt)",
                          metrics=shipped.metrics, actor=actor, alias=None)
    return registry.promote(lake, shipped.version, actor=actor, role="service",
                           reason="the shipped checkpoint enters the registry as the first champion")


def retrain(lake: str | Path, recent: OutcomeDataset, window: OutcomeDataset, *, trigger: str,
            data_snapshot: str, rule: PromotionRule = PromotionRule(), config: TrainConfig | None = None,
            warm_start: bool = True, seed: int = 0, progress: bool = False) -> RetrainResult:
    """Train a challenger on `recent` (three quarters to fit, a quarter, other patients, to calibrate), register
    it, evaluate it in shadow beside the champion on `window` (resolved live traffic, patients not in
    `recent`) and promote it if `rule` says so."""
    from outcomes.train import TrainConfig, train_outcome

    actor = f"retrain:{trigger}"
    before = {e.version for e in registry.entries(lake)}
    champion_entry = ensure_champion(lake, actor)
    champion = registry.load(lake, champion_entry.version)
    fit, calibration = recent.split((0.75, 0.25), seed=seed)
    config = config or TrainConfig()
    if champion.linear_heads and not config.choose_heads:
        # the champion serves regression on some risk, so it was trained choosing: the challenger chooses too
        config = replace(config, choose_heads=True)
    challenger = train_outcome(fit, calibration, config=config, seed=seed, progress=progress,
                               init=champion.net if warm_start else None)
    shadow = shadow_evaluate(champion, challenger, window, rule)
    # its metrics: its own on the shadow window, with the champion's there beside them
    registry.register(lake, challenger, data_snapshot=data_snapshot, actor=actor,
                      metrics=shadow.challenger | {"champion_on_shadow": shadow.champion, "trigger": trigger,
                                                   "warm_start_from": champion.version if warm_start else None})
    if shadow.decision.promote:
        registry.promote(lake, challenger.version, actor=actor, reason=shadow.decision.reason, role="service")
    added = [e.version for e in registry.entries(lake) if e.version not in before]
    return RetrainResult(trigger, champion.version, challenger.version, shadow, shadow.decision.promote, added)
