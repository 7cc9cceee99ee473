"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017): points per vital sign, summed.

Scored as a bedside monitor can: consciousness taken as Alert and the patient on air (no supplemental oxygen),
SpO2 on scale 1 (no hypercapnic respiratory failure). Each band's upper edge is inclusive, as in the chart
(pulse 41-50 scores 1, 51-90 scores 0); a reading between two integer bands (a mean, a temperature of 36.05)
falls in the band whose edge it has passed. An aggregate of 5-6 (or 3 in one parameter) calls for an urgent
review, 7 or more for an emergency one.

>>> import numpy as np
>>> news2_points(np.array([72.0, 118.0, 72.0]), np.array([128.0, 88.0, 128.0]), np.array([97.0, 90.0, np.nan]),
...              np.array([16.0, 26.0, 16.0]), np.array([36.8, 39.4, 36.8])).tolist()
[0.0, 13.0, nan]
"""

from __future__ import annotations

import numpy as np

# per parameter: the upper edges of its bands (inclusive) and the points of each band, the last band open above
BANDS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "rr_min": ((8.0, 11.0, 20.0, 24.0), (3.0, 1.0, 0.0, 2.0, 3.0)),
    "spo2_pct": ((91.0, 93.0, 95.0), (3.0, 2.0, 1.0, 0.0)),
    "sbp_mmhg": ((90.0, 100.0, 110.0, 219.0), (3.0, 2.0, 1.0, 0.0, 3.0)),
    "hr_bpm": ((40.0, 50.0, 90.0, 110.0, 130.0), (3.0, 1.0, 0.0, 1.0, 2.0, 3.0)),
    "temp_c": ((35.0, 36.0, 38.0, 39.0), (3.0, 1.0, 0.0, 1.0, 2.0)),
}
NEWS2_VITALS: tuple[str, ...] = tuple(BANDS)  # the scored vitals (DBP is not scored)
URGENT, EMERGENCY = 5.0, 7.0  # aggregate thresholds of the clinical response


def parameter_points(name: str, values: np.ndarray) -> np.ndarray:
    """The points of one parameter's readings (NaN where missing).

    >>> parameter_points("hr_bpm", np.array([40.0, 41.0, 50.0, 51.0, 131.0])).tolist()
    [3.0, 1.0, 1.0, 0.0, 3.0]
    """
    edges, points = BANDS[name]
    x = np.asarray(values, float)
    scored = np.asarray(points)[np.searchsorted(np.asarray(edges), np.nan_to_num(x), side="left")]
    return np.where(np.isnan(x), np.nan, scored)


def news2_components(readings: dict[str, np.ndarray]) -> np.ndarray:
    """Points per parameter, (len(NEWS2_VITALS), n), in the order of `NEWS2_VITALS`."""
    return np.stack([parameter_points(name, readings[name]) for name in NEWS2_VITALS])


def news2_points(hr_bpm: np.ndarray, sbp_mmhg: np.ndarray, spo2_pct: np.ndarray, rr_min: np.ndarray,
                 temp_c: np.ndarray) -> np.ndarray:
    """The aggregate NEWS2 of each reading (vectorised); NaN where any scored vital is missing."""
    parts = news2_components({"hr_bpm": hr_bpm, "sbp_mmhg": sbp_mmhg, "spo2_pct": spo2_pct, "rr_min": rr_min,
                              "temp_c": temp_c})
    return parts.sum(axis=0)
