"""A local OpenAI-compatible chat endpoint for the `openai` backend's tests (the `fake_openai_server` fixture
serves it on a free port).

`mode["kind"]` picks its behaviour per request: "ok" (asks for the evidence tool, then streams an answer token
by token), "error" (500), "slow" (5 s before answering), "dribble" (one token a second, forever).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def _chunk(delta: dict, finish: str | None = None) -> str:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "local",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def fake_openai(mode: dict) -> FastAPI:
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def completions(request: Request):  # noqa: ANN202
        body = await request.json()
        app.state.requests.append(body)
        if mode["kind"] == "error":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if mode["kind"] == "slow":
            await asyncio.sleep(5)
        if mode["kind"] == "dribble":
            return StreamingResponse(_dribble(), media_type="text/event-stream")
        tool_results = [m for m in body["messages"] if m["role"] == "tool"]

        def stream() -> Iterator[str]:
            if not tool_results:  # first round: ask for the evidence
                arguments = json.dumps({"incident_id": "inc42"})
                call = {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_incident", "arguments": arguments}}
                yield _chunk({"role": "assistant", "tool_calls": [call]})
                yield _chunk({}, "tool_calls")
            else:  # second round: phrase what the tool returned, token by token
                top = json.loads(tool_results[-1]["content"])["hypotheses"][0]
                for token in ["Most ", "likely: ", top["fault"], ". ", top["evidence"][0]]:
                    yield _chunk({"role": "assistant", "content": token})
                yield _chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


async def _dribble() -> AsyncIterator[str]:
    """Never finishes, never stalls long enough for a per-read timeout."""
    while True:
        yield _chunk({"role": "assistant", "content": "still thinking... "})
        await asyncio.sleep(1.0)

