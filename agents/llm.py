"""Language backends: `offline` (deterministic, the default) and `openai` (any OpenAI-compatible endpoint).

The troubleshooting ranking is code; a backend only phrases findings and answers questions. The `openai`
backend goes through LangChain's `ChatOpenAI` (the official openai client underneath) with tool calls over the
evidence (`list_incidents`, `get_incident`), streams tokens, and falls back to the offline text on any error,
so an explanation is never lost to a flaky endpoint. `llm_timeout_s` bounds each read and the whole answer,
tool rounds and streaming included: an endpoint that stalls or dribbles tokens forever is cut at it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from agents import phrasing
from core.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_TOOL_ROUNDS = 3
SYSTEM = ("You are the troubleshooting assistant of a CHO fed-batch bioreactor plant. Use the tools to read the "
          "incidents. The ranking of causes is given: do not change it and do not invent facts. Every sentence "
          "that states a fact must name its signal, its time and its value, as the evidence does. Be brief.")


NARRATE_SYSTEM = ("You explain results to a process-development scientist of a CHO fed-batch plant: a design of "
                  "experiments, a fitted model, a what-if re-simulation or a knowledge graph's evidence. Use only "
                  "the facts given; every number you state must be one of theirs, with its unit. Be brief.")


class Backend(Protocol):
    name: str

    def explain(self, finding: dict) -> Iterator[str]: ...

    def answer(self, question: str, findings: list[dict]) -> Iterator[str]: ...

    def narrate(self, instruction: str, facts: dict, offline: list[str]) -> Iterator[str]: ...


class OfflineBackend:
    name = "offline"

    def explain(self, finding: dict) -> Iterator[str]:
        yield from phrasing.explain(finding)

    def answer(self, question: str, findings: list[dict]) -> Iterator[str]:
        yield from phrasing.answer(question, findings)

    def narrate(self, instruction: str, facts: dict, offline: list[str]) -> Iterator[str]:
        """Facts someone else computed, in words: `offline` is already their text."""
        yield from offline


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, base_url: str | None, api_key: str | None, timeout_s: float) -> None:
        from langchain_openai import ChatOpenAI

        self.timeout_s = timeout_s
        self.llm = ChatOpenAI(model=model, base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s,
                              max_retries=0, streaming=True)
        self.offline = OfflineBackend()

    def explain(self, finding: dict) -> Iterator[str]:
        prompt = f"Explain incident {finding['incident_id']} to the operator: cause, evidence, actions."
        yield from self._chat(prompt, [finding], lambda: self.offline.explain(finding))

    def answer(self, question: str, findings: list[dict]) -> Iterator[str]:
        yield from self._chat(question, findings, lambda: self.offline.answer(question, findings))

    def narrate(self, instruction: str, facts: dict, offline: list[str]) -> Iterator[str]:
        """The facts rephrased by the model (no tools: the facts are all it gets); the offline text on any error
        or past `llm_timeout_s`."""
        from langchain_core.messages import HumanMessage, SystemMessage

        messages = [SystemMessage(NARRATE_SYSTEM),
                    HumanMessage(f"{instruction}\n\nFacts (JSON):\n{json.dumps(facts, default=str)}")]
        sent = False
        try:
            for chunk in until(time.monotonic() + self.timeout_s, self.llm.stream(messages)):
                if chunk.content:
                    sent = True
                    yield str(chunk.content)
            if not sent:
                raise RuntimeError("the model said nothing")
        except Exception as err:  # noqa: BLE001 - any endpoint failure falls back to the offline text
            log.warning("openai backend failed (%s); using the offline text", err)
            if sent:
                yield "\n\n"
            yield from offline

    def _chat(self, prompt: str, findings: list[dict], fallback) -> Iterator[str]:  # noqa: ANN001
        from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
        from langchain_core.tools import tool

        by_id = {f["incident_id"]: f for f in findings}

        @tool
        def list_incidents() -> str:
            """List the incidents (id, reactor, start, severity, lead signals, top cause)."""
            return json.dumps([{k: f[k] for k in ("incident_id", "reactor_id", "start_ts", "severity", "signals")}
                               | {"top_cause": (f["hypotheses"] or [{}])[0].get("fault")} for f in findings])

        @tool
        def get_incident(incident_id: str) -> str:
            """The full findings of one incident: ranked causes with their evidence, facts and actions."""
            return json.dumps(by_id.get(incident_id, {"error": f"no incident {incident_id}"}))

        tools = {"list_incidents": list_incidents, "get_incident": get_incident}
        llm = self.llm.bind_tools(list(tools.values()))
        messages = [SystemMessage(SYSTEM), HumanMessage(prompt)]
        sent = False
        deadline = time.monotonic() + self.timeout_s
        try:
            for _ in range(MAX_TOOL_ROUNDS + 1):
                reply = None
                for chunk in until(deadline, llm.stream(messages)):
                    reply = chunk if reply is None else reply + chunk
                    if chunk.content:
                        sent = True
                        yield str(chunk.content)
                if reply is None or not reply.tool_calls:
                    return
                messages.append(reply)
                for call in reply.tool_calls:
                    result = tools[call["name"]].invoke(call["args"]) if call["name"] in tools else "unknown tool"
                    messages.append(ToolMessage(result, tool_call_id=call["id"]))
            raise RuntimeError("the model kept calling tools")
        except Exception as err:  # noqa: BLE001 - any endpoint failure falls back to the offline text
            log.warning("openai backend failed (%s); using the offline text", err)
            if sent:
                yield "\n\n"
            yield from fallback()


def until(deadline: float, items: Iterable[T]) -> Iterator[T]:
    """The items of `items` until `time.monotonic()` reaches `deadline`, then TimeoutError. A thread does the
    blocking reads, so neither a stalled read nor an endpoint that keeps sending holds the caller past the
    deadline; the thread stops (closing the stream) at its next item, or when its read times out."""
    handoff: queue.Queue = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        source = iter(items)
        try:
            for item in source:
                if stop.is_set():
                    break
                handoff.put(("item", item))
            handoff.put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            handoff.put(("error", err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    threading.Thread(target=read, name="llm-stream", daemon=True).start()
    try:
        while True:
            left_s = deadline - time.monotonic()
            try:
                if left_s <= 0:
                    raise queue.Empty
                kind, value = handoff.get(timeout=left_s)
            except queue.Empty:
                raise TimeoutError("the answer ran past its deadline") from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def make_backend(settings: Settings) -> Backend:
    if settings.llm == "openai":
        return OpenAIBackend(settings.llm_model, os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY"),
                             settings.llm_timeout_s)
    return OfflineBackend()
