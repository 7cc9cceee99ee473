"""Agent chat: a question about a run or an incident, answered from the evidence, streamed as SSE chunks.

Each user may have `chat_max_per_user` answers streaming at once (a language model's answer holds a thread and
an endpoint's quota for up to `llm_timeout_s`); past it, 429."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pyarrow.compute as pc
from fastapi import APIRouter, Depends, HTTPException
from starlette.concurrency import iterate_in_threadpool

from agents.chat import ask, route
from agents.diagnose import RunNotFound, load_run
from dashboard.auth import Principal
from dashboard.deps import Runtime, is_viewer, runtime, viewer
from dashboard.models import ChatRequest
from dashboard.slots import HeldStream
from sinks import delta

router = APIRouter(prefix="/api", tags=["agents"], dependencies=[viewer])


def _run_of_incident(lake: str, incident_id: str) -> str | None:
    incidents = delta.read(lake, "incidents", columns=["incident_id", "run_id"])
    if incidents is None:
        return None
    rows = incidents.filter(pc.equal(incidents["incident_id"], incident_id))
    return rows["run_id"][0].as_py() if rows.num_rows else None


@router.post("/chat")
def chat(body: ChatRequest, rt: Runtime = Depends(runtime),
         who: Principal = Depends(is_viewer)) -> HeldStream:
    """Streams `chunk` events ({"text"}) and a final `done` event. A question about the process ("what raises
    HCP?") or a goal ("maximise titer with lactate below 3 g/L") needs no run."""
    lake = rt.settings.lake
    run_id = body.run_id or (_run_of_incident(lake, body.incident_id) if body.incident_id else None)
    if run_id is None and route(body.question) == "run":
        raise HTTPException(422, "name a run_id, or an incident_id the monitoring agent has recorded")
    if run_id is not None:
        try:
            load_run(lake, run_id)
        except RunNotFound as err:
            raise HTTPException(404, err.for_api) from None

    async def chunks() -> AsyncIterator[dict]:
        async for text in iterate_in_threadpool(ask(lake, run_id, body.question, rt.backend, body.incident_id)):
            yield {"event": "chunk", "data": json.dumps({"text": text})}
        yield {"event": "done", "data": "{}"}

    return HeldStream(chunks(), rt.chats, who.subject, rt.settings.chat_max_per_user,
                      "chat answers streaming")
