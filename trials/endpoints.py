"""A trial's endpoints per patient, from the INRs drawn and the events: time in therapeutic range (Rosendaal),
the share of INR readings at or above the over-anticoagulation level, time to the first therapeutic INR, and
the adverse events (over-anticoagulation: the first INR >= 4; major bleeding) as times with censoring.

Rosendaal's method (Rosendaal FR et al., Thromb Haemost 1993;69:236): the INR is taken to move linearly between
consecutive readings, and the TTR is the share of that time whose interpolated INR lies in the range. Computed
exactly (the time a line spends in the range), not on a daily grid.

>>> t = np.array([0.0, 10.0, 20.0])
>>> float(rosendaal_ttr(t, np.array([[1.0, 3.0, 4.0]]))[0])  # 5 of the first 10 days in 2-3, none after
0.25
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trials.design import Design
from trials.simulate import Course, HrCourse

HR_FINAL_DAYS = 7  # the heart-rate reduction: baseline minus the mean of the last week's mornings
HR_CONTROL_FROM_DAY = 7  # heart-rate control counted once the dose has acted a week


def rosendaal_ttr(t_days: np.ndarray, inr: np.ndarray, lo: float = 2.0, hi: float = 3.0) -> np.ndarray:
    """Per row of `inr` (n, m; NaN: no reading) at times `t_days` (m,) or (n, m): the share of the time from
    the first reading to the last with the linearly interpolated INR in [lo, hi]; NaN with fewer than two."""
    inr = np.atleast_2d(np.asarray(inr, float))
    t = np.broadcast_to(np.asarray(t_days, float), inr.shape)
    order = np.argsort(np.isnan(inr), axis=1, kind="stable")  # readings first, in time order, gaps last
    v, t = np.take_along_axis(inr, order, axis=1), np.take_along_axis(t, order, axis=1)
    v0, v1, dt = v[:, :-1], v[:, 1:], t[:, 1:] - t[:, :-1]
    valid = ~np.isnan(v0) & ~np.isnan(v1)
    a, b = np.fmin(v0, v1), np.fmax(v0, v1)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = np.clip(np.fmin(b, hi) - np.fmax(a, lo), 0.0, None) / (b - a)
    flat = (a >= lo) & (a <= hi)
    share = np.where(b > a, crossing, flat.astype(float))
    inside = np.where(valid, share * dt, 0.0).sum(axis=1)
    total = np.where(valid, dt, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def first_time(days: np.ndarray, hit: np.ndarray, censor_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) per row: the first day where `hit` (n, m) holds, else censored at `censor_day`.

    >>> first_time(np.array([3.0, 5.0]), np.array([[False, True], [False, False]]), np.array([7.0, 4.0]))
    (array([5., 4.]), array([ True, False]))
    """
    any_hit = hit.any(axis=1)
    at = np.asarray(days, float)[np.argmax(hit, axis=1)]
    return np.where(any_hit, at, censor_day), any_hit


@dataclass(frozen=True)
class PatientEndpoints:
    """One entry per patient."""

    ttr: np.ndarray  # share 0-1, NaN where not evaluable (fewer than two INRs)
    share_inr_over: np.ndarray  # share of the patient's INR readings >= over_inr
    n_inr: np.ndarray
    days_to_therapeutic: np.ndarray
    therapeutic_event: np.ndarray
    days_to_over: np.ndarray
    over_event: np.ndarray
    days_to_bleed: np.ndarray
    bleed_event: np.ndarray
    completed: np.ndarray  # followed to the end

    @property
    def primary(self) -> np.ndarray:
        """The primary endpoint per patient, as analysed (TTR %)."""
        return self.ttr * 100.0


@dataclass(frozen=True)
class HrEndpoints:
    """A metoprolol trial's endpoints, one entry per patient."""

    hr_reduction_bpm: np.ndarray  # baseline minus the mean morning HR of the last week on study
    hr_control_pct: np.ndarray  # share of mornings from day 7 with HR in the target range
    bradycardia_final: np.ndarray  # the last reading on study below `bradycardia_bpm`
    days_to_bradycardia: np.ndarray  # to the first reading below `severe_bradycardia_bpm`
    bradycardia_event: np.ndarray
    completed: np.ndarray

    @property
    def primary(self) -> np.ndarray:
        return self.hr_reduction_bpm


def hr_endpoints(design: Design, course: HrCourse) -> HrEndpoints:
    hr, ep = course.hr_bpm, design.endpoints
    has = ~np.isnan(hr)
    last = np.where(has.any(axis=1), hr.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1), -1)
    window = (np.arange(hr.shape[1])[None, :] > (last - HR_FINAL_DAYS)[:, None]) & has
    with np.errstate(invalid="ignore"):
        final = np.where(window.any(axis=1), np.nansum(np.where(window, hr, 0.0), axis=1) / window.sum(axis=1),
                         np.nan)
        counted = has & (course.day[None, :] >= HR_CONTROL_FROM_DAY)
        lo, hi = ep.hr_target_bpm
        control = np.where(counted.any(axis=1), 100.0 * (counted & (hr >= lo) & (hr <= hi)).sum(axis=1)
                           / np.maximum(counted.sum(axis=1), 1), np.nan)
        severe = has & (hr < ep.severe_bradycardia_bpm)
        at_final_visit = np.where(last >= 0, hr[np.arange(len(hr)), np.maximum(last, 0)], np.nan) < ep.bradycardia_bpm
    censor = np.where(last >= 0, course.day[np.maximum(last, 0)], 0.0)
    t_brady, e_brady = first_time(course.day, severe, censor)
    return HrEndpoints(course.baseline_hr_bpm - final, control, at_final_visit, t_brady, e_brady,
                       np.isnan(course.dropout_day))


def patient_endpoints(design: Design, course: Course | HrCourse) -> PatientEndpoints | HrEndpoints:
    if isinstance(course, HrCourse):
        return hr_endpoints(design, course)
    ep = design.endpoints
    lo, hi = ep.ttr_range
    inr = course.lab_inr
    n = len(inr)
    if ep.baseline_inr is not None:  # the pre-treatment INR at day 0 starts the interpolation
        t = np.r_[0.0, course.lab_day]
        ttr = rosendaal_ttr(t, np.hstack([np.full((n, 1), ep.baseline_inr), inr]), lo, hi)
    else:
        ttr = rosendaal_ttr(course.lab_day, inr, lo, hi)
    has = ~np.isnan(inr)
    n_inr = has.sum(axis=1)
    with np.errstate(invalid="ignore"):
        share_over = np.where(n_inr > 0, (has & (inr >= ep.over_inr)).sum(axis=1) / np.maximum(n_inr, 1), np.nan)
        in_range = has & (inr >= lo) & (inr <= hi)
        over = has & (inr >= ep.over_inr)
    last_lab = np.where(n_inr > 0, course.lab_day[np.maximum(n_inr - 1, 0)], 0.0)
    followed = course.followed_to_day
    t_ther, e_ther = first_time(course.lab_day, in_range, last_lab)
    t_over, e_over = first_time(course.lab_day, over, last_lab)
    bled = ~np.isnan(course.bleed_day)
    t_bleed = np.where(bled, course.bleed_day, followed)
    completed = np.isnan(course.dropout_day) & ~bled
    return PatientEndpoints(ttr, share_over, n_inr, t_ther, e_ther, t_over, e_over, t_bleed, bled, completed)
