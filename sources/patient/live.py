"""The live patient feed: a cohort of N virtual patients runs at a speed factor and streams to NATS, cohort after
cohort (the patient plant's `sources.plant.PlantFeed`; pacing, backpressure, late results, command rejection and
labels are `sources.plant.LiveFeed`'s).

On the subjects of docs/DESIGN.md, per patient:
- vitals to `biopilot.telemetry.<patient>` (Arrow IPC of VITALS rows), a closing watermark when the cohort ends;
- labs to `biopilot.assays.<patient>` at their `reported_ts` (late, as a real lab reports);
- doses to `biopilot.assays.<patient>` with header `BioPilot-Kind: doses` at the dose time: warfarin and
  metoprolol as given (a held dose is 0 mg), and the co-medications (amiodarone 200 mg, enzyme inducer 600 mg,
  taken) on each day they are taken.

Commands on `biopilot.control.<patient>` (validated by `sources.patient.commands`, the dashboard's own models)
act on the running cohort from its next tick: a dose change or hold overrides the protocol for that patient, a
co-medication start or stop changes warfarin clearance as `warfarin.clearance_factor` says, an injected event
starts now and writes its label; a stop ends the feed. One that is not valid, or not now (a patient already on
amiodarone), is counted in `PlantStats.rejected_commands` and dropped.

The plant writes `patients` when a cohort begins, `labels` as they become known (planned, injected, and the INR
episodes when they close) and `runs` when it ends. Each cohort is new people: patient ids go on from the last
cohort's (`p{index:06d}`, index = seed x patients + k).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa

from core.plants import PLANTS
from sources.patient.cohort_sim import PatientChunk, PatientCohortSim
from sources.patient.commands import parse_patient_command
from sources.patient.scenarios import PatientScenario
from sources.plant import LiveFeed, timed_rows

DEFAULT_PATIENTS = 8
DEFAULT_SPEED = 3600.0  # an hour a second: a day of 5-min vitals in 24 s, a first INR within a few minutes


class PatientFeed(LiveFeed):
    vocabulary = PLANTS["patient"]

    def __init__(self, nats_url: str, scenario: PatientScenario, patients: int = DEFAULT_PATIENTS,
                 speed: float | None = DEFAULT_SPEED, **kwargs: object) -> None:
        # a new cohort needs no turnaround: only the closing watermark's gap
        kwargs.setdefault("turnaround_h", 0.0)
        super().__init__(nats_url, scenario, patients, speed=speed, **kwargs)

    def _new_sim(self, batch: int, start: datetime) -> PatientCohortSim:
        scenario = self.scenario.with_overrides(start=start)
        seed = self.seed + batch
        return PatientCohortSim(scenario, self.units, seed=seed, first_index=seed * self.units)

    def _parse(self, data: bytes) -> object:
        return parse_patient_command(data)

    def _control(self, sim: PatientCohortSim, patient: str, command: object) -> None:
        k = sim.index_of(patient)
        if command.type == "dose":
            sim.set_daily_dose(k, command.drug, command.daily_mg)
        elif command.type == "hold":
            sim.hold(k, command.drug, command.days)
        elif command.type == "comedication":
            sim.comedication(k, command.drug, command.action)
        elif command.type == "event":
            sim.inject_event(k, command.event, command.magnitude, command.duration_h, command.signal)

    def _begin_tables(self, sim: PatientCohortSim) -> list[tuple[str, pa.Table]]:
        return [("patients", sim.patients_table())]

    def _ticks(self, chunk: PatientChunk) -> pa.Table:
        return pa.Table.from_batches([chunk.vitals])

    def _timed(self, chunk: PatientChunk) -> Iterator[tuple[int, str | None, pa.Table]]:
        for due_us, rows in timed_rows(chunk.labs, "reported_ts"):
            yield due_us, None, rows
        for due_us, rows in timed_rows(chunk.doses, "ts"):
            yield due_us, "doses", rows
