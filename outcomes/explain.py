"""Why the outcome model gives a risk: integrated gradients (Sundararajan et al. 2017) of the explained head's
logit over every input (each hour of each hourly series, each static covariate, each genotype's embedding),
in `IG_STEPS` steps with dropout off, from a baseline patient: every scaled input at its population centre (0),
no doses, the reference genotypes (`REFERENCE_GENOTYPES`: CYP2C9 *1/*1, VKORC1 G/G, CYP2D6 NM, white), and the
same hours of the day (a clock has no neutral value: the hour's sin/cos stay as they are, so time of day is
never "a reason"). A patient with the reference genotypes thus owes none of the risk to them. The attributions are summed per feature (`FEATURE_OF`: the INR's
hourly values and its summary make one feature, "inr"), shared out by absolute value, and for a series given
the span of hours that holds most of it. The sentence is written as the agents' phrasing writes findings
(`agents/phrasing.py`, which outcomes may not import): the facts, their numbers, no hedging words. A risk the
model serves by logistic regression (`outcomes.linear_head`) is explained by that regression's exact
attributions from the same baseline patient (`served_attributions`), not by the network it does not use.

>>> round(_span(np.array([0.0, 0.0, 1.0, 3.0, 0.0]))[0]), round(_span(np.array([0.0, 0.0, 1.0, 3.0, 0.0]))[1])
(1, 3)
>>> _join(["a", "b", "c"])
'a, b and c'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from outcomes.contract import CLASS_HEADS, Attribution
from outcomes.features import CATEGORICAL, SERIES, STATIC, WINDOW_H, Encoded
from outcomes.linear_head import LinearHead
from outcomes.twin_features import TWIN_STATIC

IG_STEPS = 8
REFERENCE_GENOTYPES = {"cyp2c9": "*1/*1", "vkorc1_1639": "G/G", "cyp2d6": "NM", "ancestry": "white"}
CLOCK = [SERIES.index("hour_sin"), SERIES.index("hour_cos")]
SPAN_SHARE = 0.8  # a series' span: the newest hours holding this share of its attribution
SENTENCE_SHARE = 0.6  # name features until they make this share (at most three)
FEATURE_OF: dict[str, str] = {
    **{s: s for s in SERIES}, "inr_age_d": "inr", "inr_reported": "inr", "hb_age_d": "hb_g_dl",
    "warfarin_mg": "warfarin_dose", "metoprolol_mg": "metoprolol_dose", "amiodarone_mg": "amiodarone",
    "hour_sin": "time_of_day", "hour_cos": "time_of_day", "vitals_missing": "missing_vitals",
    "age_years": "age", "male": "sex", "weight_kg": "body_size", "height_cm": "body_size",
    "days_on_amiodarone": "amiodarone", "days_on_warfarin": "time_on_warfarin", "weekly_warfarin_mg": "warfarin_dose",
    "inr_last": "inr", "inr_prev": "inr", "inr_prev2": "inr", "inr_last_age_d": "inr", "inr_slope_per_d": "inr",
    "hr_mean_24h": "hr_bpm", "hr_min_24h": "hr_bpm", "hr_max_24h": "hr_bpm", "sbp_mean_24h": "sbp_mmhg",
    "sbp_min_24h": "sbp_mmhg", "inr_trend_7d_per_d": "inr",
    **{name: "twin_forecast" for name in TWIN_STATIC if name.startswith("twin_")},
    "vkorc1_1639": "vkorc1",
}
GENE_WORDS = {"cyp2c9": "CYP2C9", "vkorc1": "VKORC1", "cyp2d6": "CYP2D6", "ancestry": "ancestry"}
HEAD_WORDS: dict[str, str] = {"inr_ge4_7d": "INR ≥ 4 within 7 days", "major_bleed_14d": "a major bleed within 14 days",
                              "bradycardia_24h": "bradycardia within 24 h"}
WORDS: dict[str, str] = {"inr": "INR", "hb_g_dl": "haemoglobin", "hr_bpm": "heart rate", "sbp_mmhg": "systolic pressure",
                         "dbp_mmhg": "diastolic pressure", "spo2_pct": "SpO2", "rr_min": "respiratory rate",
                         "temp_c": "temperature", "warfarin_dose": "warfarin doses", "metoprolol_dose": "metoprolol doses",
                         "amiodarone": "amiodarone", "time_of_day": "time of day", "missing_vitals": "missing vitals",
                         "sex": "sex", "body_size": "body size", "enzyme_inducer": "enzyme inducer",
                         "time_on_warfarin": "time on warfarin", "ancestry": "ancestry",
                         "twin_forecast": "the twin's INR forecast"}


def baseline(x: Encoded) -> Encoded:
    """The baseline patient of each sample: inputs at their centres (0), the reference genotypes, its clock."""
    series = np.zeros_like(x.series)
    series[:, :, CLOCK] = x.series[:, :, CLOCK]
    reference = [values.index(REFERENCE_GENOTYPES[key]) for key, values in CATEGORICAL.items()]
    return Encoded(series, np.zeros_like(x.static), np.tile(np.array(reference, x.categorical.dtype), (len(x), 1)))


def integrated_gradients(net: nn.Module, x: Encoded, head_index: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series [n, W, S], static [n, F], per categorical [n, C]) attributions of each sample's head logit
    (`net`: an `outcomes.model.OutcomeNet`)."""
    net.eval()
    series, static, cat = x.tensors()
    s_base, _, reference = baseline(x).tensors()
    n = len(series)
    with torch.no_grad():
        embedded, e_base = net.embed(cat), net.embed(reference)
    alphas = (torch.arange(IG_STEPS, dtype=torch.float32) + 0.5) / IG_STEPS  # midpoint rule
    a_s = alphas.repeat_interleave(n)

    def path(value: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        reps = (IG_STEPS,) + (1,) * (value.dim() - 1)
        a = a_s.reshape(-1, *([1] * (value.dim() - 1)))
        return (base.repeat(reps) + a * (value - base).repeat(reps)).requires_grad_(True)

    s_path, st_path, e_path = path(series, s_base), path(static, torch.zeros_like(static)), path(embedded, e_base)
    out = net.forward_embedded(s_path, st_path, e_path)
    pick = torch.as_tensor(np.tile(head_index, IG_STEPS))
    out.gather(1, pick[:, None]).sum().backward()

    def mean_grad(g: torch.Tensor) -> torch.Tensor:
        return g.reshape(IG_STEPS, n, *g.shape[1:]).mean(dim=0)

    attr_s = ((series - s_base) * mean_grad(s_path.grad)).numpy()
    attr_st = (static * mean_grad(st_path.grad)).numpy()
    attr_e = ((embedded - e_base) * mean_grad(e_path.grad)).reshape(n, len(CATEGORICAL), -1).sum(-1).numpy()
    return attr_s, attr_st, attr_e


def _span(per_hour: np.ndarray) -> tuple[float, float]:
    """(newest, oldest) hours ago holding SPAN_SHARE of a series' absolute attribution (index -1 = newest)."""
    mass = np.abs(per_hour[::-1])  # newest first
    total = mass.sum()
    if total <= 0:
        return 0.0, float(len(per_hour))
    cum = np.cumsum(mass) / total
    first = int(np.argmax(mass > 0))
    last = int(np.searchsorted(cum, SPAN_SHARE)) + 1
    return float(first), float(min(last, len(per_hour)))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _feature_words(feature: str, span: tuple[float, float] | None, codes: np.ndarray, static: np.ndarray) -> str:
    if feature in GENE_WORDS:
        key = "vkorc1_1639" if feature == "vkorc1" else feature
        return f"{GENE_WORDS[feature]} {CATEGORICAL[key][int(codes[list(CATEGORICAL).index(key)])]}"
    if feature == "age":
        return f"age {static[STATIC.index('age_years')] * 11.0 + 68.0:.0f}"
    words = WORDS.get(feature, feature)
    if span is None:
        return words
    oldest_h = span[1]
    over = f"{oldest_h / 24.0:.0f} days" if oldest_h >= 36 else f"{oldest_h:.0f} h"
    return f"{words} {'trend ' if feature == 'inr' else ''}over {over}"


def served_attributions(net: nn.Module, x: Encoded, heads: Sequence[str], linear: Mapping[str, LinearHead]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `integrated_gradients`, of the head named in `heads` as served: a head in `linear` (served by logistic
    regression) by its exact linear attributions from the same baseline patient."""
    out = (np.zeros(x.series.shape), np.zeros(x.static.shape), np.zeros(x.categorical.shape))
    by_net = np.array([h not in linear for h in heads], bool)
    parts = [(np.flatnonzero(by_net), None)] + [(np.flatnonzero([h == name for h in heads]), head)
                                                   for name, head in linear.items()]
    for rows, head in parts:
        if not len(rows):
            continue
        xs = x.take(rows)
        found = (integrated_gradients(net, xs, np.array([CLASS_HEADS.index(heads[j]) for j in rows]))
                 if head is None else head.attributions(xs, baseline(xs)))
        for whole, part in zip(out, found, strict=True):
            whole[rows] = part
    return out


def explain_batch(net: nn.Module, x: Encoded, heads: Sequence[str], estimates: Sequence[float],
                  linear: Mapping[str, LinearHead] | None = None) -> list[tuple[tuple[Attribution, ...], str]]:
    """Per sample: the attributions of the head named in `heads` (shares, largest first) and its sentence
    (`linear`: the heads served by logistic regression, `outcomes.linear_head`)."""
    attr_s, attr_st, attr_e = served_attributions(net, x, heads, linear or {})
    out = []
    for j, head in enumerate(heads):
        per_feature: dict[str, float] = {}
        hourly: dict[str, np.ndarray] = {}
        for k, name in enumerate(SERIES):
            f = FEATURE_OF[name]
            per_feature[f] = per_feature.get(f, 0.0) + float(np.abs(attr_s[j, :, k]).sum())
            hourly[f] = hourly.get(f, np.zeros(WINDOW_H)) + np.abs(attr_s[j, :, k])
        for k, name in enumerate(STATIC[:attr_st.shape[1]]):  # an older model's inputs: STATIC_BASE
            f = FEATURE_OF.get(name, name)
            per_feature[f] = per_feature.get(f, 0.0) + abs(float(attr_st[j, k]))
        for k, name in enumerate(CATEGORICAL):
            f = FEATURE_OF.get(name, name)
            per_feature[f] = per_feature.get(f, 0.0) + abs(float(attr_e[j, k]))
        total = sum(per_feature.values()) or 1.0
        ranked = sorted(per_feature.items(), key=lambda kv: -kv[1])
        attributions = tuple(Attribution(f, round(v / total, 3), _span(hourly[f]) if f in hourly else None)
                             for f, v in ranked if v > 0)
        named, share = [], 0.0
        for a in attributions[:3]:
            named.append(_feature_words(a.feature, a.hours_ago, x.categorical[j], x.static[j]))
            share += a.share
            if share >= SENTENCE_SHARE:
                break
        verb = "drives" if len(named) == 1 else "drive"
        sentence = (f"{_join(named)} {verb} {share * 100:.0f} % of this risk of {HEAD_WORDS[head]} "
                    f"({estimates[j] * 100:.0f} %).") if named else f"No input moves the risk of {HEAD_WORDS[head]}."
        out.append((attributions, sentence[0].upper() + sentence[1:]))
    return out
