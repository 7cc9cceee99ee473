"""Vital signs: each patient's baseline, a circadian rhythm (lower pressure, pulse and breathing asleep, core
temperature lowest before dawn), correlated Ornstein-Uhlenbeck noise (pulse, pressures and breathing move
together), additive drug and adverse-event effects; then the monitor: measurement noise, quantisation (integers;
0.1 degC for temperature), physiological clipping and sensor faults (drift, stuck, dropout as NaN).

`VitalsModel` keeps the noise state between calls, so a run stepped in chunks equals one stepped at once.

>>> import numpy as np
>>> from sources.patient.cohort import draw_cohort
>>> model = VitalsModel(draw_cohort(3, np.random.default_rng(0)), np.random.default_rng(1))
>>> true = model.step(np.arange(0.0, 24.0, 5 / 60), {})
>>> seen = model.measure(true, np.random.default_rng(2))
>>> sorted(seen) == sorted(VITAL_SIGNALS), seen["hr_bpm"].shape, bool(np.all(seen["hr_bpm"] % 1 == 0))
(True, (3, 288), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np

from core.events import VITAL_SIGNALS
from sources.patient.pkpd import PARALLEL_CHUNK_PATIENTS

SLEEP_START_H, SLEEP_END_H, SLEEP_RAMP_H = 23.0, 7.0, 1.0  # a smooth step into and out of sleep
# asleep minus awake (the nocturnal dip); BP 11/8 mmHg
SLEEP_DIP = {"hr_bpm": -7.0, "sbp_mmhg": -11.0, "dbp_mmhg": -8.0, "spo2_pct": -0.5, "rr_min": -1.5, "temp_c": 0.0}
TEMP_CIRCADIAN_AMPLITUDE_C, TEMP_PEAK_HOUR = 0.3, 17.0  # core temperature: peak late afternoon
# Ornstein-Uhlenbeck: stationary SD and time constant per vital; correlation of the innovations
# SD relative to the patient's baseline for pulse, pressures and breathing, absolute for SpO2 and temperature
OU_RELATIVE_SD = {"hr_bpm": 0.09, "sbp_mmhg": 0.085, "dbp_mmhg": 0.085, "rr_min": 0.10}
OU_SD = {"spo2_pct": 0.6, "temp_c": 0.12}
OU_TAU_H = {"hr_bpm": 0.5, "sbp_mmhg": 0.75, "dbp_mmhg": 0.75, "spo2_pct": 0.5, "rr_min": 0.5, "temp_c": 2.0}
OU_CORRELATION = np.array([  # order: VITAL_SIGNALS
    [1.00, 0.35, 0.30, 0.00, 0.40, 0.10],
    [0.35, 1.00, 0.70, 0.00, 0.20, 0.00],
    [0.30, 0.70, 1.00, 0.00, 0.15, 0.00],
    [0.00, 0.00, 0.00, 1.00, -0.10, 0.00],
    [0.40, 0.20, 0.15, -0.10, 1.00, 0.05],
    [0.10, 0.00, 0.00, 0.00, 0.05, 1.00],
])
# monitor: noise SD and quantum per reading
MONITOR_NOISE_SD = {"hr_bpm": 1.0, "sbp_mmhg": 3.0, "dbp_mmhg": 2.5, "spo2_pct": 0.6, "rr_min": 0.8, "temp_c": 0.05}
QUANTUM = {"hr_bpm": 1.0, "sbp_mmhg": 1.0, "dbp_mmhg": 1.0, "spo2_pct": 1.0, "rr_min": 1.0, "temp_c": 0.1}
PHYSIOLOGICAL_RANGE = {"hr_bpm": (25.0, 220.0), "sbp_mmhg": (50.0, 250.0), "dbp_mmhg": (25.0, 150.0),
                       "spo2_pct": (60.0, 100.0), "rr_min": (4.0, 60.0), "temp_c": (33.0, 42.5)}
MIN_PULSE_PRESSURE_MMHG = 15.0
# the noise's excursions are squashed (tanh) beyond this many SDs: a resting patient's vitals wander, but a
# Gaussian tail would, over weeks of 5-min readings, show a healthy patient at 30 bpm now and then
OU_SOFT_LIMIT_SD = 2.0
# a drifting sensor moves this far per hour at magnitude 1 (a pulse oximeter's reading creeping down, etc.)
DRIFT_PER_H = {"hr_bpm": 2.0, "sbp_mmhg": 3.0, "dbp_mmhg": 2.0, "spo2_pct": -0.5, "rr_min": 0.5, "temp_c": 0.1}
_INDEX = {name: i for i, name in enumerate(VITAL_SIGNALS)}


@dataclass(frozen=True)
class SensorFault:
    """One monitor fault on one vital. `active`: (n_patients, n_steps) where it acts in this chunk;
    `hours_since_onset` (same shape) for drift; `magnitude` scales the drift rate."""

    kind: Literal["drift", "stuck", "dropout"]
    signal: str
    active: np.ndarray
    hours_since_onset: np.ndarray | None = None
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.signal not in VITAL_SIGNALS:
            raise ValueError(f"unknown vital {self.signal!r}; allowed: {', '.join(VITAL_SIGNALS)}")
        if self.kind not in ("drift", "stuck", "dropout"):
            raise ValueError(f"unknown sensor fault {self.kind!r}; allowed: drift, stuck, dropout")
        if self.kind == "drift" and self.hours_since_onset is None:
            raise ValueError("a drift fault needs hours_since_onset")


def asleep_fraction(t_h: np.ndarray) -> np.ndarray:
    """0 awake, 1 asleep, smooth over `SLEEP_RAMP_H` at either end (t_h: hours since a midnight)."""
    hour = np.mod(np.asarray(t_h, float), 24.0)

    def signed(from_h: float) -> np.ndarray:  # hours after `from_h`, wrapped into [-12, 12)
        return np.mod(hour - from_h + 12.0, 24.0) - 12.0

    k = 4.0 / SLEEP_RAMP_H
    return 1.0 / (1.0 + np.exp(-k * signed(SLEEP_START_H))) / (1.0 + np.exp(k * signed(SLEEP_END_H)))


def circadian(t_h: np.ndarray) -> dict[str, np.ndarray]:
    """The population's circadian deltas (n_steps,) on each vital."""
    sleep = asleep_fraction(t_h)
    out = {name: SLEEP_DIP[name] * sleep for name in VITAL_SIGNALS}
    out["temp_c"] = TEMP_CIRCADIAN_AMPLITUDE_C * np.cos(2 * np.pi * (np.asarray(t_h, float) - TEMP_PEAK_HOUR) / 24.0)
    return out


_LO = np.array([PHYSIOLOGICAL_RANGE[n][0] for n in VITAL_SIGNALS])
_HI = np.array([PHYSIOLOGICAL_RANGE[n][1] for n in VITAL_SIGNALS])
_NOISE_SD = np.array([MONITOR_NOISE_SD[n] for n in VITAL_SIGNALS])
_QUANTUM = np.array([QUANTUM[n] for n in VITAL_SIGNALS])
_SBP, _DBP = VITAL_SIGNALS.index("sbp_mmhg"), VITAL_SIGNALS.index("dbp_mmhg")


# Noise is read from a shared table of standard normals (as the reactors' measurement layer does): a memory read
# instead of a random-number generation. Each patient has a 64-bit seed; a run of `NOISE_RUN` steps starts at
# an offset hashed from (seed, run number) and reads the table contiguously from there. The offset depends on
# the step's count since the start, not on the chunk, so a run stepped in chunks equals one stepped at once.
NOISE_TABLE_BITS = 20
_NOISE_MASK = np.uint64((1 << NOISE_TABLE_BITS) - 1)
NOISE_RUN = 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_NOISE_TABLE: list[np.ndarray] = []


def noise_table() -> np.ndarray:
    """The shared table of 2**NOISE_TABLE_BITS standard normals (made once, from a fixed seed)."""
    if not _NOISE_TABLE:
        _NOISE_TABLE.append(np.random.default_rng(19750314).standard_normal(1 << NOISE_TABLE_BITS))
    return _NOISE_TABLE[0]


def _seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    """One 64-bit noise seed per patient."""
    return rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)


@numba.njit(inline="always")
def _offset(seed, run):
    """Where run `run` of a patient with `seed` starts in the table (splitmix64 of seed + run * golden)."""
    z = seed + np.uint64(run) * _GOLDEN + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True, parallel=True)
def _true_vitals(table, seeds, count, x0, chol, decay, scale, sd, base, circ, effs, soft, lo, hi, min_pp, sbp, dbp,
                 out):
    """One pass per patient: correlate the innovations (standard normals from `table`, read from runs of
    NOISE_RUN steps at offsets hashed from the patient's seed and the step's `count` since the start; times the
    Cholesky factor), the Ornstein-Uhlenbeck update in SD units (state x0 (n_p, k), updated), the soft limit,
    baseline + circadian, then the effects (`effs`: one (n_p, n_s) array per vital, (0, 0) where nothing acts
    on it) and the physiological clipping; out (k, n_p, n_s)."""
    k, n_p, n_s = out.shape
    two_over_soft = 2.0 / soft
    for p in numba.prange(n_p):  # a patient at a time: its k rows of `out` are written in order
        amp = np.empty(k)
        for j in range(k):
            amp[j] = soft * sd[p, j]
        start = np.uint64(0)
        for s in range(n_s):
            c = count + s
            if s == 0 or c % NOISE_RUN == 0:  # a new run of reads
                start = _offset(seeds[p], c // NOISE_RUN)
            at = start + np.uint64((c % NOISE_RUN) * k)
            for j in range(k):
                z = 0.0
                for i in range(j + 1):
                    z += chol[j, i] * table[(at + np.uint64(i)) & _NOISE_MASK]
                x = x0[p, j] * decay[j] + scale[j] * z
                x0[p, j] = x
                # tanh through exp: libm tanh costs several times as much
                out[j, p, s] = base[p, j] + circ[j, s] + amp[j] * (1.0 - 2.0 / (math.exp(x * two_over_soft) + 1.0))
        for j in range(k):
            eff = effs[j]
            acted = eff.shape[0] > 0
            for s in range(n_s):
                v = out[j, p, s] + eff[p, s] if acted else out[j, p, s]
                out[j, p, s] = min(max(v, lo[j]), hi[j])
        for s in range(n_s):
            v = min(out[dbp, p, s], out[sbp, p, s] - min_pp)
            out[dbp, p, s] = min(max(v, lo[dbp]), hi[dbp])


@numba.njit(cache=True, parallel=True)
def _monitor(true, table, seeds, noise_sd, quantum, lo, hi, out):
    """Monitor noise (standard normals from `table`: per patient and vital, runs of NOISE_RUN steps at offsets
    hashed from the patient's seed), quantisation (half to even, as np.round) and clipping; true and out
    (k, n_p, n_s)."""
    k, n_p, n_s = true.shape
    for p in numba.prange(n_p):
        for j in range(k):
            sd, q, low, high = noise_sd[j], quantum[j], lo[j], hi[j]
            for run in range(n_s // NOISE_RUN + 1):  # a run of reads at a time: no test per reading
                at = _offset(seeds[p], j * (n_s // NOISE_RUN + 1) + run)
                first = run * NOISE_RUN
                for s in range(first, min(n_s, first + NOISE_RUN)):
                    e = table[(at + np.uint64(s - first)) & _NOISE_MASK]
                    # integer quanta need no division (x / 1 is x exactly): the same readings, cheaper
                    v = np.rint(true[j, p, s] + sd * e) if q == 1.0 else np.rint((true[j, p, s] + sd * e) / q) * q
                    out[j, p, s] = min(max(v, low), high) if v == v else v


def _stacked(true: dict[str, np.ndarray]) -> np.ndarray:
    """(k, n_p, n_s): the base array when `true` holds the rows of one (as `VitalsModel.step` returns), else
    a stacked copy."""
    base = true[VITAL_SIGNALS[0]].base
    if (isinstance(base, np.ndarray) and base.ndim == 3 and base.shape[0] == len(VITAL_SIGNALS)
            and base.dtype == np.float64 and base.flags.c_contiguous
            and all(true[name].base is base and true[name].ctypes.data == base[j].ctypes.data
                    and true[name].shape == base.shape[1:] for j, name in enumerate(VITAL_SIGNALS))):
        return base
    return np.stack([np.asarray(true[name], float) for name in VITAL_SIGNALS])


_NO_EFFECT = np.zeros((0, 0))


def _effect(delta: np.ndarray | float, shape: tuple[int, int]) -> np.ndarray:
    """An effect as the kernel takes it: the array itself where it has the shape (cohort_sim's have: stacking
    them into one array cost a tenth of the pass), else a broadcast copy."""
    delta = np.asarray(delta, float)
    if delta.shape == shape and delta.flags.c_contiguous and delta.flags.writeable:
        return delta
    return np.array(np.broadcast_to(delta, shape))


class VitalsModel:
    """True and measured vitals of a cohort; keeps the Ornstein-Uhlenbeck and stuck-sensor state."""

    def __init__(self, cohort, rng: np.random.Generator) -> None:
        self.baseline = {name: np.asarray(getattr(cohort, name), float) for name in VITAL_SIGNALS}
        self.n = len(cohort)
        self.rng = rng
        self._chol = np.linalg.cholesky(OU_CORRELATION)
        self._sd = np.stack([OU_RELATIVE_SD[n] * self.baseline[n] if n in OU_RELATIVE_SD
                             else np.full(self.n, OU_SD[n]) for n in VITAL_SIGNALS], axis=1)  # (n, k)
        self._tau = np.array([OU_TAU_H[n] for n in VITAL_SIGNALS])
        # start from the stationary distribution
        self._x = rng.normal(size=(self.n, len(VITAL_SIGNALS))) @ self._chol.T
        self._seeds = _seeds(rng, self.n)
        self._count = 0  # steps taken so far: where the noise reads go on
        self._base = np.ascontiguousarray(np.stack([self.baseline[n] for n in VITAL_SIGNALS], axis=1))
        self._last_t_h: float | None = None
        self._held = {name: np.full(self.n, np.nan) for name in VITAL_SIGNALS}

    def step(self, t_h: np.ndarray, effects: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """True vitals (n_patients, n_steps) at hours `t_h` (since a midnight; equally spaced). `effects`: additive
        deltas by vital name (others, e.g. `hb_g_dl`, are ignored here)."""
        t_h = np.asarray(t_h, float)
        if t_h.ndim != 1 or len(t_h) == 0:
            raise ValueError(f"t_h must be a non-empty 1-d array of hours; got shape {t_h.shape}")
        dt_h = float(t_h[1] - t_h[0]) if len(t_h) > 1 else (
            float(t_h[0] - self._last_t_h) if self._last_t_h is not None else 5 / 60)
        if dt_h <= 0:
            raise ValueError(f"t_h must increase; got a step of {dt_h} h")
        self._last_t_h = float(t_h[-1])
        n_s, k = len(t_h), len(VITAL_SIGNALS)
        decay = np.exp(-dt_h / self._tau)
        circ = circadian(t_h)
        effs = tuple(_effect(effects[name], (self.n, n_s)) if name in effects else _NO_EFFECT
                     for name in VITAL_SIGNALS)
        out = np.empty((k, self.n, n_s))
        # the state runs in SD units (so one decay and scale per vital); times each patient's SD in the kernel
        with numba.parallel_chunksize(PARALLEL_CHUNK_PATIENTS):
            _true_vitals(noise_table(), self._seeds, self._count, self._x, self._chol, decay,
                         np.sqrt(1.0 - decay**2), self._sd, self._base, np.stack([circ[name] for name in VITAL_SIGNALS]),
                         effs, OU_SOFT_LIMIT_SD, _LO, _HI, MIN_PULSE_PRESSURE_MMHG, _SBP, _DBP, out)
        self._count += n_s
        return dict(zip(VITAL_SIGNALS, out, strict=True))

    def measure(self, true: dict[str, np.ndarray], rng: np.random.Generator,
                faults: list[SensorFault] | tuple[SensorFault, ...] = ()) -> dict[str, np.ndarray]:
        """What the monitor shows: noise, quantisation, clipping, then the faults (NaN for a dropout)."""
        stacked = _stacked(true)
        seen = np.empty_like(stacked)
        with numba.parallel_chunksize(PARALLEL_CHUNK_PATIENTS):
            _monitor(stacked, noise_table(), _seeds(rng, stacked.shape[1]), _NOISE_SD, _QUANTUM, _LO, _HI, seen)
        out = dict(zip(VITAL_SIGNALS, seen, strict=True))
        for f in faults:
            v = out[f.signal]
            if f.kind == "drift":
                drift = DRIFT_PER_H[f.signal] * f.magnitude * np.nan_to_num(f.hours_since_onset)
                shifted = np.round((v + drift) / QUANTUM[f.signal]) * QUANTUM[f.signal]
                out[f.signal] = np.where(f.active, np.clip(shifted, *PHYSIOLOGICAL_RANGE[f.signal]), v)
            elif f.kind == "stuck":
                out[f.signal] = self._stuck(v, f.active, self._held[f.signal])
            else:  # in place: `v` is a row of this call's own array
                np.copyto(v, np.nan, where=f.active)
        for name in VITAL_SIGNALS:  # remember the last good value, for a sensor that sticks in the next chunk
            self._held[name] = out[name][:, -1].copy()
        return out

    @staticmethod
    def _stuck(v: np.ndarray, active: np.ndarray, carried: np.ndarray) -> np.ndarray:
        """Where active, repeat the last reading before the fault began (carried from the previous chunk)."""
        padded = np.concatenate([carried[:, None], v], axis=1)
        act = np.concatenate([np.zeros((len(v), 1), bool), active], axis=1)
        idx = np.where(act, 0, np.arange(padded.shape[1])[None, :])
        np.maximum.accumulate(idx, axis=1, out=idx)
        held = np.take_along_axis(padded, idx, axis=1)[:, 1:]
        return np.where(active, held, v)
