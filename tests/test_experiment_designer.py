"""The Experiment Designer agent: a goal in words -> a design run on the twin and explained; a what-if on a stored
run. Every number an answer cites is checked against the object it comes from: the run sheet, a fresh fit of the
runs, the optimum, and `biopilot whatif --json` run as its own process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents import experiment_designer as designer
from agents.chat import ask, route
from agents.llm import OfflineBackend, OpenAIBackend
from biopilot.simulate import simulate_to_lake
from design.model import fit_response
from sources.scenarios import load_scenario

GOAL = "maximise titer with lactate below 3 g/L"


@pytest.fixture(scope="module")
def proposal() -> designer.Proposal:
    return designer.propose_for(designer.parse_goal(GOAL), seed=0)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("designer") / "lake"
    result = simulate_to_lake(load_scenario("overfeed"), 1, 5, root)
    return root, result.run_ids[0]


def test_goals_parse_into_goal_constraints_and_factors():
    g = designer.parse_goal(GOAL)
    assert (g.goal, g.maximize, g.constraints) == ("final_titer", True, ["peak_lactate<=3"])
    assert g.factors == list(designer.DEFAULT_FACTORS)
    g = designer.parse_goal("keep lactate under 4 and osmolality below 450 g while maximising titer; vary the feed, "
                            "the seeding density and the DO setpoint")
    assert (g.goal, g.constraints) == ("final_titer", ["peak_lactate<=4", "peak_osmolality<=450"])
    assert [f.split("=")[0] for f in g.factors] == ["feed.percent_of_volume", "process.seed_vcd_e6_per_ml",
                                                    "process.do_setpoint_pct"]
    g = designer.parse_goal("minimise HCP with titer at least 3")
    assert (g.goal, g.maximize, g.constraints) == ("final_hcp", False, ["final_titer>=3"])
    assert route(GOAL) == "design" and route("design experiments to raise the titer") == "design"
    assert route("why did DO drop?", "r1") == "run"


def test_the_design_answer_cites_the_sheet_the_fit_and_the_optimum(proposal):
    text = " ".join(ask("/nonexistent-lake", None, GOAL, OfflineBackend()))
    sheet, analysis = proposal.sheet, proposal.analysis
    assert int(re.search(r"design of (\d+) runs", text)[1]) == len(sheet.coded) == 17  # 8 corners, 6 axial, 3 centre
    counts = {t: int(n) for n, t in re.findall(r"(\d+) (corner|axial|centre) runs", text)}
    assert counts == {"corner": 8, "axial": 6, "centre": 3}
    assert sum(counts.values()) == len(sheet.coded)
    # the model: refit from the runs' responses, independently of the agent
    observed = analysis.observed["final_titer"]
    refit = fit_response(proposal.study.factors, sheet.coded, observed, "final_titer")
    r2, q2 = (float(v) for v in re.search(r"R² ([0-9.]+), Q² (-?[0-9.]+)", text).groups())
    assert r2 == pytest.approx(refit.r2, abs=0.005) and q2 == pytest.approx(refit.q2, abs=0.005)
    assert f"fit a {refit.order} model" in text
    # the optimum: its settings and predictions, and the constraint holds on the prediction it cites
    opt = analysis.optimum
    for name, value in opt.settings.items():
        assert f"{name} {value:.3g}" in text
    predicted = float(re.search(r"predicted final_titer ([0-9.]+)", text)[1])
    assert predicted == pytest.approx(opt.predicted["final_titer"], rel=5e-3)
    assert predicted == pytest.approx(float(refit.predict(opt.coded)[0]), rel=5e-3)
    lactate = float(re.search(r"peak_lactate ([0-9.]+) \(", text)[1])
    assert opt.feasible and lactate <= 3 + 5e-3
    lo, hi = (float(v) for v in re.search(r"between ([0-9.]+) and ([0-9.]+) \(95 %", text).groups())
    assert (lo, hi) == pytest.approx((analysis.goal_interval["obs_ci_lower"], analysis.goal_interval["obs_ci_upper"]),
                                     rel=5e-3)
    assert lo < predicted < hi


def _whatif_json(lake: Path, run_id: str, *change: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "whatif", "--run", run_id, *change, "--lake",
                          str(lake), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _cited(text: str, name: str) -> tuple[float, float]:
    m = re.search(rf"{name} (?:would have been )?([0-9.]+) \S+ instead of ([0-9.]+)", text)
    return float(m[1]), float(m[2])


@pytest.mark.parametrize(("question", "change"), [
    ("what if run {run} had no overfeed?", ("--without-fault", "overfeed")),
    ("what if the DO setpoint had been 55 in run {run}?", ("--set", "do_setpoint_pct=55")),
])
def test_a_whatif_answer_cites_the_whatif_commands_numbers(lake, question, change):
    root, run_id = lake
    text = " ".join(ask(root, None, question.format(run=run_id), OfflineBackend()))
    expected = _whatif_json(root, run_id, *change)
    assert _cited(text, "final titer") == (round(expected["final_titer_g_l_counterfactual"], 2),
                                           round(expected["final_titer_g_l_actual"], 2))
    assert _cited(text, "peak lactate") == (round(expected["peak_lactate_g_l_counterfactual"], 2),
                                            round(expected["peak_lactate_g_l_actual"], 2))
    assert _cited(text, "final HCP") == (round(expected["final_hcp_ng_ml_counterfactual"]),
                                         round(expected["final_hcp_ng_ml_actual"]))
    assert f"from day {expected['from_h'] / 24:.1f}" in text
    assert ("matches its stored assays" in text) == expected["reproduced"]["match"]
    # the run the chat is about stands in for a run the question does not name
    assert " ".join(ask(root, run_id, question.replace(" in run {run}", "").replace(" run {run}", " the run")
                        .format(run=run_id), OfflineBackend())) == text


def test_a_whatif_that_cannot_be_made_says_why(lake):
    root, run_id = lake
    assert "has no do_limitation fault" in " ".join(ask(root, run_id, "what if there had been no do_limitation?",
                                                        OfflineBackend()))
    assert "Name the run" in " ".join(ask(root, None, "what if the DO setpoint had been 50?", OfflineBackend()))


def test_the_llm_backend_gets_the_facts_and_falls_back_to_the_offline_text(fake_openai_server, proposal):
    url, app = fake_openai_server({"kind": "error"})
    backend = OpenAIBackend("local", url, None, timeout_s=5)
    offline = designer.explain(proposal)
    assert list(backend.narrate("Explain this design.", proposal.facts, offline)) == offline
    sent = app.state.requests[-1]["messages"]
    facts = json.loads(sent[-1]["content"].split("Facts (JSON):\n", 1)[1])
    assert facts["runs"] == len(proposal.sheet.coded) and np.isclose(facts["model"]["r2"], proposal.analysis.models[
        "final_titer"].r2)
    assert "every number you state must be one of theirs" in sent[0]["content"]
