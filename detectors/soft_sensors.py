"""Soft sensors: VCD and glucose between the daily assays, from the online signals, corrected by each assay.

VCD: the capacitance probe reads viable biovolume, so VCD ~ k x capacitance; the gain k (cells per unit of
capacitance: it falls as cells grow larger after the temperature shift) is a Kalman-filtered state, random walk
with `k_drift_per_day`, updated by every assay against the capacitance read at the assay's *sample* time (the
result arrives hours later). Glucose: a mass balance from the last assay — plus the glucose the feed brought
(feed volume x `feed_glucose_g_l` over the broth volume), minus a specific uptake rate q times the integral of
the estimated VCD; q is the Kalman-filtered state, updated by each assay's innovation. Before the first assay
glucose starts at `initial_glucose_g_l`.

>>> import numpy as np
>>> soft = SoftSensors()
>>> minutes = np.arange(120.0)
>>> vcd, glc = soft.update(minutes * 60e6, np.full(120, 2.0), np.zeros(120), np.full(120, 1.6))
>>> round(float(vcd[-1]), 2), bool(glc[-1] < glc[0])
(2.4, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

HISTORY_US = 4 * 86_400_000_000  # enough to find the sample time of a result reported up to days later
EXACT_US = 12 * 3_600_000_000  # every tick for this long (lab delays are hours); older, one tick per bucket
BUCKET_US = 600_000_000


@njit(cache=True, nogil=True)
def _integrate(ts_us: np.ndarray, capacitance: np.ndarray, feed_ml: np.ndarray, volume_l: np.ndarray, k: float,
               feed_glucose_g_l: float, last_us: int, last_vcd: float, integral0: float, fed0: float,
               vcd: np.ndarray, integral: np.ndarray, fed: np.ndarray) -> None:
    """Per tick, in one pass: VCD = k x capacitance (a missing reading carries the last estimate forward), the
    running integral of VCD dt (h) and the running glucose the feed brought (g/L; none without a volume)."""
    v, acc, brought, prev_us = last_vcd, 0.0, 0.0, last_us
    for i in range(ts_us.shape[0]):
        if not np.isnan(capacitance[i]):
            v = max(k * capacitance[i], 0.0)
        vcd[i] = v
        acc += v * ((ts_us[i] - prev_us) / 3.6e9)
        prev_us = ts_us[i]
        integral[i] = integral0 + acc  # the batch's sum, then the carried total: as a cumsum rounds
        if volume_l[i] > 0 and not np.isnan(feed_ml[i]):
            brought += feed_ml[i] * feed_glucose_g_l / (volume_l[i] * 1000.0)
        fed[i] = fed0 + brought


@dataclass
class SoftSensors:
    k: float = 1.2  # e6 cells/mL per pF/cm, the twin's normal runs before the temperature shift
    k_var: float = 0.3 ** 2
    k_drift_per_day: float = 0.08
    k_meas_rel_sd: float = 0.08  # VCD assay CV plus probe noise
    q: float = 0.012  # g/L glucose per (e6 cells/mL x h)
    q_var: float = 0.006 ** 2
    q_drift_per_day: float = 0.002
    glucose_sd: float = 0.15  # g/L, assay
    feed_glucose_g_l: float = 140.0
    initial_glucose_g_l: float = 6.0
    anchor_us: int | None = None  # sample time of the last glucose anchor
    anchor_glucose: float | None = None
    last_us: int | None = None
    last_vcd: float = 0.0
    integral: float = 0.0  # running integral of VCD dt (e6/mL x h)
    fed: float = 0.0  # running glucose brought by the feed (g/L)
    history: dict[str, np.ndarray] = field(default_factory=lambda: {
        k: np.zeros(0, np.int64 if k == "us" else np.float64) for k in ("us", "cap", "integral", "fed")})

    def update(self, ts_us: np.ndarray, capacitance: np.ndarray, feed_ml: np.ndarray, volume_l: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Estimates per tick (in time order) from capacitance, the feed per tick (mL) and the volume (L)."""
        n = len(ts_us)
        if n == 0:
            return np.zeros(0), np.zeros(0)
        ts_us = np.asarray(ts_us, dtype=np.int64)
        capacitance = np.asarray(capacitance, dtype=np.float64)
        if self.anchor_us is None:
            self.anchor_us, self.anchor_glucose = int(ts_us[0]), self.initial_glucose_g_l
        vcd, integral, fed = np.empty(n), np.empty(n), np.empty(n)
        _integrate(ts_us, capacitance, np.asarray(feed_ml, dtype=np.float64), np.asarray(volume_l, dtype=np.float64),
                   self.k, self.feed_glucose_g_l, self.last_us if self.last_us is not None else int(ts_us[0]),
                   self.last_vcd, self.integral, self.fed, vcd, integral, fed)
        self.last_vcd, self.integral, self.fed, self.last_us = float(vcd[-1]), float(integral[-1]), float(fed[-1]), \
            int(ts_us[-1])
        self._remember(ts_us, capacitance, integral, fed)
        h = self.history
        i = self._at(self.anchor_us)
        i_a, f_a = (h["integral"][i], h["fed"][i]) if i is not None else (0.0, 0.0)
        glucose = np.maximum(self.anchor_glucose + (fed - f_a) - self.q * (integral - i_a), 0.0)
        return vcd, glucose

    def _remember(self, ts_us: np.ndarray, capacitance: np.ndarray, integral: np.ndarray, fed: np.ndarray,
                  ) -> None:
        """Append to the history, keeping every tick of the last `EXACT_US` and the first tick of each
        `BUCKET_US` before (a result reported that late is matched to within ten minutes). The history is in
        every recovery snapshot of the monitor: days of every tick would be most of a reactor's snapshot."""
        h = {key: np.concatenate([self.history[key], values]) for key, values in (
            ("us", ts_us), ("cap", np.asarray(capacitance, dtype=np.float64)), ("integral", integral), ("fed", fed))}
        us = h["us"]
        old = int(np.searchsorted(us, us[-1] - EXACT_US))
        keep_from = int(np.searchsorted(us, us[-1] - HISTORY_US))
        if old > keep_from:
            bucket = us[keep_from:old] // BUCKET_US
            kept = np.concatenate([keep_from + np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]),
                                   np.arange(old, len(us))])
            h = {key: values[kept] for key, values in h.items()}
        elif keep_from:
            h = {key: values[keep_from:] for key, values in h.items()}
        self.history = h

    def _at(self, us: int) -> int | None:
        i = int(np.searchsorted(self.history["us"], us, side="right")) - 1
        return i if i >= 0 else None

    def on_assay(self, sample_us: int, vcd: float | None, glucose: float | None) -> None:
        """A lab result for a sample drawn at `sample_us` (in the past): correct k and q, re-anchor glucose."""
        i = self._at(sample_us)
        if i is None:
            return
        h = self.history
        days = (self.last_us - sample_us) / 8.64e10 if self.last_us else 0.0
        if vcd is not None and not np.isnan(h["cap"][i]) and h["cap"][i] > 0:
            self.k_var += self.k_drift_per_day ** 2 * max(days, 1.0)
            r = (self.k_meas_rel_sd * vcd / h["cap"][i]) ** 2
            gain = self.k_var / (self.k_var + r)
            self.k += gain * (vcd / h["cap"][i] - self.k)
            self.k_var *= 1.0 - gain
        if glucose is not None and self.anchor_us is not None and sample_us > self.anchor_us:
            j = self._at(self.anchor_us)
            d_int = h["integral"][i] - (h["integral"][j] if j is not None else 0.0)
            d_fed = h["fed"][i] - (h["fed"][j] if j is not None else 0.0)
            predicted = self.anchor_glucose + d_fed - self.q * d_int
            self.q_var += self.q_drift_per_day ** 2 * max(days, 1.0)
            sens = -d_int  # d predicted / d q
            gain = self.q_var * sens / (sens * self.q_var * sens + self.glucose_sd ** 2)
            self.q = max(self.q + gain * (glucose - predicted), 0.0)
            self.q_var *= 1.0 - gain * sens
        if glucose is not None and (self.anchor_us is None or sample_us >= self.anchor_us):
            self.anchor_us, self.anchor_glucose = sample_us, glucose
