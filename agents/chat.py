"""Chat: answer a question about a run or an incident from the same evidence the troubleshooting agent uses; a
question about the process from the knowledge graph; a goal or a what-if through the Experiment Designer.

`route` picks who answers: a what-if ("what if run R had no overfeed?") and a goal ("maximise titer with lactate
below 3 g/L") go to `agents.experiment_designer`, a general question ("what raises HCP?", "what could cause low DO
on day 6?") to `agents.knowledge_graph`, anything else to the run's findings. Findings per run are computed once
(monitoring + troubleshooting over the stored run) and kept for the next question; the backend streams the answer
(`offline` phrases the findings; `openai` may call the evidence tools, or rephrases the computed facts).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from agents import experiment_designer as designer
from agents import knowledge_graph as kg
from agents.counterfactual import with_counterfactuals
from agents.findings import stored_findings
from agents.llm import Backend


@lru_cache(maxsize=32)
def run_findings(lake: str, run_id: str) -> tuple[dict, ...]:
    """The run's findings, a named fault's with what the run would have been without it (`agents.counterfactual`)."""
    return tuple(with_counterfactuals(lake, run_id, [f.as_dict() for f in stored_findings(lake, run_id)]))


def route(question: str, run_id: str | None = None) -> str:
    """"whatif", "design", "graph" or "run"."""
    if designer.parse_whatif(question, run_id) is not None:
        return "whatif"
    if designer.is_design_goal(question):
        return "design"
    return "graph" if kg.parse_question(question) is not None else "run"


def graph_answer(lake: str | Path, question: kg.GraphQuestion, backend: Backend) -> Iterator[str]:
    graph = kg.load_or_catalogue(lake)
    facts = {"target": question.target, "direction": question.direction, "day": question.day,
             "causes": [{"origin": c.origin, "path": list(c.path), "sign": c.sign, "applies": c.applies,
                         "evidence": [[e.text for e in edge] for edge in c.evidence]}
                        for c in graph.causes(question.target, question.direction, question.day)[:5]]}
    yield from backend.narrate("Answer the question from the knowledge graph's causes, citing their evidence.",
                               facts, kg.answer(graph, question))


def ask(lake: str | Path, run_id: str | None, question: str, backend: Backend, incident_id: str | None = None,
        ) -> Iterator[str]:
    kind = route(question, run_id)
    if kind == "whatif":
        yield from designer.whatif_answer(lake, designer.parse_whatif(question, run_id), backend)
    elif kind == "design":
        yield from designer.design_answer(question, backend)
    elif kind == "graph":
        try:
            kg.asked_day(question)
        except kg.QuestionError as bad_day:  # answered for any day, and said so, rather than for a misread one
            yield f"{bad_day}; this answer is for any day. "
        yield from graph_answer(lake, kg.parse_question(question), backend)
    elif run_id is None:
        yield "Name a run to ask about it, or ask about the process: \"what raises HCP?\"."
    else:
        findings = list(run_findings(str(lake), run_id))
        if incident_id is not None:
            findings = [f for f in findings if f["incident_id"] == incident_id] or findings
        yield from backend.answer(question, findings)
