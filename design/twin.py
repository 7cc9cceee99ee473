"""A design's runs on the twin fleet: every run on its own settings and random streams, advanced together.

Each run is one reactor of its own scenario (the study's base with the run's settings) and seed, as a lab's
runs are separate batches: its cells' kinetics vary from run to run (`process.variability`), its seeding density
and its assays carry their errors (`sources.fleet.ASSAY_CV`). The reactors are stacked into blocks
(`Fleet.stack`) so a design of a few hundred runs costs a few compiled passes. `truth=True` gives what the
design's statistics cannot see: each setting's expected response, from a reactor without run-to-run variability,
read by a perfect assay (the ground truth of `biopilot bench design`; its seeding density is seed 0's draw,
the same for every setting: give every truth run the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from design.study import Study
from sources.fleet import Fleet, true_assays

BLOCK_RUNS = 200  # runs integrated together: a day of their (unmeasured) signals is ~30 MB
CHUNK_TICKS = 1440


class _TrueFleet(Fleet):
    """A fleet that keeps its assay samples' true values beside the measured ones."""

    def _assays(self, samples: np.ndarray, n_samples: np.ndarray):  # noqa: ANN202 - the parent's pa.Table
        for k in range(self.n):
            for j in range(int(n_samples[k])):
                self.true_rows[k].append((samples[k, j, 0] * self.dt_s / 86400.0, true_assays(samples[k, j, 1:])))
        return super()._assays(samples, n_samples)


def run_settings(study: Study, settings: Sequence[dict[str, float | str]], seeds: Sequence[int],
                 truth: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Each response of `study` for each run (settings, seed): measured by the run's assays, or with `truth`
    its expected value (no run-to-run variability, a perfect assay). `progress(runs_done)` after each block."""
    out = {r.name: np.full(len(settings), np.nan) for r in study.responses}
    for start in range(0, len(settings), BLOCK_RUNS):
        block = range(start, min(start + BLOCK_RUNS, len(settings)))
        fleets = []
        for i in block:
            scenario = study.scenario_at(settings[i])
            if truth:
                scenario = scenario.with_overrides(process={**scenario.process.model_dump(), "variability": 0.0})
            fleets.append(_TrueFleet(scenario, 1, seed=int(seeds[i]), run_ids=[f"{study.name}-{i + 1}"]))
        fleet = _TrueFleet.stack(fleets)
        fleet.true_rows = [[] for _ in range(fleet.n)]
        assays = []
        while not fleet.done:
            assays.append(fleet.step(CHUNK_TICKS, measure_ticks=False).assays)
        measured = pa.concat_tables(assays).to_pandas().groupby("run_id") if not truth else None
        for k, i in enumerate(block):
            if measured is None:
                days = np.array([d for d, _ in fleet.true_rows[k]])
                columns = {name: np.array([row[name] for _, row in fleet.true_rows[k]])
                           for name in fleet.true_rows[k][0][1]}
            else:
                rows = measured.get_group(fleet.run_ids[k]).sort_values("sample_ts")
                days = (rows["sample_ts"] - fleet.started[k]).dt.total_seconds().to_numpy() / 86400.0
                columns = {r.column: rows[r.column].to_numpy() for r in study.responses}
            for r in study.responses:
                out[r.name][i] = r.of(days, columns[r.column])
        if progress:
            progress(block.stop)
    return out
