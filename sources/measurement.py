"""The measurement layer: what the online sensors report about the true process.

Per sensor: Gaussian noise (absolute + relative), a slow per-run calibration drift, rare spikes, quantisation
to the instrument's resolution, and the sensor faults (drift, stuck, dropout) that act on the reading only.

Noise comes from a shared table of standard normals read at random offsets drawn per reactor, sensor and
chunk (the "shared noise table" trick): each reading's noise is still an i.i.d. normal draw for every practical
purpose, but it costs a memory read instead of a random-number generation, which matters at 20M ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from sources.reactor import SIGNAL_NAMES

NOISE_TABLE_BITS = 22
_NOISE_MASK = (1 << NOISE_TABLE_BITS) - 1
_noise_table: np.ndarray | None = None


def noise_table() -> np.ndarray:
    global _noise_table
    if _noise_table is None:
        _noise_table = np.random.default_rng(20100208).standard_normal(1 << NOISE_TABLE_BITS)
    return _noise_table


@dataclass(frozen=True)
class SensorSpec:
    noise_abs: float
    noise_rel: float
    resolution: float
    drift_per_day: float  # standard deviation of the calibration drift rate


SENSOR_SPECS: dict[str, SensorSpec] = {
    "do_pct": SensorSpec(0.3, 0.0, 0.1, 0.08),
    "ph": SensorSpec(0.004, 0.0, 0.001, 0.001),
    "temp_c": SensorSpec(0.02, 0.0, 0.01, 0.004),
    "agitation_rpm": SensorSpec(0.3, 0.0, 0.1, 0.0),
    "air_sccm": SensorSpec(0.15, 0.003, 0.1, 0.0),
    "o2_sccm": SensorSpec(0.15, 0.003, 0.1, 0.0),
    "co2_sccm": SensorSpec(0.05, 0.003, 0.01, 0.0),
    "base_ml": SensorSpec(0.005, 0.0, 0.01, 0.0),
    "feed_ml": SensorSpec(0.005, 0.0, 0.01, 0.0),
    "volume_l": SensorSpec(0.001, 0.0, 0.001, 0.0),
    "our_mmol_l_h": SensorSpec(0.02, 0.02, 0.001, 0.0),
    "cer_mmol_l_h": SensorSpec(0.02, 0.02, 0.001, 0.0),
    "capacitance_pf_cm": SensorSpec(0.03, 0.01, 0.01, 0.02),
}
assert tuple(SENSOR_SPECS) == SIGNAL_NAMES
NOISE_ABS = np.array([s.noise_abs for s in SENSOR_SPECS.values()])
NOISE_REL = np.array([s.noise_rel for s in SENSOR_SPECS.values()])
RESOLUTION = np.array([s.resolution for s in SENSOR_SPECS.values()])
DRIFT_SD = np.array([s.drift_per_day for s in SENSOR_SPECS.values()])

# sensor-fault slots: [kind, signal index, start_h, end_h, magnitude, stuck value]
SF_DRIFT, SF_STUCK, SF_DROPOUT = 0.0, 1.0, 2.0
SENSOR_FAULT_KIND = {"sensor_drift": SF_DRIFT, "sensor_stuck": SF_STUCK, "sensor_dropout": SF_DROPOUT}
MAX_SENSOR_FAULTS = 4


def empty_sensor_faults(n_reactors: int) -> np.ndarray:
    sf = np.full((n_reactors, MAX_SENSOR_FAULTS, 6), np.nan)
    sf[:, :, 0] = -1.0
    return sf


@njit(cache=True, parallel=True, nogil=True)
def measure(true: np.ndarray, table: np.ndarray, offsets: np.ndarray, noise_abs: np.ndarray,
            noise_rel: np.ndarray, resolution: np.ndarray, drift_rate: np.ndarray, t_h0: np.ndarray, dt_h: float,
            noise_scale: float, spikes: np.ndarray, sf: np.ndarray, out: np.ndarray) -> None:
    """true[tick, r, s] -> out[s, r, tick] (NaN = missing). spikes[r, k, (tick, signal, size in sd)] (tick < 0:
    none). sf[r, j, :] sensor faults; a stuck sensor's frozen value is remembered in sf[r, j, 5]."""
    n_t, n_r, n_s = true.shape
    for r in prange(n_r):
        for s in range(n_s):
            off = offsets[r, s]
            for i in range(n_t):
                x = true[i, r, s]
                v = x + noise_scale * (noise_abs[s] + noise_rel[s] * abs(x)) * table[(off + i) & _NOISE_MASK]
                v += drift_rate[r, s] * (t_h0[r] + i * dt_h) / 24.0
                out[s, r, i] = v
        for k in range(spikes.shape[1]):
            i = int(spikes[r, k, 0])
            if i >= 0:
                s = int(spikes[r, k, 1])
                out[s, r, i] += spikes[r, k, 2] * (noise_abs[s] + noise_rel[s] * abs(true[i, r, s]))
        for s in range(n_s):
            res = resolution[s]
            for i in range(n_t):
                out[s, r, i] = max(0.0, round(out[s, r, i] / res) * res)
        for j in range(sf.shape[1]):
            kind = sf[r, j, 0]
            if kind < 0:
                continue
            s = int(sf[r, j, 1])
            for i in range(n_t):
                t = t_h0[r] + i * dt_h
                if not (sf[r, j, 2] <= t < sf[r, j, 3]):
                    continue
                if kind == SF_DRIFT:
                    res = resolution[s]
                    out[s, r, i] = round((out[s, r, i] + sf[r, j, 4] * (t - sf[r, j, 2]) / 24.0) / res) * res
                elif kind == SF_STUCK:
                    if np.isnan(sf[r, j, 5]):
                        sf[r, j, 5] = out[s, r, i - 1] if i > 0 else out[s, r, i]
                    out[s, r, i] = sf[r, j, 5]
                else:
                    out[s, r, i] = np.nan
