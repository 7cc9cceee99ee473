"""The Tennessee Eastman process as a suite of labelled CSV runs for `biopilot bench detect` (`--make-te DIR`).

The process is the published model (Downs & Vogel 1993; the revision of Bathelt, Ricker & Jelali 2015, whose C
code the `tep-studio` package compiles) under Ricker's decentralized control (1996), which the package ships.
The suite follows the protocol of the fault-detection literature (Chiang, Russell & Braatz 2000):

- one reading every 3 min of the 41 measurements (`xmeas_01`-`xmeas_41`) and the 11 manipulated variables
  (`xmv_01`-`xmv_11`; the agitator's speed is fixed);
- a 500-row normal training run and a 960-row normal test run;
- for each disturbance IDV(1)-IDV(20), a 960-row run with the fault on from row 160 (8 h) to the end.

Each run has its own noise seed and starts after `SETTLE_H` of closed loop from the mode-1 state, where the plant
has stopped moving from its start. The label is the fault's flag in the step recorded. A run that trips the
plant's shutdown ends there: IDV(6), the loss of the A feed, does so a few hours into the fault.

This is not a dataset of the literature. The controller differs from the one those datasets were made with, and so
do the fault sizes of the revision, so figures on it are comparable in kind, not to the decimal.

>>> names = signal_names()
>>> len(names), names[0], names[-1]
(52, 'xmeas_01', 'xmv_11')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

SAMPLE_H = 0.05  # a reading every 3 min, as the literature's datasets
CONTROL_INTERVAL_H = 0.0005  # the controller's step (tep-studio's default); SAMPLE_H is 100 of them
SETTLE_H = 30.0  # from the mode-1 start the plant moves for about 25 h under this control (docs/DETECT.md)
MEASUREMENTS = 41
MANIPULATED = 11
FAULTS = tuple(range(1, 21))  # IDV(1)-IDV(20): the disturbances of Downs & Vogel's paper
IDVS = 28  # the revision's disturbance vector
RUN_SEEDS = 1000  # a suite's runs take the noise seeds 1000 x seed + 1, + 2, ...
# the model's generator is g <- g x 9228907 mod 2^32 in doubles: seeds equal modulo 2^32, or too large to be exact
# doubles, give the same noise; under this every run seed of every suite is its own below 2^31
MAX_SEED = (2**31 - 1) // RUN_SEEDS - 1


def signal_names() -> list[str]:
    return ([f"xmeas_{i:02d}" for i in range(1, MEASUREMENTS + 1)]
            + [f"xmv_{i:02d}" for i in range(1, MANIPULATED + 1)])


def needs_tep_studio() -> str | None:
    """None when the simulator can be imported, else what to install."""
    try:
        import tep_studio  # noqa: F401
    except ImportError:
        return "the Tennessee Eastman suite needs the tep-studio package: pip install 'tep-studio==0.2.0'"
    return None


def run(idv: int | None, rows: int, onset: int, seed: int,
        settle_h: float = SETTLE_H) -> tuple[np.ndarray, np.ndarray, bool]:
    """One run: (signals [rows, 52], 0/1 label, whether the plant shut down), the fault `idv` on from row `onset`
    (None: a normal run)."""
    from tep_studio import ClosedLoopSimulation

    fault_from_h = settle_h + onset * SAMPLE_H

    def disturbances(time_h: float) -> np.ndarray:
        flags = np.zeros(IDVS)
        if idv is not None and time_h >= fault_from_h - CONTROL_INTERVAL_H / 2:
            flags[idv - 1] = 1.0
        return flags

    every = round(SAMPLE_H / CONTROL_INTERVAL_H)
    simulation = ClosedLoopSimulation(control_interval=CONTROL_INTERVAL_H, horizon=settle_h + (rows + 1) * SAMPLE_H)
    result = simulation.run(seed=float(seed), disturbance_schedule=disturbances, record_every=every)
    kept = [r for r in result.results if r.time > settle_h][:rows]
    X = np.array([np.concatenate([r.measurements[:MEASUREMENTS], r.implemented_action[:MANIPULATED]])
                  for r in kept])
    label = np.array([int(idv is not None and r.disturbances[idv - 1] > 0) for r in kept], dtype=np.int64)
    return X, label, result.terminated


def _write(job: tuple[Path, int | None, int, int, int, float]) -> tuple[Path, int, bool]:
    path, idv, rows, onset, seed, settle_h = job
    X, label, shut_down = run(idv, rows, onset, seed, settle_h)
    columns = {"time_min": np.arange(len(X)) * SAMPLE_H * 60, **dict(zip(signal_names(), X.T, strict=True))}
    if path.stem != "normal_train":
        columns["label"] = label
    pacsv.write_csv(pa.table(columns), path)
    return path, len(X), shut_down


def make_suite(out: str | Path, seed: int = 0, faults: Sequence[int] = FAULTS, train_rows: int = 500,
               test_rows: int = 960, onset: int = 160, settle_h: float = SETTLE_H, workers: int | None = None,
               progress: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """Write the suite (module doc) into `out`: normal_train.csv, normal_test.csv and fault_NN.csv per IDV(NN),
    each run on its own noise seed drawn from `seed`; runs go in parallel over `workers` processes (default: one
    per core)."""
    missing = needs_tep_studio()
    if missing:
        raise RuntimeError(missing)
    if not 0 <= seed <= MAX_SEED or len(faults) + 2 > RUN_SEEDS:
        raise ValueError(f"a TE suite's seed must be from 0 to {MAX_SEED}, with fewer than {RUN_SEEDS - 2} faults")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(out / "normal_train.csv", None, train_rows), (out / "normal_test.csv", None, test_rows)]
    plan += [(out / f"fault_{idv:02d}.csv", idv, test_rows) for idv in faults]
    jobs = [(path, idv, rows, onset, RUN_SEEDS * seed + i + 1, settle_h) for i, (path, idv, rows) in enumerate(plan)]
    written = []
    with ProcessPoolExecutor(min(workers or os.cpu_count() or 1, len(jobs))) as pool:
        for i, (path, rows, shut_down) in enumerate(pool.map(_write, jobs)):
            progress(f"[{i + 1}/{len(jobs)}] {path.stem}: {rows} rows" + (", the plant shut down" if shut_down else ""))
            written.append(path)
    return written
