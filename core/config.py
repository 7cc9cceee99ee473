"""Settings: environment variables override `biopilot.toml`, which overrides the defaults.

A field `name` is `name = ...` in `biopilot.toml` (at the top or under `[biopilot]`) and `BIOPILOT_NAME` in the
environment; README's Settings lists them all.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import get_args, get_type_hints
from urllib.parse import urlsplit

ENV_PREFIX = "BIOPILOT_"
PLANT_KINDS = ("bioreactor", "patient")  # core.plants describes each


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None  # None: start an embedded nats-server -js
    redis_url: str | None = None  # None: start an embedded redis-server
    lake: str = "./lake"  # local path or s3://bucket/prefix
    llm: str = "offline"  # offline | openai
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: int = 20  # the whole of one openai answer, tool rounds included; past it: the offline text
    secret: str | None = None  # None: generated once into the lake
    host: str = "127.0.0.1"
    port: int = 8000
    # hardening (docs/RELIABILITY.md)
    secret_file: str = ""  # "" : ~/.config/biopilot/secret (outside the lake), mode 0600
    token_ttl_h: int = 12  # the longest lifetime a minted token may have
    webhook_allow_hosts: str = ""  # comma-separated hosts webhooks may reach although private/loopback
    max_body_bytes: int = 1_000_000  # request bodies above this are refused (413) before auth runs
    rate_limit_per_min: int = 120  # mutating requests and chats per token per minute
    sse_max_per_token: int = 16  # open SSE streams per token
    chat_max_per_user: int = 2  # chat answers streaming at once per subject
    plant: str = "bioreactor"  # the plant kind a stack runs and its flow, agents and dashboard serve: bioreactor | patient
    event_horizon_h: int = 48  # watermarks and ticks further than this from a unit's recent event time: dead letters
    # retraining from live traffic (outcomes/live_learning.py): patients with known outcomes a challenger is fitted
    # on, and in its shadow window; 0: none
    live_retrain_patients: int = 200
    # the monitoring flow (flows/monitor.py); `flows.launch` sets the lateness, consumer and recovery for its runs
    detector: str = "fusion"  # what the flow runs: fusion | zscore
    detect_far: float | None = None  # `biopilot detect`'s false-alarm budget when --far is not given
    lateness_s: float = 300.0  # event-time lateness a tick is allowed before it counts as late
    flush_rows: int = 250_000  # rows per Delta micro-batch at most (sinks/lake_sink.py says why large)
    flush_s: float = 1.0  # a micro-batch is committed once its oldest row is this old
    flow_durable: str | None = None  # the flow's durable consumer on TELEMETRY; None: the flow's own name
    flow_recovery: bool = True  # whether the flow runs with a recovery store (snapshots and the sink's log)
    flow_wal: str | None = None  # the Delta sink's write-ahead log (local); None: <lake>/.flow-wal/<consumer>
    # a lake on object storage (lake = s3://bucket/prefix, docs/SCALE-OUT.md); each unset one falls back to AWS's
    # variable (`AWS_FALLBACKS`), then to the AWS SDK's own chain (instance roles and the like)
    s3_endpoint: str | None = None  # an S3-compatible store's URL (http://host:port); None: AWS itself
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str | None = None  # None: us-east-1
    s3_allow_http: bool = False  # a plain-http endpoint: only on loopback or a network you trust


@dataclass(frozen=True)
class DetectOptions:
    """How `biopilot detect` conditions a user's signals and sets its alarm thresholds (detectors/external.py)."""

    smooth_rows: int = 20  # causal EWMA span over every signal; 1 = none
    # leave out signals whose level wanders on the training rows (roughness below this; 0 keeps all): it parts
    # SKAB's creeping temperatures from its other signals (docs/QUALITY.md has their roughness)
    min_roughness: float = 0.6
    margin: float = 2.0  # alarm threshold = margin x the highest score held on the training rows
    # a false-alarm budget instead of the margin: the share of normal rows allowed to alarm (docs/DETECT.md)
    far: float | None = None
    persist: str | None = None  # with `far`: the persistence rule "k/n"; None: the one that meets the budget
    # wandering signals (min_roughness): drop | detrend | auto = dropped with a margin, detrended under a budget
    wander: str = "auto"
    # with `far`: causal EWMA span over each detector's statistic before its threshold (lambda = 2 / (span + 1));
    # 1 = none: on top of `smooth_rows` it did not pay on the generated plants (docs/DETECT.md)
    stat_smooth_rows: int = 1


class SettingsError(ValueError):
    pass


# The AWS SDK's variables that stand in for an unset s3_* setting (the first one set wins)
AWS_FALLBACKS = {"s3_endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "s3_access_key": ("AWS_ACCESS_KEY_ID",),
                 "s3_secret_key": ("AWS_SECRET_ACCESS_KEY",), "s3_region": ("AWS_REGION", "AWS_DEFAULT_REGION")}


def s3_storage_options(settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    """The options deltalake (its object_store) is given for an `s3://` lake. Commits create each log entry with
    a conditional PUT (`If-None-Match: *`: of concurrent writers of one version exactly one wins, the others
    retry on the next), never by a copy-and-rename, which S3 cannot make atomic (docs/SCALE-OUT.md)."""
    env = os.environ if env is None else env
    given = {name: getattr(settings, name) or next((env[v] for v in names if env.get(v)), None)
             for name, names in AWS_FALLBACKS.items()}
    options = {"AWS_REGION": given["s3_region"] or "us-east-1", "AWS_CONDITIONAL_PUT": "etag",
               "AWS_S3_ALLOW_UNSAFE_RENAME": "false", "AWS_ALLOW_HTTP": str(settings.s3_allow_http).lower()}
    for name, key in (("s3_endpoint", "AWS_ENDPOINT_URL"), ("s3_access_key", "AWS_ACCESS_KEY_ID"),
                      ("s3_secret_key", "AWS_SECRET_ACCESS_KEY")):
        if given[name]:
            options[key] = given[name]
    return options


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _kind(hint: object) -> type:
    """The type a field holds, `X | None` read as X."""
    if isinstance(hint, UnionType):
        return next(arg for arg in get_args(hint) if arg is not NoneType)
    return hint  # type: ignore[return-value]


def _coerce(name: str, value: object, kind: type) -> object:
    """`value` (a TOML value or an environment string) as `kind`, or a SettingsError that names the setting."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise SettingsError(f"{name}: expected true or false (or 1/0, yes/no, on/off), got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise SettingsError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise SettingsError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    return None if value in ("", None) else str(value)


def lake_storage_options(lake: str | Path) -> dict[str, str] | None:
    """deltalake's options for a lake: `s3_storage_options` of this process's settings for `s3://`, none for a
    local folder (or another scheme, configured by its own environment variables). Read afresh each time: cheap
    next to opening a table, and a process's settings are its environment's."""
    if urlsplit(str(lake)).scheme not in ("s3", "s3a"):
        return None
    return s3_storage_options(load_settings())


def load_settings(toml_path: str | Path = "biopilot.toml", env: dict[str, str] | None = None) -> Settings:
    """Defaults, then `biopilot.toml` (if present), then `BIOPILOT_*` environment variables."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    path = Path(toml_path)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise SettingsError(f"{path}: invalid TOML: {err}") from None
        known = {f.name for f in fields(Settings)}
        for key, value in data.get("biopilot", data).items():
            if key not in known:
                raise SettingsError(f"{path}: unknown setting {key!r}; allowed: {', '.join(sorted(known))}")
            values[key] = value
    for f in fields(Settings):
        env_value = env.get(ENV_PREFIX + f.name.upper())
        if env_value is not None:
            values[f.name] = env_value
    hints = get_type_hints(Settings)
    settings = replace(Settings(), **{k: _coerce(k, v, _kind(hints[k])) for k, v in values.items()})
    if settings.llm not in ("offline", "openai"):
        raise SettingsError(f"llm: {settings.llm!r} is not allowed; use offline or openai")
    if settings.plant not in PLANT_KINDS:
        raise SettingsError(f"plant: {settings.plant!r} is not allowed; use {' or '.join(PLANT_KINDS)}")
    if (settings.s3_endpoint or "").startswith("http://") and not settings.s3_allow_http:
        raise SettingsError(f"s3_endpoint: {settings.s3_endpoint} is plain http; set s3_allow_http = true if it is "
                            "on loopback or a network you trust, else use https")
    return settings
