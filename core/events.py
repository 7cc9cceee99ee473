"""Event schemas (docs/DESIGN.md, "Tables") as Arrow schemas, with typed helpers.

Units are in the column names. Timestamps are `timestamp[us, UTC]`; a missing reading is null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")
# run, reactor, replay, incident and subscription ids: safe in a URL, a file name and an HTML text node
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"

TICK_SIGNALS: tuple[str, ...] = (
    "do_pct", "ph", "temp_c", "agitation_rpm", "air_sccm", "o2_sccm", "co2_sccm", "base_ml", "feed_ml",
    "volume_l", "our_mmol_l_h", "cer_mmol_l_h", "capacitance_pf_cm",
)
ASSAY_VALUES: tuple[str, ...] = (
    "vcd_e6_per_ml", "viability_pct", "glucose_g_l", "lactate_g_l", "glutamine_mm", "ammonia_mm",
    "osmolality_mosm_kg", "titer_g_l", "hcp_ng_ml",
)

TICKS = pa.schema(
    [pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
     pa.field("seq", pa.int64(), False), pa.field("ts", TS, False)]
    + [pa.field(name, pa.float64()) for name in TICK_SIGNALS]
)
ASSAYS = pa.schema(
    [pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
     pa.field("sample_ts", TS, False), pa.field("reported_ts", TS, False)]
    + [pa.field(name, pa.float64()) for name in ASSAY_VALUES]
)
LABELS = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
    pa.field("fault", pa.string(), False), pa.field("start_ts", TS, False), pa.field("end_ts", TS, False),
    pa.field("signals", pa.list_(pa.string())), pa.field("magnitude", pa.float64()),
    pa.field("root_cause", pa.string()), pa.field("action", pa.string()),
])
RUNS = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
    pa.field("plant", pa.string(), False), pa.field("scenario", pa.string(), False),
    pa.field("seed", pa.int64(), False), pa.field("config_json", pa.string()),
    pa.field("started_ts", TS, False), pa.field("ended_ts", TS),
])

SCORES = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
    pa.field("seq", pa.int64(), False), pa.field("ts", TS, False), pa.field("detector", pa.string(), False),
    pa.field("score", pa.float64()), pa.field("threshold", pa.float64()), pa.field("is_alarm", pa.bool_()),
    # soft sensors (detectors/soft_sensors.py), written with the scores: one table write per tick, not two
    pa.field("vcd_e6_per_ml_est", pa.float64()), pa.field("glucose_g_l_est", pa.float64()),
])
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}  # alert and incident severities, least to worst
CONTRIBUTION = pa.struct([pa.field("name", pa.string()), pa.field("contribution", pa.float64())])
ALERTS = pa.schema([
    pa.field("alert_id", pa.string(), False), pa.field("run_id", pa.string(), False),
    pa.field("reactor_id", pa.string(), False), pa.field("seq", pa.int64()), pa.field("ts", TS, False),
    pa.field("detector", pa.string()), pa.field("score", pa.float64()), pa.field("threshold", pa.float64()), pa.field("severity", pa.string()),
    pa.field("signals", pa.list_(CONTRIBUTION)), pa.field("emitted_at", TS),
])
LATE_TICKS = pa.schema(list(TICKS) + [pa.field("watermark_ts", TS), pa.field("arrived_at", TS)])
# a run's recipe (detectors/recipe.py), at its start and after each change; key (run_id, recipe_hash)
RECIPES = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
    pa.field("ts", TS, False), pa.field("recipe_hash", pa.string(), False), pa.field("recipe_json", pa.string()),
    pa.field("run_start_ts", TS),  # inoculation: culture age counts from it
    pa.field("reference", pa.string()),  # where its reference came from: "twin" | "learned" | "default"
    pa.field("changed_by", pa.string()),
])
# what happened to a run that is not a reading: operator changes, recipe selection; key (run_id, ts, kind)
ANNOTATIONS = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("reactor_id", pa.string(), False),
    pa.field("ts", TS, False), pa.field("kind", pa.string(), False), pa.field("text", pa.string()),
    pa.field("changed_by", pa.string()), pa.field("recipe_hash", pa.string()),
])
DEADLETTER = pa.schema([
    pa.field("received_at", TS, False), pa.field("subject", pa.string()), pa.field("stream_seq", pa.int64()),
    pa.field("reason", pa.string(), False), pa.field("size_bytes", pa.int64()), pa.field("payload", pa.binary()),
])

INCIDENTS = pa.schema([  # one row per lifecycle event; key (incident_id, version)
    pa.field("incident_id", pa.string(), False), pa.field("version", pa.int64(), False),
    pa.field("event", pa.string(), False), pa.field("run_id", pa.string(), False),
    pa.field("reactor_id", pa.string(), False), pa.field("status", pa.string(), False),
    pa.field("start_ts", TS, False), pa.field("end_ts", TS), pa.field("severity", pa.string()),
    pa.field("alert_count", pa.int64()), pa.field("signals", pa.list_(pa.string())), pa.field("emitted_at", TS),
])
AGENT_MESSAGES = pa.schema([  # streamed explanation chunks; the last one (done) carries the findings as JSON
    pa.field("incident_id", pa.string(), False), pa.field("seq", pa.int64(), False),
    pa.field("agent", pa.string(), False), pa.field("text", pa.string()), pa.field("done", pa.bool_()),
    pa.field("findings_json", pa.string()), pa.field("emitted_at", TS),
])
AUDIT = pa.schema([  # hash-chained (sinks/audit.py); the columns after payload_json are null in rows from before
    pa.field("ts", TS, False), pa.field("actor", pa.string(), False), pa.field("role", pa.string()),
    pa.field("action", pa.string(), False), pa.field("target", pa.string()), pa.field("payload_json", pa.string()),
    pa.field("seq", pa.int64()), pa.field("token_id", pa.string()), pa.field("request_id", pa.string()),
    pa.field("client", pa.string()), pa.field("result", pa.string()), pa.field("prev_hash", pa.string()),
    pa.field("hash", pa.string()),
])

# ---- the patient plant (issue 23): keys (run_id, patient_id); one run per patient ----------------------------
VITAL_SIGNALS: tuple[str, ...] = ("hr_bpm", "sbp_mmhg", "dbp_mmhg", "spo2_pct", "rr_min", "temp_c")
LAB_VALUES: tuple[str, ...] = ("inr", "hb_g_dl")
# the true individual parameters, stored as `warfarin_<key>` / `metoprolol_<key>` columns of `patients`
WARFARIN_PARAMS: tuple[str, ...] = ("cl_l_h", "v1_l", "v2_l", "q_l_h", "ka_per_h", "bioavailability", "ec50_mg_l",
                                    "gamma", "mtt1_h", "mtt2_h")
METOPROLOL_PARAMS: tuple[str, ...] = ("cl_l_h", "v_l", "ka_per_h", "lag_h", "ec50_mg_l", "emax_hr_bpm",
                                      "emax_sbp_mmhg", "emax_dbp_mmhg")
PATIENTS = pa.schema(
    [pa.field("run_id", pa.string(), False), pa.field("patient_id", pa.string(), False),
     pa.field("age_years", pa.float64()), pa.field("sex", pa.string()), pa.field("height_cm", pa.float64()),
     pa.field("weight_kg", pa.float64()), pa.field("ancestry", pa.string()), pa.field("cyp2c9", pa.string()),
     pa.field("vkorc1_1639", pa.string()), pa.field("cyp2d6", pa.string()), pa.field("amiodarone", pa.bool_()),
     pa.field("enzyme_inducer", pa.bool_())]
    + [pa.field(f"baseline_{name}", pa.float64()) for name in VITAL_SIGNALS + ("hb_g_dl",)]
    + [pa.field(f"warfarin_{key}", pa.float64()) for key in WARFARIN_PARAMS]
    + [pa.field(f"metoprolol_{key}", pa.float64()) for key in METOPROLOL_PARAMS]
)
VITALS = pa.schema(
    [pa.field("run_id", pa.string(), False), pa.field("patient_id", pa.string(), False),
     pa.field("seq", pa.int64(), False), pa.field("ts", TS, False)]
    + [pa.field(name, pa.float64()) for name in VITAL_SIGNALS]
)
LABS = pa.schema(
    [pa.field("run_id", pa.string(), False), pa.field("patient_id", pa.string(), False),
     pa.field("sample_ts", TS, False), pa.field("reported_ts", TS, False)]
    + [pa.field(name, pa.float64()) for name in LAB_VALUES]
)
DOSES = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("patient_id", pa.string(), False),
    pa.field("ts", TS, False), pa.field("drug", pa.string(), False), pa.field("dose_mg", pa.float64()),
    pa.field("taken", pa.bool_()),
])

LATE_VITALS = pa.schema(list(VITALS) + [pa.field("watermark_ts", TS), pa.field("arrived_at", TS)])
# the patient's own twin, refitted by the flow whenever a lab arrives: its INR forecast band from the refit on,
# under the current dosing and under the advised dose (`dosing`), published on `biopilot.twin.<patient>` too
TWIN_FORECASTS = pa.schema([
    pa.field("run_id", pa.string(), False), pa.field("patient_id", pa.string(), False),
    pa.field("fitted_ts", TS, False),  # the sample time of the lab that triggered the refit
    pa.field("ts", TS, False), pa.field("dosing", pa.string(), False),  # "current" | "advised"
    pa.field("inr_mid", pa.float64()), pa.field("inr_lo", pa.float64()), pa.field("inr_hi", pa.float64()),
    pa.field("weekly_dose_mg", pa.float64()),  # the warfarin dose this forecast assumes
    pa.field("advised_weekly_dose_mg", pa.float64()), pa.field("labs_used", pa.int64()),
])

# the outcome model registry (outcomes/registry.py): one row per lifecycle event (register, promote, demote,
# rollback); a version's state is its newest row. Artefacts live beside it, under <lake>/model_artefacts/<version>/
MODELS = pa.schema([
    pa.field("seq", pa.int64(), False), pa.field("ts", TS, False), pa.field("event", pa.string(), False),
    pa.field("version", pa.string(), False), pa.field("alias", pa.string()),  # champion | challenger | null
    pa.field("data_snapshot", pa.string()), pa.field("code_hash", pa.string()), pa.field("metrics_json", pa.string()),
    pa.field("artefact_uri", pa.string()), pa.field("created_ts", TS), pa.field("created_by", pa.string()),
    pa.field("promoted_ts", TS), pa.field("promoted_by", pa.string()), pa.field("actor", pa.string()),
    pa.field("reason", pa.string()),
])

SCHEMAS: dict[str, pa.Schema] = {"ticks": TICKS, "assays": ASSAYS, "labels": LABELS, "runs": RUNS,
                                 "scores": SCORES, "alerts": ALERTS, "late_ticks": LATE_TICKS,
                                 "deadletter": DEADLETTER, "incidents": INCIDENTS,
                                 "agent_messages": AGENT_MESSAGES, "audit": AUDIT,
                                 "patients": PATIENTS, "vitals": VITALS, "labs": LABS, "doses": DOSES,
                                 "late_vitals": LATE_VITALS, "twin_forecasts": TWIN_FORECASTS,
                                 "recipes": RECIPES, "annotations": ANNOTATIONS, "models": MODELS}


@dataclass(frozen=True)
class Label:
    """Ground truth of one injected fault."""

    run_id: str
    reactor_id: str
    fault: str
    start_ts: datetime
    end_ts: datetime
    signals: list[str]
    magnitude: float
    root_cause: str
    action: str


@dataclass(frozen=True)
class Run:
    run_id: str
    reactor_id: str
    plant: str
    scenario: str
    seed: int
    config_json: str
    started_ts: datetime
    ended_ts: datetime | None = None


def to_table(rows: Iterable[Mapping | object], schema: pa.Schema) -> pa.Table:
    """Rows (mappings or dataclasses) -> a table of `schema`; missing columns become null."""
    dicts = [r if isinstance(r, Mapping) else vars(r) for r in rows]
    return pa.Table.from_pylist(dicts, schema=schema)


def distinct(column: pa.ChunkedArray | pa.Array) -> list:
    """A column's distinct values in order of first appearance. The rows of a message or a release nearly
    always share one run and one reactor: comparing every value with the first costs less than hashing them.

    >>> distinct(pa.array(["run-1", "run-1"])), distinct(pa.array(["run-1", "run-2", "run-1"]))
    (['run-1'], ['run-1', 'run-2'])
    """
    if len(column) and not column.null_count:
        first = column[0]
        if pc.all(pc.equal(column, first)).as_py():
            return [first.as_py()]
    return pc.unique(column).to_pylist()
