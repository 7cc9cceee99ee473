"""What the generic stack knows of a plant kind: the words, not the behaviour.

A plant kind (`Settings.plant`, `--plant`) is a name. Each layer keeps what it does per kind under that name: the
simulator and live feed in `sources`, the monitor in `detectors`, the knowledge base in `agents`, the panels in
`dashboard`, batch simulation in `biopilot.simulate`. What they all share is here: which table a unit's ticks
and lab results go to, its id column, its signals and what a sensor can physically report.

A *unit* is what one run follows: a reactor, or a patient. The generic tables (`runs`, `labels`, `scores`,
`alerts`, `incidents`) keep the column `reactor_id` for the unit's id, whichever kind (docs/DESIGN.md says why);
in code the unit's id is `unit_id`.

>>> PLANTS["patient"].ticks_table, PLANTS["patient"].unit_column, PLANTS["bioreactor"].assays_table
('vitals', 'patient_id', 'assays')
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from core.events import (
    ASSAYS,
    LABS,
    LATE_TICKS,
    LATE_VITALS,
    TICK_SIGNALS,
    TICKS,
    VITAL_SIGNALS,
    VITALS,
)

# what a bedside monitor can physically report; outside is a transmitter or encoding fault, not the patient
VITALS_PLAUSIBLE: dict[str, tuple[float, float]] = {
    "hr_bpm": (0.0, 350.0), "sbp_mmhg": (0.0, 350.0), "dbp_mmhg": (0.0, 300.0), "spo2_pct": (0.0, 100.0),
    "rr_min": (0.0, 100.0), "temp_c": (20.0, 46.0),
}


@dataclass(frozen=True)
class PlantVocabulary:
    name: str  # "bioreactor" | "patient"
    unit: str  # what one run follows: "reactor" | "patient"
    unit_column: str  # the unit's id column in the kind's own tables
    ticks_table: str  # streamed readings, on `biopilot.telemetry.<unit>`
    ticks_schema: pa.Schema
    signals: tuple[str, ...]  # the readings' columns, units in their names
    assays_table: str  # lab results, late, on `biopilot.assays.<unit>`
    assays_schema: pa.Schema
    late_table: str  # readings that came after their window closed
    late_schema: pa.Schema

    @property
    def id_columns(self) -> tuple[str, ...]:
        return ("run_id", self.unit_column, "seq", "ts")


PLANTS: dict[str, PlantVocabulary] = {
    "bioreactor": PlantVocabulary("bioreactor", "reactor", "reactor_id", "ticks", TICKS, TICK_SIGNALS, "assays",
                                  ASSAYS, "late_ticks", LATE_TICKS),
    "patient": PlantVocabulary("patient", "patient", "patient_id", "vitals", VITALS, VITAL_SIGNALS, "labs", LABS,
                               "late_vitals", LATE_VITALS),
}
