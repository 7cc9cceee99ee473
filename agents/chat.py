"""Chat: answer a question about a run or an incident from the same evidence the troubleshooting agent uses.

Findings per run are computed once (monitoring + troubleshooting over the stored run) and kept for the next
question; the backend streams the answer (`offline` phrases the findings; `openai` may call the evidence tools).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from agents.findings import stored_findings
from agents.llm import Backend


@lru_cache(maxsize=32)
def run_findings(lake: str, run_id: str) -> tuple[dict, ...]:
    return tuple(f.as_dict() for f in stored_findings(lake, run_id))


def ask(lake: str | Path, run_id: str, question: str, backend: Backend, incident_id: str | None = None,
        ) -> Iterator[str]:
    findings = list(run_findings(str(lake), run_id))
    if incident_id is not None:
        findings = [f for f in findings if f["incident_id"] == incident_id] or findings
    yield from backend.answer(question, findings)
