"""Operator actions: setpoints and feeds, fault injection, replay of stored runs. Every one is audited, the
refused ones too."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from redis.exceptions import RedisError

from dashboard.auth import Principal
from dashboard.deps import Runtime, is_operator, runtime, viewer
from dashboard.models import Accepted, IdPath, ReplayRequest, ReplayStatus
from dashboard.relay import REACTORS_KEY
from sinks import delta
from sources.commands import ControlCommand, FaultInjection
from sources.replay import Replay

router = APIRouter(prefix="/api", tags=["control"])
# an id by the API's pattern, less '.': a unit's id (reactor, patient) is one token of the NATS subject
# biopilot.control.<unit>
UNIT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
ReactorId = Annotated[str, Path(pattern=UNIT_ID_PATTERN, description="a live reactor's id, e.g. r1")]
MAX_FINISHED_REPLAYS = 50  # older finished replays are forgotten


def stop_needs_admin(unit: str) -> str:
    return f"stop halts the whole plant (every {unit}, and `biopilot up` with it), so it needs the admin role"


STOP_NEEDS_ADMIN = stop_needs_admin("reactor")
REFUSALS = {403: {"description": "stop without the admin role"},
            404: {"description": "no live reactor with this id (see GET /api/reactors)"}}


async def _refuse(rt: Runtime, request: Request, who: Principal, action: str, target: str, payload: dict,
                  code: int, message: str) -> None:
    await rt.audit(request, who, action, target, payload, f"refused: {message}")
    raise HTTPException(code, message)


async def _to_live_reactor(rt: Runtime, request: Request, who: Principal, action: str, reactor_id: str,
                           command: dict, unit: str = "reactor") -> Accepted:
    """Publish `command` to a unit (a reactor, or a patient: `unit`) the relay has seen live; 404 (audited) for
    any other id."""
    try:
        live = await rt.redis.hexists(REACTORS_KEY, reactor_id)
    except RedisError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"cannot tell which {unit}s are live: the cache does not answer") from None
    if not live:
        await _refuse(rt, request, who, action, reactor_id, command, status.HTTP_404_NOT_FOUND,
                      f"no live {unit} {reactor_id!r}; see GET /api/{unit}s")
    subject = f"biopilot.control.{reactor_id}"
    await rt.nc.publish(subject, json.dumps(command).encode())
    await rt.nc.flush()
    await rt.audit(request, who, action, reactor_id, command, "published")
    return Accepted(subject=subject, command=command)


async def control_unit(rt: Runtime, request: Request, who: Principal, unit_id: str, command: dict,
                       unit: str = "reactor") -> Accepted:
    """A control command to a live unit: `stop` only with the admin role (403, audited, otherwise)."""
    if command["type"] == "stop" and not who.can("admin"):
        await _refuse(rt, request, who, "control", unit_id, command, status.HTTP_403_FORBIDDEN,
                      f"{stop_needs_admin(unit)}; your token is {who.role}")
    return await _to_live_reactor(rt, request, who, "control", unit_id, command, unit)


@router.post("/reactors/{reactor_id}/control", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=REFUSALS,
             description="A setpoint (`name` and a `value` within that setpoint's range), a feed bolus "
                         f"(`volume_ml`) or `stop`, to a live reactor (else 404). Operator role; **{STOP_NEEDS_ADMIN}"
                         "** (403 otherwise): the plant runs all its reactors in one process.")
async def control(body: ControlCommand, reactor_id: ReactorId, request: Request, rt: Runtime = Depends(runtime),
                  who: Principal = Depends(is_operator)) -> Accepted:
    # who made the change is the signed-in subject, never what the body claims: the run's annotation names them
    command = body.model_dump(exclude_none=True) | {"changed_by": who.subject}
    return await control_unit(rt, request, who, reactor_id, command)


@router.post("/reactors/{reactor_id}/faults", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={404: REFUSALS[404]})
async def inject_fault(body: FaultInjection, reactor_id: ReactorId, request: Request,
                       rt: Runtime = Depends(runtime), who: Principal = Depends(is_operator)) -> Accepted:
    """Inject a labelled fault into a live reactor, starting now."""
    return await _to_live_reactor(rt, request, who, "fault", reactor_id, body.model_dump())


async def live_units(rt: Runtime) -> dict[str, dict]:
    """Unit id -> {run_id, t} of every unit (reactor or patient) the relay has seen streaming; none while the
    cache does not answer (the overviews still show what is stored)."""
    try:
        raw = await rt.redis.hgetall(REACTORS_KEY)
    except RedisError:
        return {}
    return {k.decode(): json.loads(v) for k, v in raw.items()}


@router.get("/reactors", dependencies=[viewer])
async def reactors(rt: Runtime = Depends(runtime)) -> dict[str, dict]:
    raw = await rt.redis.hgetall(REACTORS_KEY)
    return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


@dataclass
class ReplayEntry:
    """One replay the dashboard started. A finished one keeps its figures and lets go of the `Replay`, and with
    it the run's Arrow tables."""

    replay: Replay | None
    run_id: str
    as_run: str
    reactor_id: str
    speed: float | None
    total: int
    state: Literal["running", "done", "stopped", "failed"] = "running"
    published: int = 0
    held_s: float = 0.0

    def finish(self, state: Literal["done", "stopped", "failed"]) -> None:
        if self.replay is not None:
            self.published, self.held_s = self.replay.published, self.replay.backpressure.held_s
        self.state, self.replay = state, None

    def stop(self) -> None:
        if self.replay is not None:
            self.replay.stopped = True

    def status(self, replay_id: str) -> ReplayStatus:
        r = self.replay
        state = "paused" if r is not None and r.paused.is_set() else self.state
        return ReplayStatus(replay_id=replay_id, run_id=self.run_id, as_run=self.as_run, reactor_id=self.reactor_id,
                            speed=self.speed, state=state, published=r.published if r else self.published,
                            total=self.total, held_s=r.backpressure.held_s if r else self.held_s)


def next_replay_number(replays: dict[str, ReplayEntry]) -> int:
    # ids only grow: the newest entry is never the one forgotten, so max + 1 is new even after forgetting
    return max((int(k.removeprefix("replay")) for k in replays), default=0) + 1


def forget_finished(replays: dict[str, ReplayEntry], keep: int = MAX_FINISHED_REPLAYS) -> None:
    """Drop the oldest finished replays beyond `keep` (the dict is in start order)."""
    finished = [k for k, e in replays.items() if e.replay is None]
    for k in finished[:max(0, len(finished) - keep)]:
        del replays[k]


@router.post("/replay", status_code=status.HTTP_202_ACCEPTED, response_model=ReplayStatus)
async def start_replay(body: ReplayRequest, request: Request, rt: Runtime = Depends(runtime),
                       who: Principal = Depends(is_operator)) -> ReplayStatus:
    lake = rt.settings.lake
    ticks = await asyncio.to_thread(delta.read, lake, "ticks", None, [body.run_id])
    if ticks is None or ticks.num_rows == 0:
        raise HTTPException(404, f"no stored run {body.run_id!r}")
    assays = await asyncio.to_thread(delta.read, lake, "assays", None, [body.run_id])
    n = next_replay_number(rt.replays)
    replay_id = f"replay{n}"
    as_run = body.as_run or f"{body.run_id}-replay-{n}"
    replay = Replay(rt.settings.nats_url or "", ticks, assays, body.speed, as_run=as_run, as_reactor=replay_id)
    entry = ReplayEntry(replay, body.run_id, as_run, replay.reactor, body.speed, ticks.num_rows)
    rt.replays[replay_id] = entry

    async def run() -> None:
        try:
            await entry.replay.run()
            entry.finish("stopped" if entry.replay.stopped else "done")
        except Exception:  # noqa: BLE001 - reported through the status
            entry.finish("failed")
        forget_finished(rt.replays)

    rt.spawn(run())
    await rt.audit(request, who, "replay", replay_id, body.model_dump(), "started")
    return entry.status(replay_id)


@router.get("/replay", dependencies=[viewer], response_model=list[ReplayStatus])
async def list_replays(rt: Runtime = Depends(runtime)) -> list[ReplayStatus]:
    return [e.status(k) for k, e in rt.replays.items()]


@router.post("/replay/{replay_id}/{action}", response_model=ReplayStatus,
             responses={404: {"description": "no such replay"}, 409: {"description": "the replay has ended"}})
async def replay_action(replay_id: IdPath, action: Literal["pause", "resume", "stop"], request: Request,
                        rt: Runtime = Depends(runtime), who: Principal = Depends(is_operator)) -> ReplayStatus:
    entry = rt.replays.get(replay_id)
    if entry is None:
        raise HTTPException(404, f"no replay {replay_id!r}")
    if entry.replay is None:
        await _refuse(rt, request, who, f"replay_{action}", replay_id, {}, status.HTTP_409_CONFLICT,
                      f"replay {replay_id!r} has ended ({entry.state})")
    entry.replay.command(action)
    await rt.audit(request, who, f"replay_{action}", replay_id, {}, "done")
    return entry.status(replay_id)
