"""The Experiment Designer agent: a goal in words -> the next experiments, the fitted model in plain words, and
what-if answers on a stored run (docs/KNOWLEDGE-GRAPH.md, "The Experiment Designer").

A goal ("maximise titer with lactate below 3 g/L, varying feed and the temperature shift") is parsed into a
study (`design.study`): the goal response and its direction, the constraints, the factors named (none named: the
feed, the shift temperature and the seeding density, over the ranges of `design/studies/titer.toml`). The agent
proposes a design (`design.designs`: face-centred composite up to 4 factors, else a Latin hypercube), runs it on
the twin (`design.twin`) and fits the response surfaces and the constrained optimum (`design.analysis`). A
what-if question on a run goes to `design.whatif`. Every number in an answer comes from those objects; `facts`
holds them for the tests and for the language model, which may only rephrase them.

>>> g = parse_goal("maximise titer with lactate below 3 g/L, varying feed and temperature shift")
>>> g.goal, g.maximize, g.constraints, [f.split("=")[0] for f in g.factors]
('final_titer', True, ['peak_lactate<=3'], ['feed.percent_of_volume', 'process.temp_shift_c'])
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.llm import Backend
from design.analysis import Analysis, analyse
from design.designs import RunSheet, propose
from design.study import Study, build_study
from design.twin import run_settings
from design.whatif import Change, WhatIf, load_run, what_if

# what a goal may call a response
RESPONSES = {"titer": "final_titer", "titre": "final_titer", "hcp": "final_hcp", "lactate": "peak_lactate",
             "ammonia": "peak_ammonia", "osmolality": "peak_osmolality", "ivcd": "ivcd", "vcd": "peak_vcd",
             "cell density": "peak_vcd", "viability": "final_viability"}
# what a goal may call a factor, and the range the agent proposes for it
FACTORS = {"feed start": "feed.start_day=2:4", "feed mode": "feed.mode=bolus,continuous",
           "continuous": "feed.mode=bolus,continuous", "feed": "feed.percent_of_volume=2.5:6.5",
           "shift day": "process.temp_shift_day=4:8", "temperature": "process.temp_shift_c=31:36",
           "seeding": "process.seed_vcd_e6_per_ml=0.3:1.0", "seed": "process.seed_vcd_e6_per_ml=0.3:1.0", "do setpoint": "process.do_setpoint_pct=30:60",
           "dissolved oxygen": "process.do_setpoint_pct=30:60", "ph": "process.ph_setpoint=6.8:7.2"}
DEFAULT_FACTORS = ("feed.percent_of_volume=2.5:6.5", "process.temp_shift_c=31:36",
                   "process.seed_vcd_e6_per_ml=0.3:1.0")
KIND_WORDS = {"ccf": "face-centred central composite", "lhs": "Latin hypercube"}
POINT_WORDS = {"factorial": "corner runs (every factor at an end of its range)",
               "axial": "axial runs (one factor at an end, the others in the middle)",
               "centre": "centre runs (every factor in the middle: they measure run-to-run noise and curvature)",
               "space-filling": "space-filling runs"}
LESS = r"(?:below|under|less than|at most|no more than|<=|<|≤)"
MORE = r"(?:above|over|more than|at least|>=|>|≥)"
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
# what a what-if question may set, by its words: the controls and settings design.whatif changes mid-run
SETTINGS = {"do setpoint": "do_setpoint_pct", "ph setpoint": "ph_setpoint", "shift temperature": "temp_shift_c",
            "temperature shift": "temp_shift_c", "feed": "feed.percent_of_volume"}


@dataclass(frozen=True)
class Goal:
    goal: str
    maximize: bool
    constraints: list[str]
    factors: list[str]


def _responses_in(text: str) -> list[tuple[int, str]]:
    return sorted((m.start(), name) for word, name in RESPONSES.items() for m in re.finditer(rf"\b{word}\b", text))


def parse_goal(text: str) -> Goal:
    """The goal response (the first one named after maximise/minimise), constraints ("lactate below 3") and the
    factors named (else the defaults)."""
    low = text.lower()
    named = _responses_in(low)
    constraints, bound = [], set()
    for m in re.finditer(rf"({LESS}|{MORE})\s*{NUMBER}", low):
        before = [(at, n) for at, n in named if at < m.start()]
        if before:  # the comparison binds the response named just before it
            op = "<=" if re.fullmatch(LESS, m[1]) else ">="
            constraints.append(f"{before[-1][1]}{op}{m[2]}")
            bound.add(before[-1][0])
    direction = re.search(r"\b(maximi[sz]|increase|raise|more|minimi[sz]|reduce|lower|decrease)", low)
    maximize = not (direction and direction[1].startswith(("minimi", "reduce", "lower", "decrease")))
    free = [n for at, n in named if at not in bound and (direction is None or at > direction.start())]
    goal = free[0] if free else "final_titer"
    found, rest = [], low
    for word, spec in FACTORS.items():  # longer phrases first, so "feed start" is not also "feed"
        for m in re.finditer(rf"\b{word}\b", rest):
            if spec not in (f for _, f in found):
                found.append((m.start(), spec))
        rest = re.sub(rf"\b{word}\b", lambda m: " " * len(m[0]), rest)  # same length: positions hold
    factors = [spec for _, spec in sorted(found)]
    return Goal(goal, maximize, constraints, factors or list(DEFAULT_FACTORS))


def is_design_goal(text: str) -> bool:
    low = text.lower()
    return bool(re.search(r"\b(maximi[sz]|minimi[sz]|design\b|experiments?\b|doe\b)", low)) and bool(_responses_in(low))


@dataclass
class Proposal:
    goal: Goal
    study: Study
    sheet: RunSheet
    analysis: Analysis | None = None
    facts: dict = field(default_factory=dict)


def propose_for(goal: Goal, seed: int = 0, run_on_twin: bool = True) -> Proposal:
    """The design for the goal, run on the twin and analysed (`run_on_twin`)."""
    study = build_study("designer", goal.factors, [goal.goal], goal.constraints, goal.goal, goal.maximize)
    kind = "ccf" if 2 <= len(study.factors) <= 4 else "lhs"
    sheet = propose(study, kind, centre_points=3 if kind == "ccf" else 0, seed=seed)
    analysis = None
    if run_on_twin:
        analysis = analyse(sheet, run_settings(study, sheet.settings, sheet.seeds), seed=seed)
    proposal = Proposal(goal, study, sheet, analysis)
    proposal.facts = design_facts(proposal)
    return proposal


def _ends(f: object) -> str:
    return f"{f.levels[0]} or {f.levels[1]}" if f.categorical else f"{f.low:g} to {f.high:g}"


def design_facts(p: Proposal) -> dict:
    """The numbers the answer cites: the design's, and the fitted model's and optimum's once run."""
    counts = {t: p.sheet.point_type.count(t) for t in dict.fromkeys(p.sheet.point_type)}
    facts: dict = {"design": p.sheet.kind, "runs": len(p.sheet.coded), "points": counts, "goal": p.study.goal,
                   "maximize": p.study.maximize, "constraints": [str(c) for c in p.study.constraints],
                   "factors": {f.name: _ends(f) for f in p.study.factors}}
    if p.analysis is not None:
        model = p.analysis.models[p.study.goal]
        facts["model"] = {"order": model.order, "r2": model.r2, "q2": model.q2, "rmse": model.rmse,
                          "effects": [{"term": t, "effect": e, "p": pv} for t, e, pv in
                                      zip(model.effects["term"], model.effects["effect"], model.effects["p"],
                                          strict=True)][:4]}
        opt = p.analysis.optimum
        facts["optimum"] = {"settings": opt.settings, "predicted": opt.predicted, "feasible": opt.feasible,
                            "interval": p.analysis.goal_interval, "confirmation_runs": len(p.analysis.confirmation.coded)}
    return facts


def _num(value: float) -> str:
    return f"{value:.3g}"


def _term_words(term: str) -> str:
    """A model term as a scientist writes it: `a:b` -> `a × b`, `I(a ** 2)` -> `a²`."""
    if term.startswith("I("):
        return term[2:].split(" ", 1)[0] + "²"
    return term.replace(":", " × ")


def explain(p: Proposal) -> list[str]:
    """The design and the fitted model in plain words (the offline text), from `p.facts`."""
    f = p.facts
    aim = f"{'maximise' if f['maximize'] else 'minimise'} {f['goal']}"
    if f["constraints"]:
        aim += " with " + " and ".join(f["constraints"])
    factors = "; ".join(f"{name} from {ends}" for name, ends in f["factors"].items())
    chunks = [f"To {aim}, I propose a {KIND_WORDS.get(f['design'], f['design'])} design of {f['runs']} runs on "
              f"{len(f['factors'])} factors: {factors}.",
              "It has " + ", ".join(f"{n} {POINT_WORDS.get(t, t)}" for t, n in f["points"].items())
              + "; the run order is randomised and each run has its own twin seed (the run sheet)."]
    if "model" not in f:
        return chunks
    m, opt = f["model"], f["optimum"]
    quality = "predicts new runs well" if m["q2"] >= 0.7 else "predicts new runs only roughly"
    chunks.append(f"Run on the twin, the {f['runs']} runs fit a {m['order']} model of {f['goal']}: R² {m['r2']:.2f}, "
                  f"Q² {m['q2']:.2f} (it {quality}), residual spread {_num(m['rmse'])}.")
    effects = [f"{_term_words(e['term'])} {e['effect']:+.3g} (p {e['p']:.2g})" for e in m["effects"]]
    chunks.append(f"Largest effects on {f['goal']} (from the low to the high end of a range; × an interaction, ² "
                  "the curvature): "
                  + ", ".join(effects) + ".")
    settings = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in opt["settings"].items())
    predicted = ", ".join(f"{k} {v:.3g}" for k, v in opt["predicted"].items())
    lo, hi = opt["interval"]["obs_ci_lower"], opt["interval"]["obs_ci_upper"]
    held = "every constraint holds there" if opt["feasible"] else "no setting meets every constraint"
    chunks.append(f"Best settings within the ranges: {settings}; predicted {predicted} ({held}); one run there "
                  f"should give {f['goal']} between {lo:.3g} and {hi:.3g} (95 % prediction interval). Next: "
                  f"{opt['confirmation_runs']} confirmation runs at these settings.")
    return chunks


def design_answer(question: str, backend: Backend, seed: int = 0) -> Iterator[str]:
    proposal = propose_for(parse_goal(question), seed)
    yield from backend.narrate("Explain this proposed design of experiments and its fitted model to a process "
                               "scientist.", proposal.facts, explain(proposal))


# ---- what-if ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WhatIfQuestion:
    run_id: str | None
    change: Change


def parse_whatif(text: str, run_id: str | None = None) -> WhatIfQuestion | None:
    """ "what if run R had no overfeed?", "what if the DO setpoint had been 50?", "what if do_setpoint_pct=50?"."""
    low = text.lower()
    if not re.search(r"\bwhat if\b|\bwithout\b|\bcounterfactual\b", low):
        return None
    named = re.search(r"\brun\s+([a-z0-9._-]+-[a-z0-9._-]+)", text, re.IGNORECASE)
    run = named[1] if named else run_id
    from sources.faults import CATALOGUE

    fault = next((f for f in CATALOGUE if f in low or f.replace("_", " ") in low), None)
    if fault and re.search(r"\b(without|no|had not|hadn't|removed?)\b", low):
        return WhatIfQuestion(run, Change(without_fault=fault))
    settings: dict[str, float | str] = {k: float(v) for k, v in re.findall(r"([a-z_.]+)\s*=\s*" + NUMBER, low)}
    for words, key in SETTINGS.items():
        m = re.search(rf"\b{words}\b[^0-9]*?{NUMBER}", low)
        if m and key not in settings:
            settings[key] = float(m[1])
    return WhatIfQuestion(run, Change(settings=settings)) if settings else None


def whatif_facts(res: WhatIf) -> dict:
    out = res.as_json()
    return {k: out[k] for k in ("run_id", "change", "from_h", "final_titer_g_l_actual",
                                "final_titer_g_l_counterfactual", "peak_lactate_g_l_actual",
                                "peak_lactate_g_l_counterfactual", "final_hcp_ng_ml_actual",
                                "final_hcp_ng_ml_counterfactual")} | {"reproduced": out["reproduced"]["match"]}


def explain_whatif(facts: dict) -> list[str]:
    def pair(name: str, unit: str, fmt: str) -> str:
        a, c = facts[f"{name}_actual"], facts[f"{name}_counterfactual"]
        return "n/a" if math.isnan(a) else f"{c:{fmt}} {unit} instead of {a:{fmt}} {unit}"

    day = facts["from_h"] / 24
    text = (f"Run {facts['run_id']} re-simulated {facts['change']} from day {day:.1f} on, with the same random "
            f"streams: final titer would have been {pair('final_titer_g_l', 'g/L', '.2f')}; peak lactate "
            f"{pair('peak_lactate_g_l', 'g/L', '.2f')}; final HCP {pair('final_hcp_ng_ml', 'ng/mL', '.0f')}.")
    check = ("The re-simulated actual run matches its stored assays." if facts["reproduced"] else
             "The re-simulated actual run does not match its stored assays exactly: read the numbers as the twin's.")
    return [text, check]


def whatif_answer(lake: str | Path, q: WhatIfQuestion, backend: Backend) -> Iterator[str]:
    from design.whatif import WhatIfError

    if q.run_id is None:
        yield "Name the run: \"what if run RUN_ID had no overfeed?\" (or ask from a run's page)."
        return
    try:
        facts = whatif_facts(what_if(load_run(lake, q.run_id), q.change))
    except WhatIfError as err:
        yield f"That what-if cannot be made: {err}."
        return
    yield from backend.narrate("Explain this counterfactual re-simulation of a stored run.", facts,
                               explain_whatif(facts))

