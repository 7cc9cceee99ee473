"""Run a fleet in memory and give back its ticks and assays, for the twin's tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sources.fleet import Fleet
from sources.scenarios import Scenario, load_scenario


@dataclass
class FleetRun:
    fleet: Fleet
    ticks: pa.Table
    assays: pa.Table

    def signal(self, reactor: int, name: str) -> np.ndarray:
        rows = self.ticks.filter(pc.equal(self.ticks["reactor_id"], f"r{reactor + 1}"))
        return rows[name].to_numpy(zero_copy_only=False).astype(float)

    def days(self, reactor: int) -> np.ndarray:
        rows = self.ticks.filter(pc.equal(self.ticks["reactor_id"], f"r{reactor + 1}"))
        return rows["seq"].to_numpy() * self.fleet.dt_s / 86400.0

    def assay(self, reactor: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.assays.filter(pc.equal(self.assays["reactor_id"], f"r{reactor + 1}")).sort_by("sample_ts")
        t0 = self.fleet.started[reactor].timestamp()
        day = (rows["sample_ts"].cast(pa.int64()).to_numpy() / 1e6 - t0) / 86400.0
        return day, rows[name].to_numpy()


def run_fleet(scenario: Scenario, reactors: int = 1, seed: int = 0) -> FleetRun:
    fleet = Fleet(scenario, reactors, seed=seed)
    ticks, assays = [], []
    while not fleet.done:
        chunk = fleet.step(1440)
        ticks.append(chunk.ticks)
        assays.append(chunk.assays)
    return FleetRun(fleet, pa.Table.from_batches(ticks), pa.concat_tables(assays))


@lru_cache(maxsize=64)
def run_builtin(name: str, reactors: int = 1, seed: int = 0, strip_faults: bool = False) -> FleetRun:
    scenario = load_scenario(name)
    if strip_faults:
        scenario = scenario.with_overrides(faults=[])
    return run_fleet(scenario, reactors, seed)
