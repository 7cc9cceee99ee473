"""Simulated runs for the agent tests (seeds 11+, distinct from `biopilot bench agents`' 500+)."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from sources.fleet import Fleet
from sources.scenarios import load_scenario


@lru_cache(maxsize=32)
def simulated(scenario: str, seed: int = 11) -> tuple[pa.Table, pa.Table, tuple]:
    """(ticks, assays, labels) of one 14-day reactor."""
    fleet = Fleet(load_scenario(scenario), 1, seed=seed)
    chunk = fleet.step(fleet.total_ticks)
    return pa.Table.from_batches([chunk.ticks]), chunk.assays, tuple(fleet.labels)
