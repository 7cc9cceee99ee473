"""The webhook sender: every alert and finished diagnosis, to every subscription whose filter takes it.

Delivery: a JSON POST `{"subscription_id": ..., "event": ...}` with two headers,

    X-BioPilot-Timestamp: <unix seconds when this attempt was signed>
    X-BioPilot-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

so a receiver recomputes the HMAC over the timestamp, a dot and the raw body with the subscription's secret
(returned once, at creation), compares in constant time, and refuses a timestamp too far from its clock (a
replayed request). Each attempt is signed afresh. An attempt has `ATTEMPT_TIMEOUT_S` in all (resolving,
connecting, sending, the reply's status); a connection error, a timeout or a 5xx is retried after 0.5, 1, 2,
4 s; a 4xx is the receiver's final word. Redirects are not followed and no proxy from the environment is used.

Addresses: at creation and again at every attempt the host is resolved and *every* address it resolves to must
be public (`is_public`: not loopback, link-local, private, shared/CGNAT, multicast, reserved or unspecified,
IPv4 addresses embedded in IPv6 judged as IPv4). The request then goes to the address that was checked, with
the name in the `Host` header and as the TLS server name, so a DNS answer that changes in between (rebinding)
cannot steer it elsewhere. Hosts or addresses named in the `webhook_allow_hosts` setting are let through.

Supervision: alerts come from the ALERTS stream through the durable consumer `biopilot-webhooks` (an outage of
the dashboard, Redis or the broker loses none; they are acked once queued; a consumer deleted under the sender
is made again from the last alert it took, so that one alert may come twice: its id lets a receiver drop the
repeat), diagnoses from a core subscription. Subscriptions are reloaded from their bucket every `REFRESH_S`,
keeping the last ones known while it cannot be read. A failure of the reader restarts it with exponential
backoff. Each subscription has a queue of `QUEUE_MAX` events (full: the oldest is dropped and counted) and
`IN_FLIGHT_MAX` workers with their own connection pool, so a receiver that hangs holds only its own.
`health()` is what `/healthz` and `/metrics` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from urllib.parse import urlsplit, urlunsplit

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from dashboard import subscriptions

log = logging.getLogger(__name__)
TIMESTAMP_HEADER = "X-BioPilot-Timestamp"
SIGNATURE_HEADER = "X-BioPilot-Signature"
RETRIES_S = (0.5, 1.0, 2.0, 4.0)
ATTEMPT_TIMEOUT_S = 10.0
QUEUE_MAX = 1000
IN_FLIGHT_MAX = 2
LAG_WARN = 100  # events waiting for one receiver before /healthz lists it as lagging
REFRESH_S = 1.0
BACKOFF_S = (0.5, 30.0)  # first and longest wait before the reader is restarted
STABLE_S = 60.0  # a reader that ran this long starts over from the shortest backoff
START_WAIT_S = 5.0  # how long the app's start waits for the reader (alerts after that are not missed)
DURABLE = "biopilot-webhooks"
ALERT_SUBJECTS, DIAGNOSIS_SUBJECTS = "biopilot.alerts.>", "biopilot.agent.>"
FETCH_BATCH, FETCH_WAIT_S = 256, 1.0
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = IPv6Network("64:ff9b::/96")


class AddressRefused(ValueError):
    """A webhook URL that may not be called: its scheme, its credentials or an address it resolves to."""


def allowed_hosts(setting: str) -> frozenset[str]:
    """`webhook_allow_hosts` ("hook.lan, 127.0.0.1, [::1]") as lower-case names and addresses."""
    return frozenset(h.strip().strip("[]").lower() for h in setting.split(",") if h.strip())


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, 6to4, NAT64), if any."""
    if ip in NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def is_public(ip: IPv4Address | IPv6Address) -> bool:
    """Routable on the internet: `is_global` leaves multicast and some reserved ranges in, so those go too."""
    inner = _embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
    if inner is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
        return is_public(inner)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _kind(ip: IPv4Address | IPv6Address) -> str:
    inner = _embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
    ip = inner or ip
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


@dataclass(frozen=True)
class Target:
    """Where one attempt goes: the checked address in the URL, the name in `Host` and as TLS server name."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str]


async def resolve(url: str, allow: frozenset[str]) -> Target:
    """Check `url` and pin it to an address. AddressRefused for what may never be called; a name that does not
    resolve raises OSError (socket.gaierror), which can be transient."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise AddressRefused(f"only http and https webhooks, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("credentials in a webhook URL are not allowed (the signature authenticates)")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as err:  # a port that is not a number or out of range
        raise AddressRefused(f"bad port: {err}") from None
    if not host:
        raise AddressRefused("the URL has no host")
    try:
        addresses = [ip_address(host)]
        literal = True
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError:  # IDNA refuses it: no DNS name looks like this
            raise AddressRefused(f"{host!r} is not a valid host name") from None
        addresses = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
        literal = False
    if host not in allow:
        for ip in addresses:
            if not is_public(ip) and str(ip) not in allow:
                named = "" if literal else f"{host} resolves to "
                raise AddressRefused(f"{named}{ip}, a {_kind(ip)} address: webhooks go to public addresses "
                                     "only (an admin can allow a host with the webhook_allow_hosts setting)")
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    sni = {"sni_hostname": host} if parts.scheme == "https" and not literal else {}
    return Target(pinned, {"Host": parts.netloc}, sni)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def _unsubscribe(sub: Subscription | JetStreamContext.PullSubscription) -> None:
    with contextlib.suppress(Exception):  # the connection may be gone: the server drops the interest anyway
        await sub.unsubscribe()


def _event(data: bytes) -> dict | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


@dataclass(eq=False)
class Outbox:
    """One subscription's queue, workers and connection pool."""

    sub: dict
    since: float  # monotonic time it was tracked: a bucket snapshot taken before that does not remove it
    queue: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(
        timeout=ATTEMPT_TIMEOUT_S, trust_env=False, follow_redirects=False,
        limits=httpx.Limits(max_connections=IN_FLIGHT_MAX, max_keepalive_connections=IN_FLIGHT_MAX)))
    workers: list[asyncio.Task] = field(default_factory=list)
    in_flight: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None

    def offer(self, event: dict) -> None:
        if len(self.queue) >= QUEUE_MAX:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.wake.set()

    async def next(self) -> dict:
        while not self.queue:
            self.wake.clear()
            await self.wake.wait()
        return self.queue.popleft()

    def stats(self) -> dict:
        return {"queued": len(self.queue), "in_flight": self.in_flight, "delivered": self.delivered,
                "failed": self.failed, "dropped": self.dropped, "lag": len(self.queue) + self.in_flight,
                "last_error": self.last_error}

    async def close(self) -> None:
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()


@dataclass(eq=False)
class WebhookSender:
    nc: NATS
    js: JetStreamContext
    allow: frozenset[str] = frozenset()
    state: str = "stopped"  # running | restarting | stopped
    restarts: int = 0
    last_error: str | None = None
    refreshed_at: float | None = None  # monotonic time of the last bucket snapshot read
    outboxes: dict[str, Outbox] = field(default_factory=dict)
    forgotten: dict[str, float] = field(default_factory=dict)  # deleted here, maybe not in a snapshot yet
    last_taken: datetime | None = None  # stream time of the last alert queued
    task: asyncio.Task | None = None
    stopping: bool = False  # `stop` was called: whatever ends the reader now ends it for good
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the reader first runs

    async def start(self) -> None:
        """Start the supervised reader and wait (a little) for it: the durable consumer, when it is new, takes
        only alerts published after it exists. A broker that is down does not hold the app up."""
        self.task = asyncio.create_task(self._supervise(), name="webhooks")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT_S):
                await self.ready.wait()

    async def stop(self) -> None:
        self.stopping = True
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for box in self.outboxes.values():
            await box.close()
        self.outboxes.clear()
        self.state = "stopped"

    def health(self) -> dict:
        subs = {sub_id: box.stats() for sub_id, box in self.outboxes.items()}
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "subscriptions_read_s_ago": None if self.refreshed_at is None
                else round(time.monotonic() - self.refreshed_at, 1),
                "lagging": sorted(sub_id for sub_id, s in subs.items() if s["lag"] >= LAG_WARN),
                "subscriptions": subs}

    def track(self, sub: dict) -> None:
        """A subscription (just created here, or read from the bucket) starts receiving events."""
        if sub.get("webhook_url") and sub["id"] not in self.outboxes:
            box = Outbox(sub, time.monotonic())
            box.workers = [asyncio.create_task(self._work(box), name=f"webhook-{sub['id']}")
                           for _ in range(IN_FLIGHT_MAX)]
            self.outboxes[sub["id"]] = box

    async def forget(self, sub_id: str) -> None:
        self.forgotten[sub_id] = time.monotonic()
        box = self.outboxes.pop(sub_id, None)
        if box:
            await box.close()

    async def _supervise(self) -> None:
        backoff = BACKOFF_S[0]
        while True:
            started = time.monotonic()
            try:
                await self._serve()
            except Exception as err:  # noqa: BLE001 - whatever ended the reader, it is restarted
                if self.stopping:  # nats-py can turn the cancel of a pending fetch into its own TimeoutError
                    raise asyncio.CancelledError from err
                cause = err.exceptions[0] if isinstance(err, ExceptionGroup) else err
                self.state, self.last_error = "restarting", _describe(cause)
                self.restarts += 1
                log.warning("webhook sender stopped (%s); restarting in %.1f s", self.last_error, backoff)
            if time.monotonic() - started > STABLE_S:
                backoff = BACKOFF_S[0]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])

    async def _serve(self) -> None:
        kv = await subscriptions.bucket(self.js)
        await self._refresh(kv)  # nothing is taken from the stream before the subscriptions are known
        # only used when the consumer does not exist: the first start, or one deleted under a running sender
        start = {"deliver_policy": DeliverPolicy.NEW} if self.last_taken is None else \
            {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": self.last_taken}
        async with contextlib.AsyncExitStack() as reading:
            alerts = await self.js.pull_subscribe(ALERT_SUBJECTS, durable=DURABLE, stream="ALERTS",
                                                  config=ConsumerConfig(ack_wait=30, **start))
            reading.push_async_callback(_unsubscribe, alerts)
            reading.push_async_callback(_unsubscribe, await self.nc.subscribe(DIAGNOSIS_SUBJECTS,
                                                                              cb=self._on_diagnosis))
            self.state = "running"
            self.ready.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._refresh_loop(kv))
                group.create_task(self._consume(alerts))

    async def _refresh(self, kv: KeyValue) -> None:
        started = time.monotonic()
        snapshot = await subscriptions.load_all(kv)
        for sub_id, sub in snapshot.items():
            if self.forgotten.get(sub_id, 0.0) < started:
                self.track(sub)
        for sub_id, box in list(self.outboxes.items()):
            if sub_id not in snapshot and box.since < started:
                await self.forget(sub_id)
        self.forgotten = {k: t for k, t in self.forgotten.items() if t >= started}
        self.refreshed_at = time.monotonic()

    async def _refresh_loop(self, kv: KeyValue) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self._refresh(kv)
            except Exception as err:  # noqa: BLE001 - the bucket is out of reach: keep the ones known
                log.warning("webhook subscriptions not refreshed: %s", _describe(err))

    async def _consume(self, alerts: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await alerts.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:  # nats-py's, and asyncio's that its fetch raises when a wait leaves no time
                if self.stopping:  # or a cancel nats-py turned into one
                    raise asyncio.CancelledError from None
                continue
            for msg in msgs:
                self._dispatch("alerts", _event(msg.data))
                await msg.ack()  # queued: from here a full queue, not the stream, decides what is kept
                self.last_taken = msg.metadata.timestamp

    async def _on_diagnosis(self, msg: Msg) -> None:
        self._dispatch("agents", _event(msg.data))

    def _dispatch(self, channel: str, event: dict | None) -> None:
        if event is None:
            return
        for box in self.outboxes.values():
            if subscriptions.accepts(box.sub, channel, event):
                box.offer(event)

    async def _work(self, box: Outbox) -> None:
        while True:
            event = await box.next()
            box.in_flight += 1
            try:
                error = await self._deliver(box, event)
            except Exception as err:  # noqa: BLE001 - one broken delivery must not end the worker
                log.exception("webhook %s", box.sub["id"])
                error = _describe(err)
            finally:
                box.in_flight -= 1
            if error is None:
                box.delivered += 1
            else:
                box.failed += 1
                box.last_error = error

    async def _deliver(self, box: Outbox, event: dict) -> str | None:
        """None once delivered, else why not (after the retries)."""
        body = json.dumps({"subscription_id": box.sub["id"], "event": event}, default=str).encode()
        error = ""
        for wait in (0.0, *RETRIES_S):
            await asyncio.sleep(wait)
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    status = await self._post(box, body)
                if status < 300:
                    return None
                error = f"HTTP {status}"
                if status < 500:
                    return error
            except AddressRefused as err:  # retrying does not make an address acceptable
                return str(err)
            except (httpx.HTTPError, OSError, TimeoutError) as err:
                error = _describe(err)
        return error

    async def _post(self, box: Outbox, body: bytes) -> int:
        target = await resolve(box.sub["webhook_url"], self.allow)
        timestamp = str(int(time.time()))
        headers = {**target.headers, "Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: signature(box.sub["secret"], timestamp, body)}
        # the reply's body is never read: a receiver cannot make the sender hold a large answer
        async with box.client.stream("POST", target.url, content=body, headers=headers,
                                     extensions=target.extensions) as reply:
            return reply.status_code
