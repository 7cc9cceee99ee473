"""Operator actions: setpoints and feeds, fault injection, replay of stored runs. Every one is audited."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status

from dashboard.auth import Principal
from dashboard.deps import Runtime, is_operator, runtime, viewer
from dashboard.models import Accepted, ControlCommand, FaultInjection, ReplayRequest, ReplayStatus
from sinks import delta
from sources.replay import Replay

router = APIRouter(prefix="/api", tags=["control"])
ReactorId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="reactor id, e.g. r1")]


async def _command(rt: Runtime, reactor_id: str, command: dict) -> Accepted:
    subject = f"biopilot.control.{reactor_id}"
    await rt.nc.publish(subject, json.dumps(command).encode())
    await rt.nc.flush()
    return Accepted(subject=subject, command=command)


@router.post("/reactors/{reactor_id}/control", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def control(body: ControlCommand, reactor_id: ReactorId, rt: Runtime = Depends(runtime),
                  who: Principal = Depends(is_operator)) -> Accepted:
    command = body.model_dump(exclude_none=True)
    rt.audit(who, "control", reactor_id, command)
    return await _command(rt, reactor_id, command)


@router.post("/reactors/{reactor_id}/faults", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def inject_fault(body: FaultInjection, reactor_id: ReactorId, rt: Runtime = Depends(runtime),
                       who: Principal = Depends(is_operator)) -> Accepted:
    command = {"type": "fault", **body.model_dump()}
    rt.audit(who, "fault", reactor_id, command)
    return await _command(rt, reactor_id, command)


@router.get("/reactors", dependencies=[viewer])
async def reactors(rt: Runtime = Depends(runtime)) -> dict[str, dict]:
    from dashboard.relay import REACTORS_KEY

    raw = await rt.redis.hgetall(REACTORS_KEY)
    return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


def _status(replay_id: str, entry: dict) -> ReplayStatus:
    r: Replay = entry["replay"]
    state = entry["state"]
    if state == "running" and r.paused.is_set():
        state = "paused"
    return ReplayStatus(replay_id=replay_id, run_id=entry["run_id"], as_run=entry["as_run"], reactor_id=r.reactor,
                        speed=r.speed, state=state, published=r.published, total=r.ticks.num_rows,
                        held_s=r.backpressure.held_s)


@router.post("/replay", status_code=status.HTTP_202_ACCEPTED, response_model=ReplayStatus)
async def start_replay(body: ReplayRequest, rt: Runtime = Depends(runtime),
                       who: Principal = Depends(is_operator)) -> ReplayStatus:
    lake = rt.settings.lake
    ticks = await asyncio.to_thread(delta.read, lake, "ticks", None, [body.run_id])
    if ticks is None or ticks.num_rows == 0:
        raise HTTPException(404, f"no stored run {body.run_id!r}")
    assays = await asyncio.to_thread(delta.read, lake, "assays", None, [body.run_id])
    n = len(rt.replays) + 1
    replay_id = f"replay{n}"
    as_run = body.as_run or f"{body.run_id}-replay-{n}"
    replay = Replay(rt.settings.nats_url or "", ticks, assays, body.speed, as_run=as_run, as_reactor=replay_id)
    entry = {"replay": replay, "run_id": body.run_id, "as_run": as_run, "state": "running"}
    rt.replays[replay_id] = entry

    async def run() -> None:
        try:
            await replay.run()
            entry["state"] = "stopped" if replay.stopped else "done"
        except Exception:  # noqa: BLE001 - reported through the status
            entry["state"] = "failed"

    rt.spawn(run())
    rt.audit(who, "replay", replay_id, body.model_dump())
    return _status(replay_id, entry)


@router.get("/replay", dependencies=[viewer], response_model=list[ReplayStatus])
async def list_replays(rt: Runtime = Depends(runtime)) -> list[ReplayStatus]:
    return [_status(k, e) for k, e in rt.replays.items()]


@router.post("/replay/{replay_id}/{action}", response_model=ReplayStatus)
async def replay_action(replay_id: str, action: str, rt: Runtime = Depends(runtime),
                        who: Principal = Depends(is_operator)) -> ReplayStatus:
    entry = rt.replays.get(replay_id)
    if entry is None:
        raise HTTPException(404, f"no replay {replay_id!r}")
    try:
        entry["replay"].command(action)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    rt.audit(who, f"replay_{action}", replay_id, {})
    return _status(replay_id, entry)
