"""The findings of a stored run, whichever plant it is: a reactor's from its ticks (`agents.diagnose`), a
patient's from its vitals, labs and doses (`agents.patient_diagnose`). What `biopilot diagnose` and the chat use."""

from __future__ import annotations

from pathlib import Path

from agents.diagnose import IncidentFinding, RunNotFound, diagnose_stored
from agents.patient_diagnose import diagnose_patient_stored
from sinks import delta


def stored_findings(lake: str | Path, run_id: str) -> list[IncidentFinding]:
    """A reactor run's findings, or a patient's (a run with vitals and no ticks), each with its plant's horizon."""
    try:
        return diagnose_stored(lake, run_id)
    except RunNotFound:
        vitals = delta.read(lake, "vitals", columns=["run_id"], run_ids=[run_id])
        if vitals is None or vitals.num_rows == 0:
            raise  # the reactor's message, which lists the lake's runs
        return list(diagnose_patient_stored(lake, run_id))
