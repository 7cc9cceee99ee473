"""Alert subscriptions: filters stored in Redis, each with its own SSE stream and an optional webhook.

A subscription matches alerts (reactor, minimum severity, detector) and, for a fault class, the troubleshooting
agent's final diagnosis chunks whose leading cause is that fault. Webhooks get a JSON POST with an
`X-BioPilot-Signature: sha256=<hex HMAC of the body>` header, retried with backoff (0.5, 1, 2, 4 s) on a
connection error or a 5xx; a 4xx is the receiver's final word.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets

import httpx
import redis.asyncio as aioredis

from biopilot.events import SEVERITY_RANK
from dashboard.hub import Hub

log = logging.getLogger(__name__)
KEY = "biopilot:subscriptions"
RETRIES = (0.5, 1.0, 2.0, 4.0)


def new_id() -> str:
    return secrets.token_hex(6)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def matches(event: dict, reactor: str | None = None, severity: str | None = None, detector: str | None = None,
            incident: str | None = None) -> bool:
    """The stream filters: reactor, minimum severity (a clear always passes), detector, incident."""
    if reactor and event.get("reactor_id") != reactor:
        return False
    if severity and event.get("type") != "clear" and \
            SEVERITY_RANK.get(event.get("severity") or "info", 0) < SEVERITY_RANK[severity]:
        return False
    if detector and event.get("detector", detector) != detector:
        return False
    return not (incident and event.get("incident_id") != incident)


def diagnosis_fault(event: dict) -> str | None:
    findings = event.get("findings") or {}
    hyps = findings.get("hypotheses") or []
    return None if findings.get("abstained") or not hyps else hyps[0]["fault"]


def accepts(sub: dict, channel: str, event: dict) -> bool:
    if sub.get("reactor") and event.get("reactor_id", (event.get("findings") or {}).get("reactor_id")) != sub["reactor"]:
        return False
    if channel == "agents":  # only finished diagnoses, and only when a fault class is asked for
        return bool(sub.get("fault")) and event.get("done") and diagnosis_fault(event) == sub["fault"]
    if event.get("type") == "clear" or sub.get("fault"):
        return False
    return matches(event, severity=sub.get("severity"), detector=sub.get("detector"))


async def load_all(redis: aioredis.Redis) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in (await redis.hgetall(KEY)).items()}


async def deliver(client: httpx.AsyncClient, sub: dict, event: dict) -> bool:
    body = json.dumps({"subscription_id": sub["id"], "event": event}, default=str).encode()
    headers = {"Content-Type": "application/json", "X-BioPilot-Signature": signature(sub["secret"], body)}
    for wait in (*RETRIES, None):
        try:
            reply = await client.post(sub["webhook_url"], content=body, headers=headers)
            if reply.status_code < 500:
                return reply.status_code < 300
        except httpx.HTTPError as err:
            log.info("webhook %s: %s", sub["webhook_url"], err)
        if wait is None:
            return False
        await asyncio.sleep(wait)
    return False


async def dispatch_webhooks(hub: Hub, redis: aioredis.Redis) -> None:
    """Runs for the app's lifetime: every alert and diagnosis against every subscription with a webhook."""
    async with httpx.AsyncClient(timeout=5) as client:
        async def watch(channel: str) -> None:
            async for _, event in hub.events(channel, lambda _e: True):
                subs = [s for s in (await load_all(redis)).values() if s.get("webhook_url")]
                for sub in subs:
                    if accepts(sub, channel, event):
                        asyncio.create_task(deliver(client, sub, event))

        await asyncio.gather(watch("alerts"), watch("agents"))
