"""Batch generation: simulate a fleet and stream it into the Delta tables `ticks`, `assays`, `labels`, `runs`.

Idempotent by construction: run ids are deterministic, runs already in `runs` are skipped, and the `runs` row
is written last, so it marks a complete run. Rows of a run that has ticks but no `runs` row (an interrupted
earlier write) are removed before the run is written again.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from core.events import ASSAYS, LABELS, RUNS, TICKS
from sinks import delta
from sources.fleet import Fleet, run_id_for
from sources.scenarios import Scenario

DATA_TABLES = ("ticks", "assays", "labels")
BLOCK_REACTORS = 100  # reactors integrated together; bounds memory at ~1 day x 100 reactors of signals
CHUNK_TICKS_MAX = 1440


@dataclass
class SimulationResult:
    run_ids: list[str]
    written: list[str]
    skipped: list[str]
    ticks: int = 0
    seconds: float = 0.0
    summaries: list[dict] = field(default_factory=list)


def _blocks(scenario: Scenario, indices: list[int], seed: int) -> Iterator[Fleet]:
    for i in range(0, len(indices), BLOCK_REACTORS):
        part = indices[i : i + BLOCK_REACTORS]
        # reactors in a block must be consecutive for `Fleet`; split where they are not
        start = 0
        for j in range(1, len(part) + 1):
            if j == len(part) or part[j] != part[j - 1] + 1:
                yield Fleet(scenario, j - start, seed=seed, first_index=part[start])
                start = j


def simulate_to_lake(scenario: Scenario, reactors: int, seed: int, lake: str | Path,
                     progress: Callable[[float], None] | None = None) -> SimulationResult:
    """Simulate `reactors` runs of `scenario` into `lake`; `progress(reactor_days)` is called as work is done."""
    t0 = time.perf_counter()
    ids = [run_id_for(scenario, seed, i) for i in range(reactors)]
    done = delta.run_ids(lake)
    todo = [i for i, rid in enumerate(ids) if rid not in done]
    result = SimulationResult(run_ids=ids, written=[ids[i] for i in todo],
                              skipped=[rid for rid in ids if rid in done])
    if not todo:
        return result
    delta.delete_runs(lake, DATA_TABLES, result.written)

    assays: list[pa.Table] = []
    labels: list[pa.Table] = []
    runs: list[pa.Table] = []
    batches: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=4)

    def produce() -> None:
        # runs in its own thread: the numba kernels release the GIL, so simulation overlaps the Delta writer
        try:
            for fleet in _blocks(scenario, todo, seed):
                chunk_ticks = min(CHUNK_TICKS_MAX, max(1, int(86400 / fleet.dt_s)))
                while not fleet.done:
                    chunk = fleet.step(chunk_ticks)
                    batches.put(chunk.ticks)
                    assays.append(chunk.assays)
                    if progress:
                        progress(chunk.ticks.num_rows * fleet.dt_s / 86400.0)
                labels.append(fleet.labels_table())
                runs.append(fleet.runs_table())
        except BaseException as err:  # handed to the writer thread, re-raised there
            batches.put(err)
            return
        batches.put(None)

    def stream() -> Iterator[pa.RecordBatch]:
        while True:
            item = batches.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            result.ticks += item.num_rows
            yield item

    producer = threading.Thread(target=produce, name="biopilot-simulate", daemon=True)
    producer.start()
    delta.append(lake, "ticks", stream(), TICKS)
    producer.join()
    delta.append(lake, "assays", pa.concat_tables(assays) if assays else ASSAYS.empty_table(), ASSAYS)
    delta.append(lake, "labels", pa.concat_tables(labels) if labels else LABELS.empty_table(), LABELS)
    delta.append(lake, "runs", pa.concat_tables(runs), RUNS)  # last: marks the runs complete
    result.seconds = time.perf_counter() - t0
    return result
