"""A small lake for the knowledge graph's tests: fault-free, do_limitation and overfeed runs simulated by the
twin (labelled), one do_limitation run's incident diagnosed as the workers leave it (incidents + the agent's
findings), and the shipped titer design's results (docs/design/titer-ccf-results.csv)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from agents.diagnose import IncidentFinding
from agents.findings import stored_findings
from biopilot.simulate import simulate_to_lake
from core.events import AGENT_MESSAGES, INCIDENTS
from sinks import delta
from sources.scenarios import load_scenario

DESIGN_RESULTS = Path(__file__).parent.parent / "docs" / "design" / "titer-ccf-results.csv"
SCENARIOS = ("normal", "do_limitation", "overfeed")
RUNS_EACH, SEED = 5, 28


def make_graph_lake(lake: Path) -> str:
    """The lake; returns the id of the run whose incident was diagnosed."""
    for name in SCENARIOS:
        simulate_to_lake(load_scenario(name), RUNS_EACH, SEED, lake)
    run_id = sorted(r for r in delta.run_ids(lake) if r.startswith("do_limitation"))[0]
    store_findings(lake, stored_findings(str(lake), run_id))
    return run_id


def store_findings(lake: Path, findings: list[IncidentFinding]) -> None:
    """Incidents and their findings in the lake as the workers leave them: the findings in the explanation's
    last chunk (its text is the LLM backend's: not the tests')."""
    delta.append(lake, "incidents", pa.Table.from_pylist([f.incident for f in findings], schema=INCIDENTS),
                 INCIDENTS)
    chunks = [{"incident_id": f.incident["incident_id"], "seq": 0, "agent": "troubleshooting", "text": "",
               "done": True, "findings_json": json.dumps(f.as_dict()), "emitted_at": datetime.now(UTC)}
              for f in findings]
    delta.append(lake, "agent_messages", pa.Table.from_pylist(chunks, schema=AGENT_MESSAGES), AGENT_MESSAGES)
