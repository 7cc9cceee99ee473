"""`biopilot bench scale`: the monitoring flow as a Bytewax cluster of 1, 2, 3 processes draining one fixed
backlog, beside today's shape (one process on an unpartitioned stream: one consumer, one sink partition) in the
same run; CPU-seconds per million ticks; and exactly-once under faults, each an assertion (ticks rows =
published, no duplicate (run_id, seq), scores = ticks, alert ids unique) with its recovery time.

The faults are in `FAULTS`, each a `Fault`: what it strikes (a function of the running `Scenario`, its
recovery time out) and what its scenario needs (a NATS cluster of 3 nodes for the broker's fault, the lake on an
embedded object store for the store's restart). Every scenario publishes a paced stream of ticks while the fault
strikes, lets the flow drain, then counts the lake. Then the live latency, publish -> alert at a fixed rate,
with each number of processes (`live_latency`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamState

from biopilot.bench.pipeline import fleet_ticks
from biopilot.bench.pipeline_latency import (
    LIVE_LATENESS_S,
    LIVE_REACTORS,
    LIVE_ROWS_PER_MESSAGE,
    Percentiles,
    live_ticks,
    publish_live,
)
from core.nats_cluster import NatsCluster, start_nats_cluster, wait_delivered_past
from core.object_store import ObjectStore, start_object_store
from core.object_store import restart as restart_store
from core.processes import kill_process_group, stop_process_groups
from core.services import (
    STREAMS,
    ManagedServer,
    connect_nats,
    ensure_streams,
    start_nats,
    telemetry_transform,
)
from flows.launch import start_cluster
from sinks import delta
from sources.backpressure import flow_backlog
from sources.publish import publish_ticks, publish_watermark, split_by_reactor

DETECTOR = "zscore"  # the flow's own cost, not the fusion's models: what scaling out divides
SNAPSHOT_S = 1.0  # epochs of 1 s: with a recovery store rows land an epoch or two after they came
TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 150.0  # a fault run's drain once the publisher is done (its ticks are all in the stream)
STORE_DOWN_S = 3.0  # how long the object store stays away in its fault


def set_partitions(url: str, partitions: int) -> None:
    """TELEMETRY with `partitions` partitions (0: none, the stream as it was before them), as many replicas as
    the broker has room for (`ensure_streams`: 3 on a cluster)."""
    async def put() -> None:
        replicas = await ensure_streams(url)
        nc = await connect_nats(url)
        try:
            config = dataclasses.replace(STREAMS["TELEMETRY"], num_replicas=replicas,
                                         subject_transform=telemetry_transform(partitions) if partitions else None)
            await nc.jetstream().update_stream(config)
        finally:
            await nc.close()
    asyncio.run(put())


def start_broker(root: Path, partitions: int, nodes: int = 1) -> ManagedServer | NatsCluster:
    """One nats-server, or a cluster of `nodes`, its TELEMETRY stream of `partitions` partitions."""
    server = start_nats(root) if nodes == 1 else start_nats_cluster(root, nodes)
    try:
        set_partitions(server.url, partitions)
    except BaseException:
        server.stop()
        raise
    return server


async def _publish(url: str, ticks: pa.Table, message_rows: int, pace_s: float,
                   paced_until: threading.Event | None = None) -> None:
    """Each reactor's ticks in messages of `message_rows`, reactors interleaved, `pace_s` between rounds (until
    `paced_until` is set, then at once); then a watermark per reactor just past its last tick (releases them
    all)."""
    nc = await connect_nats(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    runs = split_by_reactor(ticks)
    longest = max(t.num_rows for t in runs.values())
    for offset in range(0, longest, message_rows):
        for reactor, rows in runs.items():
            if offset < rows.num_rows:
                await publish_ticks(js, reactor, rows.slice(offset, message_rows), max_rows=message_rows)
        if pace_s and not (paced_until is not None and paced_until.is_set()):
            await asyncio.sleep(pace_s)
    for reactor, rows in runs.items():
        await publish_watermark(js, reactor, int(rows["ts"].cast(pa.int64()).to_numpy().max()) + 1)
    await nc.close()


def publish(url: str, ticks: pa.Table, message_rows: int = 20_000, pace_s: float = 0.0,
            paced_until: threading.Event | None = None) -> None:
    asyncio.run(_publish(url, ticks, message_rows, pace_s, paced_until))


def backlog(url: str, durable: str) -> tuple[int, int] | None:
    """The flow's consumers' (undelivered, unacknowledged) messages; None before they all exist, or while the
    broker cannot say (a NATS cluster electing a leader)."""
    async def ask() -> tuple[int, int] | None:
        nc = await connect_nats(url)
        try:
            return await flow_backlog(nc.jetstream(), durable)
        except (NatsTimeoutError, NoRespondersError):
            return None
        finally:
            await nc.close()
    return asyncio.run(ask())


def _stream_state(url: str) -> StreamState:
    """TELEMETRY's state: its messages, its last sequence."""
    async def ask() -> StreamState:
        nc = await connect_nats(url)
        try:
            return (await nc.jetstream().stream_info("TELEMETRY")).state
        finally:
            await nc.close()
    return asyncio.run(ask())


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    """A running flow cluster and where it keeps its state."""

    url: str
    lake: str | Path  # a folder, or s3://bucket/prefix (the store's settings in this process's environment)
    recovery: Path
    logs: Path
    durable: str
    lateness_s: float = 300.0
    procs: list = field(default_factory=list)

    def start(self, processes: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = start_cluster(self.url, str(self.lake), processes, self.recovery, self.lateness_s,
                                   durable=self.durable, log_dir=self.logs, snapshot_s=SNAPSHOT_S,
                                   extra_env={"BIOPILOT_DETECTOR": DETECTOR})

    def kill(self, index: int | None = None) -> None:
        """kill -9 one process (`index`) or all; with one, the rest are stopped as the supervisor does."""
        for proc in self.procs if index is None else [self.procs[index]]:
            kill_process_group(proc)
        self.stop(grace_s=2.0)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_process_groups(self.procs, grace_s)

    def dead(self) -> list[int]:
        return [k for k, p in enumerate(self.procs) if p.poll() is not None]

    def check_alive(self) -> None:
        if dead := self.dead():
            tail = (self.logs / f"flow-{dead[0]}.log").read_text()[-2000:]
            raise RuntimeError(f"flow process {dead[0]} died:\n{tail}")


def ticks_rows(lake: str | Path) -> int:
    """Tick rows committed so far (0 while the table is missing or cannot be read)."""
    try:
        table = delta.open_table(lake, "ticks")
        return 0 if table is None else int(pc.sum(pa.table(table.get_add_actions(flatten=True))["num_records"])
                                           .as_py() or 0)
    except OSError:  # the object store away: nothing new counted
        return 0


def wait_until(what: str, condition: Callable[[], bool], cluster: Cluster | None = None,
               timeout_s: float = TIMEOUT_S, every_s: float = 0.1) -> float:
    """Poll until `condition`; the time it took."""
    started = time.monotonic()
    while not condition():
        if cluster is not None:
            cluster.check_alive()
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic() - started


def drained(cluster: Cluster, published: int) -> bool:
    """Every message acknowledged, every write-ahead segment committed, every tick in Delta."""
    return (backlog(cluster.url, cluster.durable) == (0, 0)
            and not any((cluster.recovery / "lake-wal").rglob("0*"))
            and ticks_rows(cluster.lake) >= published)


# ---- exactly-once under faults ------------------------------------------------------------------------------

@dataclass
class FaultResult:
    fault: str
    published: int  # ticks
    ticks_rows: int
    lost: int  # published ticks not in the lake
    duplicated: int  # tick rows beyond the first of their (run_id, seq)
    scores_rows: int
    duplicated_alerts: int
    recovery_s: float  # from the fault until ticks land again
    exactly_once: bool
    crashes: int = 0  # processes that died by themselves after the fault (the cluster restarted, as supervised)


def exactly_once(name: str, lake: str | Path, published: pa.Table, recovery_s: float) -> FaultResult:
    """Count the lake against what was published."""
    ticks = delta.read(lake, "ticks", columns=["run_id", "seq"])
    keys = set(zip(ticks["run_id"].to_pylist(), ticks["seq"].to_pylist(), strict=True))
    sent = set(zip(published["run_id"].to_pylist(), published["seq"].to_pylist(), strict=True))
    scores = delta.read(lake, "scores", columns=["run_id"])
    alerts = delta.read(lake, "alerts", columns=["alert_id"])
    alert_ids = [] if alerts is None else alerts["alert_id"].to_pylist()
    lost, duplicated = len(sent - keys), ticks.num_rows - len(keys)
    scores_rows = 0 if scores is None else scores.num_rows
    duplicated_alerts = len(alert_ids) - len(set(alert_ids))
    return FaultResult(name, len(sent), ticks.num_rows, lost, duplicated, scores_rows, duplicated_alerts,
                       round(recovery_s, 2), not lost and not duplicated and not duplicated_alerts
                       and scores_rows == ticks.num_rows and keys == sent)


def _recovers(cluster: Cluster, since: float, rows_before: int) -> float:
    """Seconds from `since` until the lake has more ticks than `rows_before` (counted once the struck
    processes were gone: nothing of theirs lands after)."""
    wait_until("ticks landing after the fault", lambda: ticks_rows(cluster.lake) > rows_before, cluster)
    return time.monotonic() - since


def _a_commit(cluster: Cluster) -> None:
    """Until the next commit of ticks: the flow is mid-stream."""
    rows = ticks_rows(cluster.lake)
    wait_until("a commit", lambda: ticks_rows(cluster.lake) > rows, cluster, every_s=0.02)


@dataclass
class Scenario:
    """What a fault strikes: the running flow cluster of `processes`, its broker and, for a lake on one, the
    object store."""

    cluster: Cluster
    processes: int
    broker: ManagedServer | NatsCluster
    store: ObjectStore | None = None
    crashes: int = 0  # the cluster restarted after a process died by itself

    def restart_dead(self) -> bool:
        """Restart the cluster if a process of it died, as the supervisor does (a process whose commit failed
        while the object store was away dies some moments later); whether it did."""
        if not self.cluster.dead():
            return False
        self.crashes += 1
        self.cluster.stop(grace_s=2.0)
        self.cluster.start(self.processes)
        return True


def kill_mid_epoch(s: Scenario) -> float:
    """kill -9 of one process half an epoch after a commit; the cluster restarts as a whole."""
    _a_commit(s.cluster)
    time.sleep(SNAPSHOT_S / 2)
    struck_at = time.monotonic()
    s.cluster.kill(s.processes - 1)
    s.cluster.start(s.processes)
    return _recovers(s.cluster, struck_at, ticks_rows(s.cluster.lake))


def kill_during_commit(s: Scenario) -> float:
    """kill -9 of the cluster the moment a commit of ticks lands: the same segment's other tables (scores,
    alerts) are being committed, the segment not yet deleted."""
    log_dir = Path(s.cluster.lake) / "ticks" / "_delta_log"
    wait_until("the ticks table", log_dir.exists, s.cluster, every_s=0.02)
    seen = len(os.listdir(log_dir))
    wait_until("a commit", lambda: len(os.listdir(log_dir)) > seen, s.cluster, every_s=0.002)
    struck_at = time.monotonic()
    s.cluster.kill()
    s.cluster.start(s.processes)
    return _recovers(s.cluster, struck_at, ticks_rows(s.cluster.lake))


def rescale(s: Scenario) -> float:
    """`processes` -> one more -> `processes` on the same recovery store, each switch mid-stream; the recovery
    time of the slower switch."""
    slowest = 0.0
    for n in (s.processes + 1, s.processes):
        _a_commit(s.cluster)
        struck_at = time.monotonic()
        s.cluster.stop()
        s.cluster.start(n)
        slowest = max(slowest, _recovers(s.cluster, struck_at, ticks_rows(s.cluster.lake)))
    return slowest


def kill_stream_leader(s: Scenario) -> float:
    """kill -9 of the NATS node leading TELEMETRY (of 3, the stream's 3 replicas) mid-stream, restarted once the
    flow reads again; the seconds until a flow consumer delivers a message stored after the kill (the leader
    elections and the clients' moves to another node)."""
    assert isinstance(s.broker, NatsCluster)
    _a_commit(s.cluster)
    at_kill = _stream_state(s.cluster.url).last_seq
    struck_at = time.monotonic()
    victim = s.broker.kill_stream_leader("TELEMETRY")
    stalled_s = wait_delivered_past(s.cluster.url, at_kill, struck_at, durable_prefix=s.cluster.durable,
                                    timeout_s=TIMEOUT_S)
    s.broker.restart(victim)
    return stalled_s


def restart_object_store(s: Scenario) -> float:
    """The lake's object store stopped mid-stream for `STORE_DOWN_S` (ticks keep coming) and started again on
    its data; the seconds from its return until ticks land again. A flow process whose commit failed meanwhile
    is restarted with the rest, as the supervisor does."""
    assert s.store is not None
    _a_commit(s.cluster)
    s.store.stop()
    time.sleep(STORE_DOWN_S)
    s.store = restart_store(s.store)
    back_at, rows = time.monotonic(), ticks_rows(s.cluster.lake)

    wait_until("ticks landing after the store's return", lambda: not s.restart_dead()
               and ticks_rows(s.cluster.lake) > rows)
    return time.monotonic() - back_at


def in_turn(*strikes: Callable[[Scenario], float]) -> Callable[[Scenario], float]:
    """The `strikes` one after another on one scenario (each once the flow is back from the one before); the
    slowest recovery."""
    return lambda s: max(strike(s) for strike in strikes)


@dataclass(frozen=True)
class Fault:
    strike: Callable[[Scenario], float]  # strikes mid-stream; its recovery_s
    nats_nodes: int = 1  # the broker: one server, or a cluster of this many
    object_store: bool = False  # the lake on an embedded object store, else a folder


FAULTS: dict[str, Fault] = {"kill_mid_epoch": Fault(kill_mid_epoch), "kill_during_commit": Fault(kill_during_commit),
                            "rescale": Fault(rescale), "kill_stream_leader": Fault(kill_stream_leader, nats_nodes=3),
                            "restart_object_store": Fault(restart_object_store, object_store=True)}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with `values` (the flow processes inherit it), as it was afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_fault(name: str, fault: Fault, root: Path, ticks: pa.Table, processes: int = 2, partitions: int = 4,
              message_rows: int = 1_000, pace_s: float = 0.05) -> FaultResult:
    """`ticks` published paced (a round of `message_rows` per reactor every `pace_s`, the rest at once after the
    fault) while the flow runs as `processes` and `fault` strikes mid-stream; the lake counted once it has
    drained. Give enough ticks for the pace to outlast the fault."""
    stack = contextlib.ExitStack()
    try:
        broker = start_broker(root / "nats", partitions, fault.nats_nodes)
        stack.callback(broker.stop)
        s = Scenario(Cluster(broker.url, root / "lake", root / "recovery", root / "logs", durable=f"scale-{name}"),
                     processes, broker)
        if fault.object_store:
            s.store = start_object_store(root / "s3")
            stack.callback(lambda: s.store.stop())  # the store as it is at the end: the fault restarts it
            stack.enter_context(_environment(s.store.settings_env()))
            s.cluster.lake = s.store.lake("bench")
        cluster = s.cluster
        stack.callback(cluster.stop)
        cluster.start(processes)
        wait_until("the flow's consumers", lambda: backlog(broker.url, cluster.durable) is not None, cluster)
        struck = threading.Event()  # the rest goes at once: a fault's restarts take long on a loaded machine
        publisher = _Publisher(broker.url, ticks, message_rows, pace_s, struck)
        publisher.start()
        stack.callback(publisher.cancel)
        recovery_s = fault.strike(s)
        struck.set()
        publisher.join(TIMEOUT_S)
        if publisher.error is not None or publisher.is_alive():
            raise RuntimeError(f"{name}: publishing failed or did not finish") from publisher.error
        try:  # well inside the tests' own limit, so that a failure says what is missing
            wait_until("the flow drained", lambda: not s.restart_dead() and drained(cluster, ticks.num_rows),
                       timeout_s=DRAIN_TIMEOUT_S, every_s=0.5)
        except TimeoutError as err:
            segments = sorted(p.name for p in (cluster.recovery / "lake-wal").rglob("0*"))
            raise TimeoutError(f"{err}: {ticks_rows(cluster.lake)} of {ticks.num_rows} ticks in Delta, backlog "
                               f"{backlog(broker.url, cluster.durable)}, write-ahead segments {segments}") from None
        time.sleep(2 * SNAPSHOT_S)  # anything extra would land now
        return dataclasses.replace(exactly_once(name, cluster.lake, ticks, recovery_s), crashes=s.crashes)
    finally:
        stack.close()


class _Publisher(threading.Thread):
    """`_publish` on a thread of its own; `cancel` ends it wherever it waits. (Left running after a failed run, a
    publish retrying against the stopped broker logged its client's reconnects into the tests that came next.)"""

    def __init__(self, url: str, ticks: pa.Table, message_rows: int, pace_s: float,
                 paced_until: threading.Event) -> None:
        super().__init__(name="scale-publisher", daemon=True)
        self.args = (url, ticks, message_rows, pace_s, paced_until)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None

    async def _main(self) -> None:
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        await _publish(*self.args)

    def run(self) -> None:
        try:
            asyncio.run(self._main())  # its end cancels what the client left running
        except BaseException as err:  # noqa: BLE001 - handed to the thread that waits for it
            self.error = err

    def cancel(self) -> None:
        if self.loop is not None and self.task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to end
                self.loop.call_soon_threadsafe(self.task.cancel)
        self.join(5)


# ---- throughput vs processes --------------------------------------------------------------------------------

@dataclass
class Drain:
    processes: int
    partitions: int  # of the stream: 0, today's unpartitioned one
    # all ticks / (first delivery to every tick in Delta): includes the sink's commit one to two epochs (1 s
    # each here) behind, a constant the backlog's size makes small
    ticks_per_s: float
    cpu_s_per_million_ticks: float  # the flow processes', from first delivery to the last commit
    runs_ticks_per_s: list[float] = field(default_factory=list)  # each run's, when this is their median
    crashes: int = 0  # processes that died during the drain (the cluster restarted; its time counted)

    @classmethod
    def median_of(cls, runs: list[Drain]) -> Drain:
        def median(values: list[float]) -> float:
            return round(float(statistics.median(values)), 2)
        return cls(runs[0].processes, runs[0].partitions, median([r.ticks_per_s for r in runs]),
                   median([r.cpu_s_per_million_ticks for r in runs]),
                   [r.ticks_per_s for r in runs], sum(r.crashes for r in runs))


def drain_backlog(root: Path, ticks: pa.Table, processes: int, partitions: int) -> Drain:
    """The flow as `processes` draining `ticks`, all published before it starts."""
    server = start_broker(root / "nats", partitions)
    cluster = Cluster(server.url, root / "lake", root / "recovery", root / "logs", durable="scale")
    try:
        publish(server.url, ticks)
        messages = _stream_state(server.url).messages
        cluster.start(processes)
        pids = [p.pid for p in cluster.procs]

        def started() -> bool:  # a message is on its way: the start-up (imports, models) is not timed
            found = backlog(server.url, cluster.durable)
            return found is not None and found[0] < messages
        wait_until("the first delivery", started, cluster, every_s=0.05)
        t0, cpu0, crashes = time.monotonic(), _cpu_s(pids), 0
        while True:
            try:
                wait_until("every tick in Delta", lambda: ticks_rows(cluster.lake) >= ticks.num_rows, cluster,
                           every_s=0.1)
                break
            except RuntimeError:  # a process died: the cluster restarts, as under the supervisor (counted)
                crashes += 1
                if crashes > 2:
                    raise
                cpu0 -= _cpu_s(pids)  # the dead processes' CPU is counted up to here
                cluster.stop(grace_s=2.0)
                cluster.start(processes)
                pids = [p.pid for p in cluster.procs]
                cpu0 += _cpu_s(pids)
        elapsed, cpu = time.monotonic() - t0, _cpu_s(pids) - cpu0
    finally:
        cluster.stop()
        server.stop()
    return Drain(processes, partitions, round(ticks.num_rows / elapsed), round(cpu / (ticks.num_rows / 1e6), 2),
                 crashes=crashes)


# ---- live latency -------------------------------------------------------------------------------------------

@dataclass
class LiveLatency:
    processes: int
    rate_ticks_per_s: float
    publish_to_alert: Percentiles  # every alert, timed from the publish of the tick that fired it
    publish_to_first_alert: Percentiles  # each run's first (its fault's detection)
    publish_to_commit: Percentiles  # per round of messages, ticks in Delta


def live_latency(root: Path, ticks: pa.Table, processes: int, rate: float, partitions: int) -> LiveLatency:
    """The flow as `processes` (recovery store, epochs of `SNAPSHOT_S`, lateness 0: an in-order source, the
    latency is the pipeline's) fed `ticks` live at `rate` ticks/s, the reactors' messages staggered over each
    round (`pipeline_latency.publish_live`)."""
    server = start_broker(root / "nats", partitions)
    cluster = Cluster(server.url, root / "lake", root / "recovery", root / "logs", durable="scale-live",
                      lateness_s=LIVE_LATENESS_S)
    try:
        cluster.start(processes)
        wait_until("the flow's consumers", lambda: backlog(server.url, cluster.durable) is not None, cluster)
        commit_s, alerts = asyncio.run(publish_live(server.url, root / "lake", ticks, rate, LIVE_ROWS_PER_MESSAGE))
        cluster.check_alive()  # a latency measured across a crash would not be the pipeline's
    finally:
        cluster.stop()
        server.stop()
    first: dict[str, float] = {}
    for run_id, seconds in alerts:
        first.setdefault(run_id, seconds)
    return LiveLatency(processes, rate, Percentiles.of([s for _, s in alerts]), Percentiles.of(list(first.values())),
                       Percentiles.of(commit_s))


@dataclass
class ScaleBench:
    ticks: int
    repeats: int
    partitions: int
    cores: int
    today_single_process: Drain  # unpartitioned stream, one process: the flow before issue 27
    drains: list[Drain]
    ticks_per_s_by_processes: dict[str, float]
    speedup_by_processes: dict[str, float]  # over one process of the partitioned flow, same run
    cpu_s_per_million_ticks_by_processes: dict[str, float]
    faults: list[FaultResult]
    lost: int
    duplicated: int
    recovery_s: dict[str, float]
    exactly_once: bool
    live: list[LiveLatency]
    alert_latency_ms_by_processes: dict[str, dict[str, float]]  # publish -> alert p50, p99 at the live rate


def run(ticks: int = 3_000_000, processes: tuple[int, ...] = (1, 2, 3), partitions: int = 8,
        fault_ticks: int = 240_000, faults: dict[str, Fault] | None = None, keep: str | None = None,
        repeats: int = 2, live_processes: tuple[int, ...] = (1, 2), live_rate: float = 10_000.0,
        live_s: float = 30.0, say: Callable[[str], None] = lambda _: None) -> ScaleBench:
    """Each flow shape drains the backlog `repeats` times, in turns (medians reported); then each fault; then
    the live latency with each of `live_processes` (none: `live_s` 0)."""
    import tempfile

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="biopilot-bench-scale-"))
    say(f"making {ticks:,} ticks")
    data = fleet_ticks(ticks)
    shapes = [(1, 0), *((n, partitions) for n in processes)]  # (1, 0): today's flow, an unpartitioned stream
    runs: dict[tuple[int, int], list[Drain]] = {shape: [] for shape in shapes}
    for k in range(repeats):  # in turns, so that a slow spell of the shared machine falls on all of them
        for n, parts in shapes:
            say(f"run {k + 1}/{repeats}: {n} process(es), {parts or 'no'} partitions")
            runs[n, parts].append(drain_backlog(root / f"run-{k}-{n}x{parts}", data, n, parts))
    today = Drain.median_of(runs[1, 0])
    drains = [Drain.median_of(runs[n, partitions]) for n in processes]
    one = next((d for d in drains if d.processes == 1), today)
    results = []
    # 8 reactors' ticks, paced at 2,000 ticks/s until the fault has struck (the rest at once): it strikes while
    # they stream
    reactors = pa.array(pc.unique(data["reactor_id"]).to_pylist()[:8])
    fault_data = data.filter(pc.is_in(data["reactor_id"], reactors)).slice(0, fault_ticks)
    for name, fault in (FAULTS if faults is None else faults).items():
        say(f"fault: {name}")
        results.append(run_fault(name, fault, root / f"fault-{name}", fault_data, partitions=partitions,
                                 message_rows=100, pace_s=0.4))
    live_data = live_ticks(LIVE_REACTORS, int(live_rate * live_s / LIVE_REACTORS)) if live_s else None
    live = []
    for n in live_processes if live_data is not None else ():
        say(f"live latency at {live_rate:,.0f} ticks/s: {n} process(es)")
        live.append(live_latency(root / f"live-{n}", live_data, n, live_rate, partitions))
    return ScaleBench(
        ticks=data.num_rows, repeats=repeats, partitions=partitions, cores=os.cpu_count() or 1, today_single_process=today,
        drains=drains, ticks_per_s_by_processes={str(d.processes): d.ticks_per_s for d in drains},
        speedup_by_processes={str(d.processes): round(d.ticks_per_s / one.ticks_per_s, 2) for d in drains},
        cpu_s_per_million_ticks_by_processes={str(d.processes): d.cpu_s_per_million_ticks for d in drains},
        faults=results, lost=sum(r.lost for r in results), duplicated=sum(r.duplicated for r in results),
        recovery_s={r.fault: r.recovery_s for r in results}, exactly_once=all(r.exactly_once for r in results),
        live=live, alert_latency_ms_by_processes={
            str(v.processes): {"p50": round(v.publish_to_alert.p50_ms, 1), "p99": round(v.publish_to_alert.p99_ms, 1)}
            for v in live})


def format_report(b: ScaleBench) -> str:
    lines = [f"{b.ticks:,} ticks, stream of {b.partitions} partitions, {b.cores} cores",
             f"  today (1 process, unpartitioned): {b.today_single_process.ticks_per_s:>12,.0f} ticks/s  "
             f"{b.today_single_process.cpu_s_per_million_ticks:6.2f} CPU-s per M ticks"]
    for d in b.drains:
        lines.append(f"  {d.processes} process(es):                  {d.ticks_per_s:>12,.0f} ticks/s  "
                     f"{d.cpu_s_per_million_ticks:6.2f} CPU-s per M ticks  x{b.speedup_by_processes[str(d.processes)]}")
    for r in b.faults:
        lines.append(f"  fault {r.fault:<20} lost {r.lost}, duplicated {r.duplicated}, alerts twice "
                     f"{r.duplicated_alerts}, scores {r.scores_rows}/{r.ticks_rows}, recovery {r.recovery_s} s: "
                     f"{'exactly once' if r.exactly_once else 'NOT exactly once'}")
    for v in b.live:
        a, first, commit = v.publish_to_alert, v.publish_to_first_alert, v.publish_to_commit
        lines.append(f"  live {v.rate_ticks_per_s:,.0f} ticks/s, {v.processes} process(es): publish -> alert p50 "
                     f"{a.p50_ms:.0f} ms p99 {a.p99_ms:.0f} ms ({a.count} alerts; each run's first p50 "
                     f"{first.p50_ms:.0f} p99 {first.p99_ms:.0f} ms), publish -> commit p50 {commit.p50_ms:.0f} ms "
                     f"p99 {commit.p99_ms:.0f} ms")
    return "\n".join(lines)

