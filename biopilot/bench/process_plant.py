"""A small continuous plant under control, and the suite of labelled CSV runs `biopilot bench detect` reads from
it (`--make-plant DIR`): a stand-in, of the same shape, for the public continuous-process benchmarks of the
MSPC literature (the Tennessee Eastman process, Downs & Vogel 1993; its fault set, Chiang, Russell & Braatz 2000).

The plant (`draw_plant`, one seed): a stable random linear state-space model x_t+1 = A x_t + B v_t + E d_t + w_t
with `STATES` states (eigenvalues 0.5-0.9 in modulus, some complex: time constants of a few rows, as a plant sampled every few
minutes, with damped oscillations), `MVS`
manipulated variables v (valve positions) and `DISTURBANCES` disturbance inputs d, each an AR(1) (coefficient
`DISTURBANCE_AR`); `MEASURED` measurements y = C x + noise, each mixing a few states; the first `MVS` of them held at
set-points by a multivariable integral controller (increments K G^-1 e, G the steady-state gain, K the one of a
few that gives the most stable closed loop; matrices drawn again until G is well conditioned and the loop
stable); measurement noise 0.2-1.0 of each measurement's sd; the last `ANALYSERS` measurements are sampled and held every `HOLD` rows, as a
composition analyser is. A run records the measurements and the controller's outputs: a few dozen correlated,
autocorrelated, stationary signals.

The suite (TE's protocol): a normal training run (`train_rows`, 500 by default as TE's d00), a normal test run
and one run per fault (`test_rows` each, 960 by default), every run from its own noise seed after a settling
stretch; a fault starts at `onset` (160) and lasts to the end (label 1 from there). The faults, sized a priori
in units of the normal variation of what they act on (not tuned to any detector):

- steps: +3 sd on each of disturbances 0-4, a +3 sd offset on valve 1's actual position (a partly lost feed);
- random variation: disturbances 0-3's innovations x 3;
- slow drift: disturbance 5 ramping to +6 sd by the end;
- an oscillation: disturbance 6 gains a sine of 2 sd, period 50 rows;
- sticking valves: valves 0 and 3 move only once the command is 0.5 sd (of the valve's position) away;
- a valve stuck where it was at the onset (valve 2, TE's fault 21);
- sensors: a +2 sd bias on a controlled measurement (y0; the loop moves the plant to follow it), and on a free
  one (y10) a +3 sd bias, a drift to +4 sd by the end, a reading stuck at its last value.

>>> plant = draw_plant(0)
>>> names, Y, label = run(plant, 960, FAULTS["step_d0"], 160, seed=1)
>>> Y.shape, len(names), int(label.sum())
((960, 36), 36, 800)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

STATES = 14
MVS = 6
DISTURBANCES = 8
MEASURED = 30
ANALYSERS = 6
HOLD = 5
DISTURBANCE_AR = 0.8
SETTLE_ROWS = 600  # rows simulated and dropped before a run is recorded: the controller settles


@dataclass
class Plant:
    A: np.ndarray  # [STATES, STATES]
    B: np.ndarray  # [STATES, MVS]
    E: np.ndarray  # [STATES, DISTURBANCES]
    C: np.ndarray  # [MEASURED, STATES]
    gain: np.ndarray  # [MVS, MVS] the integral controller's increment per unit error of the controlled measurements
    noise_sd: np.ndarray  # [MEASURED] measurement noise
    d_sd: np.ndarray  # [DISTURBANCES] each disturbance's stationary sd
    y_sd: np.ndarray  # [MEASURED] each measurement's normal sd (a normal run's), for sizing sensor faults
    v_sd: np.ndarray  # [MVS] each valve's normal sd


@dataclass(frozen=True)
class Fault:
    """What departs from normal at the onset: `kind` and the index it acts on (module doc)."""

    kind: str  # step | variation | drift | sine | stiction | stuck_valve | valve_offset | bias | sensor_drift | frozen
    index: int
    size: float  # in sd of what it acts on (the innovation factor for `variation`)


FAULTS: dict[str, Fault | None] = {
    "normal": None,
    **{f"step_d{k}": Fault("step", k, 3.0) for k in range(5)},
    "valve1_offset": Fault("valve_offset", 1, 3.0),
    **{f"variation_d{k}": Fault("variation", k, 3.0) for k in range(4)},
    "drift_d5": Fault("drift", 5, 6.0),
    "oscillation_d6": Fault("sine", 6, 2.0),
    "stiction_v0": Fault("stiction", 0, 0.5),
    "stiction_v3": Fault("stiction", 3, 0.5),
    "stuck_v2": Fault("stuck_valve", 2, 0.0),
    "bias_y0_controlled": Fault("bias", 0, 2.0),
    "bias_y10": Fault("bias", 10, 3.0),
    "drift_y10": Fault("sensor_drift", 10, 4.0),
    "frozen_y10": Fault("frozen", 10, 0.0),
}


def stable_dynamics(rng: np.random.Generator) -> np.ndarray:
    """A = Q T Q' with T block-diagonal (real poles and damped rotations, moduli 0.5-0.9) and Q orthogonal."""
    T = np.zeros((STATES, STATES))
    i = 0
    while i < STATES:
        r = rng.uniform(0.5, 0.9)
        if i + 1 < STATES and rng.random() < 0.4:
            angle = rng.uniform(0.05, 0.4)
            T[i:i + 2, i:i + 2] = r * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            i += 2
        else:
            T[i, i] = r
            i += 1
    Q, _ = np.linalg.qr(rng.normal(size=(STATES, STATES)))
    return Q @ T @ Q.T


def closed_loop_radius(A: np.ndarray, B: np.ndarray, C: np.ndarray, gain: np.ndarray) -> float:
    """Spectral radius of [x; v] under v_t+1 = v_t + gain (0 - C_cv x_t) (noise and set-points aside)."""
    top = np.hstack([A, B])
    bottom = np.hstack([-gain @ C[:MVS], np.eye(MVS)])
    return float(np.abs(np.linalg.eigvals(np.vstack([top, bottom]))).max())


def draw_plant(seed: int) -> Plant:
    """The plant's matrices and controller (module doc), drawn again until the controlled plant is well posed
    (steady-state gain condition number under 20, closed-loop spectral radius under 0.99); its measurement
    noise 0.2-1.0 of each measurement's own normal sd, and its normal sds from a long normal run."""
    rng = np.random.default_rng(seed)
    while True:
        A = stable_dynamics(rng)
        B = rng.normal(size=(STATES, MVS)) * 0.5
        E = rng.normal(size=(STATES, DISTURBANCES)) * 0.4
        C = np.zeros((MEASURED, STATES))
        for j in range(MEASURED):  # each measurement mixes 2-4 states
            picked = rng.choice(STATES, size=rng.integers(2, 5), replace=False)
            C[j, picked] = rng.normal(size=len(picked))
        G = C[:MVS] @ np.linalg.solve(np.eye(STATES) - A, B)  # steady-state gain, valves -> controlled measurements
        if np.linalg.cond(G) > 20:
            continue
        # the most stable loop among a few gains (too high: unstable; too low: the integrators barely act)
        k = min((0.5, 0.3, 0.2, 0.1, 0.05), key=lambda k: closed_loop_radius(A, B, C, k * np.linalg.inv(G)))
        if closed_loop_radius(A, B, C, k * np.linalg.inv(G)) < 0.99:
            break
    d_sd = np.full(DISTURBANCES, 1 / np.sqrt(1 - DISTURBANCE_AR**2))
    plant = Plant(A, B, E, C, k * np.linalg.inv(G), np.zeros(MEASURED), d_sd, np.ones(MEASURED), np.ones(MVS))
    clean = simulate(plant, 5000, None, 0, np.random.default_rng(seed + 1))[:, :MEASURED].std(axis=0)
    plant.noise_sd = rng.uniform(0.2, 1.0, MEASURED) * clean
    Y = simulate(plant, 5000, None, 0, np.random.default_rng(seed + 2))
    plant.y_sd, plant.v_sd = Y[:, :MEASURED].std(axis=0), Y[:, MEASURED:].std(axis=0)
    return plant


def simulate(plant: Plant, rows: int, fault: Fault | None, onset: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, MEASURED + MVS]: the measurements (analysers held) and the valve commands, after SETTLE_ROWS."""
    total = SETTLE_ROWS + rows
    start = SETTLE_ROWS + onset
    x, d = np.zeros(STATES), np.zeros(DISTURBANCES)
    command, valve = np.zeros(MVS), np.zeros(MVS)
    out = np.zeros((total, MEASURED + MVS))
    held = np.zeros(ANALYSERS)
    for t in range(total):
        active = fault is not None and t >= start
        progress = (t - start + 1) / (total - start) if active else 0.0
        innovation = rng.normal(size=DISTURBANCES)
        if active and fault.kind == "variation":
            innovation[fault.index] *= fault.size
        d = DISTURBANCE_AR * d + innovation
        offset = np.zeros(DISTURBANCES)
        if active and fault.kind in ("step", "drift", "sine"):
            size = fault.size * plant.d_sd[fault.index]
            offset[fault.index] = {"step": size, "drift": size * progress,
                                   "sine": size * np.sin(2 * np.pi * (t - start) / 50)}[fault.kind]
        y = plant.C @ x + plant.noise_sd * rng.normal(size=MEASURED)
        reading = y.copy()
        if active and fault.kind == "bias":
            reading[fault.index] += fault.size * plant.y_sd[fault.index]
        elif active and fault.kind == "sensor_drift":
            reading[fault.index] += fault.size * plant.y_sd[fault.index] * progress
        elif active and fault.kind == "frozen":
            reading[fault.index] = out[t - 1, fault.index]
        if t % HOLD == 0:  # the analysers report every HOLD rows and hold their reading in between
            held = reading[-ANALYSERS:].copy()
        reading[-ANALYSERS:] = held
        command = command - plant.gain @ reading[:MVS]  # set-points at 0: integral action on the error
        if active and fault.kind == "stiction":
            if abs(command[fault.index] - valve[fault.index]) > fault.size * plant.v_sd[fault.index]:
                valve[fault.index] = command[fault.index]
            valve_now = command.copy()
            valve_now[fault.index] = valve[fault.index]
        elif active and fault.kind == "stuck_valve":
            valve_now = command.copy()
            valve_now[fault.index] = valve[fault.index]  # where it was at the onset
        else:
            valve_now = command.copy()
            valve[:] = command
            if active and fault.kind == "valve_offset":
                valve_now[fault.index] += fault.size * plant.v_sd[fault.index]
        out[t] = np.concatenate([reading, command])
        x = plant.A @ x + plant.B @ valve_now + plant.E @ (d + offset) + 0.1 * rng.normal(size=STATES)
    return out[SETTLE_ROWS:]


def signal_names() -> list[str]:
    return [f"y{j}" for j in range(MEASURED)] + [f"v{j}" for j in range(MVS)]


def run(plant: Plant, rows: int, fault: Fault | None, onset: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One run: signal names, [rows, signals], 0/1 label (1 from the onset when there is a fault)."""
    Y = simulate(plant, rows, fault, onset, np.random.default_rng(seed))
    label = np.zeros(rows, dtype=np.int64)
    if fault is not None:
        label[onset:] = 1
    return signal_names(), Y, label


def make_suite(out: str | Path, seed: int = 0, train_rows: int = 500, test_rows: int = 960, onset: int = 160,
               progress: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """Write the suite (module doc) into `out`: normal_train.csv, normal_test.csv and one file per fault."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plant = draw_plant(seed)
    plan = [("normal_train", None, train_rows)] + [(name, fault, test_rows) for name, fault in FAULTS.items()]
    written = []
    for i, (name, fault, rows) in enumerate(plan):
        progress(f"[{i + 1}/{len(plan)}] {name}")
        names, Y, label = run(plant, rows, fault, onset, seed=1000 * (seed + 1) + i)
        path = out / ("normal_test.csv" if name == "normal" else f"{name}.csv")
        pacsv.write_csv(pa.table({"time_min": np.arange(rows) * 3.0, **{n: Y[:, j] for j, n in enumerate(names)},
                                  "label": label}), path)
        written.append(path)
    return written
