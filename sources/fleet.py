"""A fleet of simulated CHO fed-batch reactors advanced together.

`Fleet` turns a scenario into the arrays the compiled integrator works on, advances all reactors one chunk
at a time and hands back Arrow batches of ticks plus the assay rows sampled in that chunk. Live changes
(setpoints, feeds, fault injections) go through `set_control` / `inject_fault`, which the continuous plant
feed uses; batch generation (`sources.batch`) just advances to the end.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from core.events import ASSAYS, LABELS, RUNS, TICK_SIGNALS, TICKS, Label, Run, to_table
from sources import kinetics as K
from sources import reactor as R
from sources.faults import CATALOGUE, SENSOR_FAULTS, fault_signals
from sources.kinetics import KineticParams, param_vector
from sources.measurement import (
    DRIFT_SD,
    MAX_SENSOR_FAULTS,
    NOISE_ABS,
    NOISE_REL,
    NOISE_TABLE_BITS,
    RESOLUTION,
    SENSOR_FAULT_KIND,
    empty_sensor_faults,
    measure,
    noise_table,
)
from sources.scenarios import FaultSpec, Scenario, load_scenario

assert R.SIGNAL_NAMES == TICK_SIGNALS

# independent random streams per reactor, so a fault never changes the noise a reactor sees
_STREAM_PARAMS, _STREAM_NOISE, _STREAM_FAULTS, _STREAM_ASSAYS = range(4)
ASSAY_CV = {"vcd_e6_per_ml": 0.05, "viability_pct": 0.01, "glucose_g_l": 0.03, "lactate_g_l": 0.03,
            "glutamine_mm": 0.05, "ammonia_mm": 0.05, "osmolality_mosm_kg": 0.01, "titer_g_l": 0.05,
            "hcp_ng_ml": 0.10}


def run_id_for(scenario: Scenario, seed: int, index: int) -> str:
    """Deterministic: the same scenario, seed and reactor always give the same run id."""
    digest = hashlib.sha1(f"{scenario.model_dump_json()}|{seed}|{index}".encode()).hexdigest()[:8]
    return f"{scenario.name}-s{seed}-r{index + 1}-{digest}"


def _draw(value: float | tuple[float, float], rng: np.random.Generator) -> float:
    return float(rng.uniform(*value)) if isinstance(value, tuple) else float(value)


def true_assays(y: np.ndarray) -> dict[str, float]:
    """What a perfect off-line assay of state `y` reads (the sampled assays add `ASSAY_CV` to it)."""
    total = y[K.S_XV] + y[K.S_XD]
    return {
        "vcd_e6_per_ml": y[K.S_XV],
        "viability_pct": 100.0 * y[K.S_XV] / total if total > 0 else 0.0,
        "glucose_g_l": y[K.S_GLC] * K.GLUCOSE_G_PER_MMOL,
        "lactate_g_l": y[K.S_LAC] * K.LACTATE_G_PER_MMOL,
        "glutamine_mm": y[K.S_GLN],
        "ammonia_mm": y[K.S_AMM],
        "osmolality_mosm_kg": y[K.S_OSM_SALTS] + y[K.S_GLC] + y[K.S_GLN] + y[K.S_LAC] + y[K.S_AMM],
        "titer_g_l": y[K.S_TITER],
        "hcp_ng_ml": y[K.S_HCP],
    }


@dataclass
class Chunk:
    ticks: pa.RecordBatch
    assays: pa.Table


class Fleet:
    """N reactors running one scenario. Reactor k has global index `first_index + k` (its id is r<index+1>)."""

    def __init__(self, scenario: Scenario, n_reactors: int, seed: int = 0, first_index: int = 0,
                 run_ids: list[str] | None = None) -> None:
        if n_reactors <= 0:
            raise ValueError("n_reactors must be > 0")
        self.scenario = scenario
        self.seed = seed
        self.n = n_reactors
        self.indices = list(range(first_index, first_index + n_reactors))
        self.reactor_ids = [f"r{i + 1}" for i in self.indices]
        self.run_ids = run_ids or [run_id_for(scenario, seed, i) for i in self.indices]
        self.rngs = [[np.random.default_rng([seed, i, s]) for s in range(4)] for i in self.indices]
        self.dt_s = scenario.tick_s
        self.total_ticks = int(round(scenario.days * 86400.0 / scenario.tick_s))
        self.started = [scenario.start] * self.n
        self._build_params()
        self._build_controls()
        self._build_state()
        self.faults = np.full((self.n, R.N_FAULT, 3), np.inf)
        self.faults[:, :, 2] = 0.0
        self.sensor_faults = empty_sensor_faults(self.n)
        self.labels: list[Label] = []
        for spec in scenario.faults:
            for k, index in enumerate(self.indices):
                if spec.reactors == "all" or index + 1 in spec.reactors:
                    self._add_fault_spec(k, spec)
        self.drift_rate = np.stack([
            r[_STREAM_NOISE].standard_normal(R.N_SIGNAL) * DRIFT_SD * scenario.measurement.drift_scale
            for r in self.rngs])

    # ---- construction --------------------------------------------------------------------------------
    def _build_params(self) -> None:
        sc = self.scenario
        base = KineticParams(**sc.kinetics)
        vec = param_vector(base)
        vec[K.P_FEED_GLC] = sc.feed.glucose_g_l / K.GLUCOSE_G_PER_MMOL
        vec[K.P_FEED_GLN] = sc.feed.glutamine_mm
        vec[K.P_FEED_OSM] = sc.feed.osmolality_salts_mosm_kg
        self.p = np.tile(vec, (self.n, 1))
        spread = sc.process.variability
        for k, rng in enumerate(self.rngs):
            mult = np.exp(rng[_STREAM_PARAMS].normal(0.0, spread, 3))
            self.p[k, K.P_MU_MAX] *= mult[0]
            self.p[k, K.P_Q_O2] *= mult[1]
            self.p[k, K.P_QP] *= mult[2]

    def _build_controls(self) -> None:
        pr, feed = self.scenario.process, self.scenario.feed
        c = np.zeros(R.N_CONTROL)
        for name in ("do_kp", "do_ki_1_h", "ph_kp", "ph_ki_1_h", "sample_ml"):
            c[R.C[name]] = getattr(pr, name)
        c[R.C_DO_SP] = pr.do_setpoint_pct
        c[R.C_PH_SP] = pr.ph_setpoint
        c[R.C_PH_DB] = pr.ph_deadband
        c[R.C_TEMP_SP] = pr.temp_setpoint_c
        c[R.C_TEMP_SHIFT] = pr.temp_shift_c
        c[R.C_SHIFT_H] = np.inf if pr.temp_shift_day is None else pr.temp_shift_day * 24.0
        c[R.C_AGIT_MIN], c[R.C_AGIT_MAX] = pr.agitation_min_rpm, pr.agitation_max_rpm
        c[R.C_AIR_MIN], c[R.C_AIR_MAX] = pr.air_min_sccm, pr.air_max_sccm
        c[R.C_O2_MAX], c[R.C_CO2_MAX] = pr.o2_max_sccm, pr.co2_max_sccm
        c[R.C_BASE_MAX] = pr.base_max_ml_min
        c[R.C_FEED_PUMP] = feed.pump_ml_min
        daily_ml = feed.percent_of_volume / 100.0 * pr.working_volume_l * 1000.0
        c[R.C_CONT_START], c[R.C_CONT_END] = np.inf, np.inf
        n_bolus = 0
        if feed.mode == "continuous":
            c[R.C_CONT_FEED] = daily_ml / 24.0
            c[R.C_CONT_START], c[R.C_CONT_END] = feed.continuous_start_day * 24.0, np.inf
        else:
            n_bolus = len(feed.days)
        self.c = np.tile(c, (self.n, 1))
        self.bolus = np.zeros((self.n, max(n_bolus, 1) + 8, 2))  # spare slots for live feed commands
        self.bolus[:, :, 0] = np.inf
        if feed.mode == "bolus":
            for j, day in enumerate(sorted(feed.days)):
                self.bolus[:, j] = (day * 24.0 + feed.hour, daily_ml)

    def _build_state(self) -> None:
        pr = self.scenario.process
        y = np.zeros(K.N_STATE)
        y[K.S_GLC] = pr.glucose_g_l / K.GLUCOSE_G_PER_MMOL
        y[K.S_GLN] = pr.glutamine_mm
        y[K.S_AMM] = 0.3
        y[K.S_OSM_SALTS] = pr.osmolality_mosm_kg - y[K.S_GLC] - y[K.S_GLN] - y[K.S_AMM]
        y[K.S_VOL] = pr.working_volume_l
        y[K.S_HCO3] = pr.bicarbonate_mm
        y[K.S_DCO2] = pr.bicarbonate_mm / 10 ** (pr.ph_setpoint - KineticParams().pka_co2)
        y[K.S_TEMP] = pr.temp_setpoint_c
        y[K.S_TEMP_ACCLIM] = pr.temp_setpoint_c
        self.y = np.tile(y, (self.n, 1))
        seed_vcd = np.array([pr.seed_vcd_e6_per_ml * math.exp(r[_STREAM_PARAMS].normal(0.0, 0.05))
                             for r in self.rngs])
        self.y[:, K.S_XV] = seed_vcd * pr.seed_viability_pct / 100.0
        self.y[:, K.S_XD] = seed_vcd * (1.0 - pr.seed_viability_pct / 100.0)
        self.y[:, K.S_DO] = pr.do_setpoint_pct / 100.0 * self.p[:, K.P_DO_SAT]
        self.mem = np.zeros((self.n, R.N_MEMORY))
        self.mem[:, R.K_DO_INT] = 0.3
        self.t_h = np.zeros(self.n)
        self.seq = np.zeros(self.n, dtype=np.int64)

    def _add_fault_spec(self, k: int, spec: FaultSpec) -> None:
        rng = self.rngs[k][_STREAM_FAULTS]
        start_h = _draw(spec.start_day, rng) * 24.0
        self.inject_fault(k, spec.fault, start_h, _draw(spec.duration_h, rng), _draw(spec.magnitude, rng),
                          spec.signal)

    @classmethod
    def stack(cls, fleets: list[Fleet]) -> Fleet:
        """One fleet advancing the reactors of `fleets` together, each keeping its own recipe, kinetics, faults
        and random streams (a design's runs, each on its own settings: `design.twin`). They must share the
        run's length, tick and measurement settings, which the integrator and the sensors take fleet-wide."""
        first = fleets[0]
        for other in fleets[1:]:
            a, b = first.scenario, other.scenario
            if (a.days, a.tick_s, a.measurement) != (b.days, b.tick_s, b.measurement):
                raise ValueError("stacked fleets must share days, tick_s and measurement settings")
        if any(f.seq.any() for f in fleets):
            raise ValueError("stack fleets before they advance")
        fleet = cls.__new__(cls)
        vars(fleet).update(vars(first))
        for name in ("indices", "reactor_ids", "run_ids", "rngs", "started", "labels"):
            setattr(fleet, name, [x for f in fleets for x in getattr(f, name)])
        width = max(f.bolus.shape[1] for f in fleets)
        padded = [np.concatenate([f.bolus, np.tile([np.inf, 0.0], (f.n, width - f.bolus.shape[1], 1))], axis=1)
                  for f in fleets]
        fleet.bolus = np.concatenate(padded)
        for name in ("p", "c", "y", "mem", "t_h", "seq", "faults", "sensor_faults", "drift_rate"):
            setattr(fleet, name, np.concatenate([getattr(f, name) for f in fleets]))
        fleet.n = sum(f.n for f in fleets)
        return fleet

    # ---- live changes ---------------------------------------------------------------------------------
    def inject_fault(self, k: int, fault: str, start_h: float, duration_h: float, magnitude: float,
                     signal: str | None = None) -> Label:
        """Schedule a fault on reactor k (hours since its run began) and record its label."""
        if fault not in CATALOGUE:
            raise ValueError(f"unknown fault {fault!r}; allowed: {', '.join(CATALOGUE)}")
        if duration_h <= 0:
            raise ValueError("duration_h must be > 0")
        end_h = start_h + duration_h
        if fault in SENSOR_FAULTS:
            if signal not in R.SIGNAL_NAMES:
                raise ValueError(f"{fault} needs a signal; allowed: {', '.join(R.SIGNAL_NAMES)}")
            free = np.flatnonzero(self.sensor_faults[k, :, 0] < 0)
            if free.size == 0:
                raise ValueError(f"at most {MAX_SENSOR_FAULTS} sensor faults per run")
            self.sensor_faults[k, free[0]] = (SENSOR_FAULT_KIND[fault], R.SIGNAL_NAMES.index(signal), start_h,
                                              end_h, magnitude, np.nan)
        else:
            self.faults[k, R.FAULT_NAMES.index(fault)] = (start_h, end_h, magnitude)
        info = CATALOGUE[fault]
        t0 = self.started[k]
        label = Label(self.run_ids[k], self.reactor_ids[k], fault, t0 + timedelta(hours=start_h),
                      t0 + timedelta(hours=end_h), fault_signals(fault, signal), float(magnitude), info.root_cause,
                      info.action)
        self.labels.append(label)
        return label

    def set_control(self, k: int, name: str, value: float) -> None:
        if name not in R.C:
            raise ValueError(f"unknown control {name!r}; allowed: {', '.join(R.CONTROL_NAMES)}")
        self.c[k, R.C[name]] = value

    def add_bolus(self, k: int, volume_ml: float, at_h: float | None = None) -> None:
        """A one-off feed bolus (now, or at `at_h` hours since the run began)."""
        free = np.flatnonzero(~np.isfinite(self.bolus[k, :, 0]))
        if free.size == 0:  # reuse the oldest finished slot
            free = np.array([int(np.argmin(self.bolus[k, :, 0]))])
        self.bolus[k, free[0]] = (self.t_h[k] if at_h is None else at_h, volume_ml)

    # ---- advancing ------------------------------------------------------------------------------------
    @property
    def unit_ids(self) -> list[str]:
        """The plant-kind-neutral name of `reactor_ids` (`sources.plant.LiveFeed`)."""
        return self.reactor_ids

    @property
    def remaining_ticks(self) -> int:
        return int(self.total_ticks - self.seq.min())

    @property
    def done(self) -> bool:
        return self.remaining_ticks <= 0

    def step(self, n_ticks: int, measure_ticks: bool = True) -> Chunk:
        """Advance every reactor by `n_ticks` ticks; returns their measured ticks and the assays drawn. Without
        `measure_ticks` the ticks batch is empty (a study that needs only the assays: 2-3x faster); the online
        sensors' noise stream is then not drawn, the process and the assays are the same."""
        n_ticks = min(n_ticks, self.remaining_ticks)
        if n_ticks <= 0:
            return Chunk(pa.RecordBatch.from_pylist([], schema=TICKS), ASSAYS.empty_table())
        ms = self.scenario.measurement
        sample_every = max(1, int(round(ms.assay_every_h * 3600.0 / self.dt_s)))
        sample_phase = int(round(ms.assay_hour * 3600.0 / self.dt_s)) % sample_every
        seq0, t_h0 = self.seq.copy(), self.t_h.copy()
        true = np.empty((n_ticks, self.n, R.N_SIGNAL))
        samples = np.empty((self.n, n_ticks // sample_every + 2, K.N_STATE + 1))
        n_samples = np.zeros(self.n, dtype=np.int64)
        R.advance_fleet(self.y, self.mem, self.p, self.c, self.bolus, self.faults, self.t_h, self.seq,
                        self.dt_s, n_ticks, sample_every, sample_phase, true, samples, n_samples)
        if not measure_ticks:
            return Chunk(pa.RecordBatch.from_pylist([], schema=TICKS), self._assays(samples, n_samples))
        measured = np.empty((R.N_SIGNAL, self.n, n_ticks))
        offsets = np.empty((self.n, R.N_SIGNAL), dtype=np.int64)
        days = n_ticks * self.dt_s / 86400.0
        spike_lists = []
        for k, rng in enumerate(self.rngs):
            g = rng[_STREAM_NOISE]
            offsets[k] = g.integers(0, 1 << NOISE_TABLE_BITS, R.N_SIGNAL)
            n_spk = g.poisson(ms.spikes_per_day * days * R.N_SIGNAL)
            spike_lists.append(np.column_stack([g.integers(0, n_ticks, n_spk), g.integers(0, R.N_SIGNAL, n_spk),
                                                g.choice([-1.0, 1.0], n_spk) * g.uniform(5, 10, n_spk)]))
        spikes = np.full((self.n, max(1, max(len(s) for s in spike_lists)), 3), -1.0)
        for k, s in enumerate(spike_lists):
            spikes[k, : len(s)] = s
        measure(true, noise_table(), offsets, NOISE_ABS, NOISE_REL, RESOLUTION, self.drift_rate, t_h0,
                self.dt_s / 3600.0, ms.noise_scale, spikes, self.sensor_faults, measured)
        return Chunk(self._tick_batch(measured, seq0, n_ticks), self._assays(samples, n_samples))

    def _tick_batch(self, measured: np.ndarray, seq0: np.ndarray, n_ticks: int) -> pa.RecordBatch:
        who = pa.array(np.repeat(np.arange(self.n, dtype=np.int32), n_ticks))
        seq = (seq0[:, None] + np.arange(n_ticks, dtype=np.int64)[None, :]).reshape(-1)
        start_us = np.array([int(s.timestamp() * 1e6) for s in self.started], dtype=np.int64)
        ts_us = np.repeat(start_us, n_ticks) + seq * int(round(self.dt_s * 1e6))
        cols = [pa.array(self.run_ids).take(who), pa.array(self.reactor_ids).take(who), pa.array(seq),
                pa.array(ts_us, type=pa.int64()).cast(TICKS.field("ts").type)]
        for s in range(R.N_SIGNAL):
            col = measured[s].reshape(-1)
            nan = np.isnan(col)
            cols.append(pa.array(col, mask=nan) if nan.any() else pa.array(col))
        return pa.RecordBatch.from_arrays(cols, schema=TICKS)

    def _assays(self, samples: np.ndarray, n_samples: np.ndarray) -> pa.Table:
        ms = self.scenario.measurement
        rows = []
        for k in range(self.n):
            rng = self.rngs[k][_STREAM_ASSAYS]
            for j in range(int(n_samples[k])):
                seq, y = int(samples[k, j, 0]), samples[k, j, 1:]
                sample_ts = self.started[k] + timedelta(seconds=seq * self.dt_s)
                true = true_assays(y)
                noise = rng.standard_normal(len(ASSAY_CV))
                values = {name: float(max(0.0, v * (1.0 + ASSAY_CV[name] * n)))
                          for (name, v), n in zip(true.items(), noise, strict=True)}
                values["viability_pct"] = min(100.0, values["viability_pct"])
                delay_h = ms.assay_delay_h * (0.75 + 0.5 * rng.random())
                rows.append({"run_id": self.run_ids[k], "reactor_id": self.reactor_ids[k], "sample_ts": sample_ts,
                             "reported_ts": sample_ts + timedelta(hours=delay_h), **values})
        return pa.Table.from_pylist(rows, schema=ASSAYS)

    # ---- metadata tables -------------------------------------------------------------------------------
    def runs_table(self, ended: bool = True) -> pa.Table:
        cfg = json.dumps(self.scenario.model_dump(mode="json"), sort_keys=True)
        rows = []
        for k in range(self.n):
            end = self.started[k] + timedelta(seconds=self.total_ticks * self.dt_s) if ended else None
            rows.append(Run(self.run_ids[k], self.reactor_ids[k], "bioreactor", self.scenario.name, self.seed, cfg,
                            self.started[k], end))
        return to_table(rows, RUNS)

    def labels_table(self) -> pa.Table:
        return to_table(self.labels, LABELS)


@dataclass(frozen=True)
class SimulatedRun:
    """One reactor's whole batch, in memory."""

    ticks: pa.Table
    assays: pa.Table
    labels: tuple[Label, ...]
    started: datetime
    dt_s: float

    def minutes(self) -> np.ndarray:
        """Minutes since inoculation, per tick."""
        return self.ticks["seq"].to_numpy() * self.dt_s / 60.0


def simulate_run(scenario: str | Scenario, seed: int) -> SimulatedRun:
    """A single reactor of `scenario` (a built-in name, a file or a Scenario) run to its end: what the
    benchmarks, the scorer's training and the tests need without a lake."""
    fleet = Fleet(scenario if isinstance(scenario, Scenario) else load_scenario(scenario), 1, seed=seed)
    chunk = fleet.step(fleet.total_ticks)
    return SimulatedRun(pa.Table.from_batches([chunk.ticks]), chunk.assays, tuple(fleet.labels), fleet.started[0],
                        fleet.dt_s)
