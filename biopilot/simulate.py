"""Batch generation: simulate a fleet and stream it into the Delta tables `ticks`, `assays`, `labels`, `runs`
(the bioreactor), or a cohort into `vitals`, `labs`, `doses`, `patients`, `labels`, `runs` (the patient plant).

What differs per plant kind is a `PlantKind`: the table streamed while simulating, the tables collected per chunk
and at the end of a block, its simulator, its scenario loader and its run ids. The writing is the same.

Idempotent by construction: run ids are deterministic, runs already in `runs` are skipped, and the `runs` row
is written last, so it marks a complete run. Rows of a run that has ticks but no `runs` row (an interrupted
earlier write) are removed before the run is written again.

Ctrl-C (SIGINT) stops the simulation between chunks: the streamed table's commit ends with the rows simulated so
far, nothing after it is written (no `runs` row: the next write of these runs removes them), and
`SimulationInterrupted` is raised. The streamed table is written from a thread of its own: a KeyboardInterrupt
raised inside the Delta writer, which pulls the stream from Rust, panics there, and a thread blocked in Rust runs
no signal handler.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from core.events import ASSAYS, DOSES, LABELS, LABS, PATIENTS, RUNS, TICKS, VITALS
from sinks import delta
from sources.fleet import Fleet, run_id_for
from sources.scenarios import Scenario, load_scenario

BLOCK_REACTORS = 100  # reactors integrated together; bounds memory at ~1 day x 100 reactors of signals
BLOCK_PATIENTS = 1000  # patients stepped together: a day of 5-min vitals for 1,000 is ~14 MB a signal
CHUNK_TICKS_MAX = 1440


@dataclass(frozen=True)
class PlantKind:
    """What batch simulation needs to know of a plant kind. The simulator has `step(n) -> chunk`, `done`,
    `dt_s`, and a `<name>_table()` method per end table; a chunk has an attribute per streamed and chunk table."""

    name: str
    unit: str  # what one run simulates: "reactor", "patient"
    stream: tuple[str, pa.Schema]  # written as the simulation goes (one Delta commit, batches streamed)
    chunk_tables: tuple[tuple[str, pa.Schema], ...]  # collected from each chunk, written after the stream
    end_tables: tuple[tuple[str, pa.Schema], ...]  # one per block once it is done (`runs` is always last)
    make_sim: Callable[[object, int, int, int], object]  # (scenario, n, seed, first_index)
    load_scenario: Callable[[str], object]
    run_id: Callable[[object, int, int], str]  # (scenario, seed, index)
    block: int

    @property
    def data_tables(self) -> tuple[str, ...]:
        return (self.stream[0], *(n for n, _ in self.chunk_tables), *(n for n, _ in self.end_tables))


def _patient_sim(scenario: object, n: int, seed: int, first_index: int) -> object:
    from sources.patient.cohort_sim import PatientCohortSim

    return PatientCohortSim(scenario, n, seed=seed, first_index=first_index)


def _patient_scenario(name: str) -> object:
    from sources.patient.scenarios import load_patient_scenario

    return load_patient_scenario(name)


def _patient_run_id(scenario: object, seed: int, index: int) -> str:
    from sources.patient.cohort_sim import patient_run_id

    return patient_run_id(scenario, seed, index)


BIOREACTOR = PlantKind("bioreactor", "reactor", ("ticks", TICKS), (("assays", ASSAYS),), (("labels", LABELS),),
                       lambda sc, n, seed, first: Fleet(sc, n, seed=seed, first_index=first), load_scenario,
                       run_id_for, BLOCK_REACTORS)
PATIENT = PlantKind("patient", "patient", ("vitals", VITALS), (("labs", LABS), ("doses", DOSES)),
                    (("patients", PATIENTS), ("labels", LABELS)), _patient_sim, _patient_scenario, _patient_run_id,
                    BLOCK_PATIENTS)
PLANT_KINDS = {kind.name: kind for kind in (BIOREACTOR, PATIENT)}
DATA_TABLES = BIOREACTOR.data_tables


@dataclass
class SimulationResult:
    run_ids: list[str]
    written: list[str]
    skipped: list[str]
    ticks: int = 0
    seconds: float = 0.0
    summaries: list[dict] = field(default_factory=list)


class SimulationInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a simulation; what was committed is consistent (see the module docstring)."""


@contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """An event set by the first SIGINT instead of a KeyboardInterrupt (only on the main thread, where Python
    delivers signals); a second SIGINT interrupts as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(_signum: int, _frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _blocks(scenario: Scenario, indices: list[int], seed: int, kind: PlantKind = BIOREACTOR) -> Iterator[Fleet]:
    for i in range(0, len(indices), kind.block):
        part = indices[i : i + kind.block]
        # units in a block must be consecutive for the simulator; split where they are not
        start = 0
        for j in range(1, len(part) + 1):
            if j == len(part) or part[j] != part[j - 1] + 1:
                yield kind.make_sim(scenario, j - start, seed, part[start])
                start = j


def simulate_to_lake(scenario: Scenario, reactors: int, seed: int, lake: str | Path,
                     progress: Callable[[float], None] | None = None,
                     kind: PlantKind = BIOREACTOR) -> SimulationResult:
    """Simulate `reactors` runs (reactors, or patients for the patient kind) of `scenario` into `lake`;
    `progress(unit_days)` is called as work is done. Raises `SimulationInterrupted` on Ctrl-C."""
    with _stop_on_sigint() as stop:
        return _simulate(scenario, reactors, seed, lake, progress, kind, stop)


def _simulate(scenario: Scenario, reactors: int, seed: int, lake: str | Path,
              progress: Callable[[float], None] | None, kind: PlantKind, stop: threading.Event) -> SimulationResult:
    t0 = time.perf_counter()
    ids = [kind.run_id(scenario, seed, i) for i in range(reactors)]
    done = delta.run_ids(lake)
    todo = [i for i, rid in enumerate(ids) if rid not in done]
    result = SimulationResult(run_ids=ids, written=[ids[i] for i in todo],
                              skipped=[rid for rid in ids if rid in done])
    if not todo:
        return result
    delta.delete_runs(lake, kind.data_tables, result.written)

    collected: dict[str, list[pa.Table]] = {name: [] for name, _ in kind.chunk_tables + kind.end_tables}
    runs: list[pa.Table] = []
    batches: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=4)

    def produce() -> None:
        # runs in its own thread: the numba kernels release the GIL, so simulation overlaps the Delta writer
        try:
            for fleet in _blocks(scenario, todo, seed, kind):
                chunk_ticks = min(CHUNK_TICKS_MAX, max(1, int(86400 / fleet.dt_s)))
                while not fleet.done:
                    if stop.is_set():
                        batches.put(None)  # the stream ends here; its commit holds the rows so far
                        return
                    chunk = fleet.step(chunk_ticks)
                    streamed = getattr(chunk, kind.stream[0])
                    batches.put(streamed)
                    for name, _ in kind.chunk_tables:
                        collected[name].append(getattr(chunk, name))
                    if progress:
                        progress(streamed.num_rows * fleet.dt_s / 86400.0)
                for name, _ in kind.end_tables:
                    collected[name].append(getattr(fleet, f"{name}_table")())
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

    failed: list[BaseException] = []

    def write() -> None:
        try:
            delta.append(lake, kind.stream[0], stream(), kind.stream[1])
        except BaseException as err:  # re-raised in the calling thread
            failed.append(err)

    producer = threading.Thread(target=produce, name="biopilot-simulate", daemon=True)
    writer = threading.Thread(target=write, name="biopilot-simulate-writer", daemon=True)
    producer.start()
    writer.start()
    # the calling thread waits in Python, not in the Rust writer: that is where a SIGINT handler can run
    while writer.is_alive():
        writer.join(0.1)
    producer.join()
    if failed:
        raise failed[0]
    for name, schema in kind.chunk_tables + kind.end_tables:
        _raise_if(stop, lake)
        parts = collected[name]
        delta.append(lake, name, pa.concat_tables(parts) if parts else schema.empty_table(), schema)
    _raise_if(stop, lake)
    delta.append(lake, "runs", pa.concat_tables(runs), RUNS)  # last: marks the runs complete
    result.seconds = time.perf_counter() - t0
    return result


def _raise_if(stop: threading.Event, lake: str | Path) -> None:
    if stop.is_set():
        raise SimulationInterrupted(f"interrupted: no run marked complete in {lake} (the same command writes "
                                    "them again)")
