"""Language backends: the `openai` path against a local OpenAI-compatible server (real client, real HTTP,
streamed tokens, a tool call over the evidence), its fallback to `offline`, and the offline text itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from agents.llm import OfflineBackend, OpenAIBackend, make_backend
from core.config import Settings

FINDING = {"incident_id": "inc42", "reactor_id": "r2", "start_ts": "2026-01-11T12:20:00+00:00", "end_ts": None,
           "severity": "warning", "alert_count": 1, "signals": ["do_pct"], "abstained": False, "facts": [],
           "hypotheses": [{"fault": "do_limitation", "confidence": 0.66, "match": 0.95,
                           "root_cause": "oxygen transfer limited", "action": "check the O2 supply",
                           "evidence": ["do_pct read 3.2 % air sat. at 2026-01-11 13:29 UTC, below the 40 % air "
                                        "sat. normal runs show at that culture age (z = -89.9)"]}]}


@pytest.fixture
def server(fake_openai_server: Callable[[dict], tuple[str, FastAPI]]) -> tuple[str, dict, FastAPI]:
    mode = {"kind": "ok"}
    url, app = fake_openai_server(mode)
    return url, mode, app


def test_openai_backend_calls_the_evidence_tool_and_streams_tokens(server):
    url, _, app = server
    backend = OpenAIBackend("local-model", url, "test-key", timeout_s=5)
    chunks = list(backend.explain(FINDING))
    assert len(chunks) >= 5  # streamed, not one block
    text = "".join(chunks)
    assert text.startswith("Most likely: do_limitation.") and "do_pct read 3.2" in text
    first, second = app.state.requests
    assert first["stream"] is True and {t["function"]["name"] for t in first["tools"]} == {"list_incidents",
                                                                                         "get_incident"}
    assert json.loads(second["messages"][-1]["content"])["incident_id"] == "inc42"


def test_openai_backend_falls_back_to_offline_on_a_server_error(server):
    url, mode, _ = server
    mode["kind"] = "error"
    text = "".join(OpenAIBackend("local-model", url, None, timeout_s=5).explain(FINDING))
    assert text == "".join(OfflineBackend().explain(FINDING))


def test_openai_backend_falls_back_to_offline_past_its_timeout(server):
    url, mode, _ = server
    mode["kind"] = "slow"
    t = time.perf_counter()
    text = "".join(OpenAIBackend("local-model", url, None, timeout_s=1).answer("why?", [FINDING]))
    assert time.perf_counter() - t < 4
    assert "do_limitation" in text


def test_make_backend_follows_the_settings(server, monkeypatch):
    url, _, _ = server
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    assert make_backend(Settings()).name == "offline"
    assert make_backend(Settings(llm="openai")).name == "openai"


def test_offline_text_cites_signal_time_and_value_and_abstains_honestly():
    chunks = list(OfflineBackend().explain(FINDING))
    assert "do_limitation" in chunks[1] and "do_pct read 3.2" in chunks[2] and "13:29 UTC" in chunks[2]
    abstained = list(OfflineBackend().explain(FINDING | {"abstained": True, "facts": ["ph read 6.7 at x"]}))
    assert "Insufficient evidence" in abstained[1] and "ph read 6.7" in abstained[1]
    assert "No incident involved" in "".join(OfflineBackend().answer("what about temperature?", [FINDING]))
