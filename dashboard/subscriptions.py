"""Alert subscriptions: filters with an owner, kept in a JetStream key-value bucket, each with its own SSE
stream and an optional webhook (the sender is `dashboard/webhooks.py`).

A subscription matches alerts (reactor, minimum severity, detector) and, for a fault class, the
troubleshooting agent's final diagnosis chunks whose leading cause is that fault.

The bucket (`biopilot_subscriptions`, file storage) is on the broker's disk rather than in Redis: Redis here
is a cache without persistence, and a subscription is configuration that has to outlive a cache restart. One
key per subscription id; the value is the JSON record, the webhook's HMAC secret included (the API never
lists it).
"""

from __future__ import annotations

import asyncio
import json
import secrets

from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, InvalidKeyError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from core.events import SEVERITY_RANK

BUCKET = "biopilot_subscriptions"
MAX_PER_OWNER = 20  # one owner cannot make the sender fan out without bound
SNAPSHOT_TIMEOUT_S = 5.0
# the snapshot's ephemeral consumer is gone this long after it stops (the server's default would keep one per
# refresh for minutes)
SNAPSHOT_CONSUMER_IDLE_S = 5.0


def new_id() -> str:
    return secrets.token_hex(6)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


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
    """Whether `sub` takes `event`; a malformed event (a field of the wrong type) is taken by none."""
    try:
        return _accepts(sub, channel, event)
    except (AttributeError, KeyError, TypeError, IndexError):
        return False


def _accepts(sub: dict, channel: str, event: dict) -> bool:
    reactor = event.get("reactor_id", (event.get("findings") or {}).get("reactor_id"))
    if sub.get("reactor") and reactor != sub["reactor"]:
        return False
    if channel == "agents":  # only finished diagnoses, and only when a fault class is asked for
        return bool(sub.get("fault")) and event.get("done") and diagnosis_fault(event) == sub["fault"]
    if event.get("type") == "clear" or sub.get("fault"):
        return False
    return matches(event, severity=sub.get("severity"), detector=sub.get("detector"))


def visible_to(sub: dict, subject: str, is_admin: bool) -> bool:
    """Admins see every subscription; everyone else only their own."""
    return is_admin or sub.get("owner") == subject


async def bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:  # the first subscription ever (two callers creating it alike is no conflict)
        return await js.create_key_value(bucket=BUCKET, history=1, storage=StorageType.FILE)


async def load_all(kv: KeyValue) -> dict[str, dict]:
    """Every subscription, read in one pass over the bucket (latest value per key; deleted keys left out)."""
    watcher = await kv.watchall(inactive_threshold=SNAPSHOT_CONSUMER_IDLE_S)
    subs: dict[str, dict] = {}
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
            async for entry in watcher:
                if entry is None:  # the watcher's marker: everything stored so far has been read
                    break
                if entry.operation in (KV_DEL, KV_PURGE):
                    subs.pop(entry.key, None)
                else:
                    subs[entry.key] = json.loads(entry.value)
    finally:
        await watcher.stop()
    return subs


async def load(kv: KeyValue, sub_id: str) -> dict | None:
    try:
        entry = await kv.get(sub_id)
    except (KeyNotFoundError, InvalidKeyError):  # a deleted key answers the first; "a." the second
        return None
    return json.loads(entry.value)


async def save(kv: KeyValue, sub: dict) -> None:
    await kv.put(sub["id"], json.dumps(sub).encode())


async def remove(kv: KeyValue, sub_id: str) -> None:
    await kv.purge(sub_id)  # no history of a deleted subscription (and its secret) stays in the bucket
