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
        if (vitals is None or vitals.num_rows == 0) and run_id in delta.run_ids(lake):
            # a stored run without ticks or vitals: a trial patient's (a trial simulates no vitals); "no ticks"
            # beside a list of the lake's runs read as if the run were not there
            raise RunNotFound(f"run {run_id!r} has no ticks or vitals to diagnose (a trial patient's run holds only "
                              f"INRs and doses): `biopilot report {run_id}` shows them") from None
        if vitals is None or vitals.num_rows == 0:
            raise  # the reactor's message, which lists the lake's runs
        return list(diagnose_patient_stored(lake, run_id))
