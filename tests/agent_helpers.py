"""Simulated runs for the agent tests (seeds 11+, distinct from `biopilot bench agents`' 500+)."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from sources.fleet import simulate_run


@lru_cache(maxsize=32)
def simulated(scenario: str, seed: int = 11) -> tuple[pa.Table, pa.Table, tuple]:
    """(ticks, assays, labels) of one 14-day reactor."""
    sim = simulate_run(scenario, seed)
    return sim.ticks, sim.assays, sim.labels


# for `Workers(evidence_wait_s=...)` in tests whose lake never gets the incident's ticks: the diagnosis gives up
# at once instead of after the production wait, which `Workers.stop` would sit out
NO_TICKS_WAIT_S = 0.5
