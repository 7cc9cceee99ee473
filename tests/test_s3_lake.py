"""The lake on object storage: an embedded SeaweedFS S3 store (core/object_store.py) that honours conditional
writes, Delta tables on it through `sinks.delta` (concurrent writers in separate processes included), and the
flow writing to it while the store restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from agents import report
from agents.overview import summarize
from biopilot.simulate import PATIENT, simulate_to_lake
from core.config import Settings, SettingsError, load_settings, s3_storage_options
from core.object_store import ObjectStore, restart, start_object_store
from core.processes import stop_process_groups
from core.services import free_port, wait_port
from dashboard.relay import REACTORS_KEY
from flows.launch import start_flow
from outcomes import registry
from sinks import delta
from sinks.objects import fetch_file
from sources.patient.scenarios import load_patient_scenario
from sources.scenarios import load_scenario
from tests.dashboard_helpers import wait_for
from tests.stack_helpers import Up
from tests.stream_helpers import Flow, make_ticks, publish, wait_rows

pytestmark = pytest.mark.integration  # an object store process in every test

SCHEMA = pa.schema([("run_id", pa.string()), ("seq", pa.int64())])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One store for the module, its settings in this process's environment (as `biopilot up --s3` does)."""
    started = start_object_store(tmp_path_factory.mktemp("s3"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in started.settings_env().items():
                mp.setenv(name, value)
            yield started
    finally:
        started.stop()


def test_of_concurrent_conditional_puts_of_one_key_exactly_one_succeeds(store: ObjectStore) -> None:
    for attempt in range(3):
        key = f"conditional/{attempt}"
        statuses: dict[int, int] = {}

        def put(writer: int, key: str = key, statuses: dict[int, int] = statuses) -> None:
            statuses[writer] = store.request("PUT", key, {"If-None-Match": "*"}, f"writer {writer}".encode()
                                             ).status_code

        threads = [threading.Thread(target=put, args=(writer,)) for writer in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [writer for writer, status in statuses.items() if status == 200]
        assert len(winners) == 1 and sorted(statuses.values()) == [200] + [412] * 11, statuses
        assert store.request("GET", key).content == f"writer {winners[0]}".encode()  # the winner's, unchanged


def test_s3_settings_become_conditional_put_options_with_aws_fallbacks() -> None:
    env = {"BIOPILOT_S3_ENDPOINT": "http://127.0.0.1:9000", "BIOPILOT_S3_ALLOW_HTTP": "true",
           "AWS_ACCESS_KEY_ID": "from-aws", "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_DEFAULT_REGION": "eu-west-1"}
    options = s3_storage_options(load_settings(Path("missing.toml"), env), env)
    assert options == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "from-aws",
                       "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true",
                       "AWS_CONDITIONAL_PUT": "etag", "AWS_S3_ALLOW_UNSAFE_RENAME": "false"}
    own = Settings(s3_access_key="mine", s3_region="us-west-2")
    assert s3_storage_options(own, env)["AWS_ACCESS_KEY_ID"] == "mine"
    assert s3_storage_options(own, env)["AWS_REGION"] == "us-west-2"
    with pytest.raises(SettingsError, match="s3_allow_http"):
        load_settings(Path("missing.toml"), {"BIOPILOT_S3_ENDPOINT": "http://10.0.0.5:9000"})


def test_tables_on_the_store_append_read_delete_and_compact(store: ObjectStore) -> None:
    lake = store.lake("round-trip")
    appender = delta.Appender(lake, compact_every=3)
    for seq in range(7):
        appender.append("ticks", pa.table({"run_id": ["a" if seq % 2 else "b"], "seq": [seq]}), SCHEMA)
    assert sorted(delta.read(lake, "ticks")["seq"].to_pylist()) == list(range(7))
    assert sorted(delta.read(lake, "ticks", run_ids=["a"], where=pc.field("seq") > 1)["seq"].to_pylist()) == [3, 5]
    delta.delete_runs(lake, ["ticks"], ["a"])
    assert delta.run_ids(lake, "ticks") == {"b"}
    assert delta.optimize(lake, ["ticks"])["ticks"]["numFilesAdded"] == 1
    assert sorted(delta.read(lake, "ticks")["seq"].to_pylist()) == [0, 2, 4, 6]
    assert delta.read(lake, "missing") is None


_WRITER = """
import sys
import pyarrow as pa
from sinks import delta
lake, writer, commits = sys.argv[1], sys.argv[2], int(sys.argv[3])
appender = delta.Appender(lake, compact_every=None)
schema = pa.schema([("run_id", pa.string()), ("seq", pa.int64())])
for seq in range(commits):
    appender.append("shared", pa.table({"run_id": [writer], "seq": [seq]}), schema)
"""


def _two_processes(script: str, lake: str, names: tuple[str, str], count: int) -> tuple[list[int], list[str]]:
    """`script` run by two processes at once (argv: lake, name, count); their exit codes and stderr."""
    writers = [subprocess.Popen([sys.executable, "-c", script, lake, name, str(count)], stderr=subprocess.PIPE,
                                text=True) for name in names]
    try:
        errors = [writer.communicate(timeout=120)[1] for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
    return [writer.returncode for writer in writers], errors


def test_two_processes_appending_to_one_table_lose_nothing(store: ObjectStore) -> None:
    lake, commits = store.lake("concurrent"), 15
    codes, errors = _two_processes(_WRITER, lake, ("w1", "w2"), commits)
    assert codes == [0, 0], errors
    rows = delta.read(lake, "shared")
    keys = sorted(zip(rows["run_id"].to_pylist(), rows["seq"].to_pylist(), strict=True))
    assert keys == sorted((name, seq) for name in ("w1", "w2") for seq in range(commits))
    assert delta.open_table(lake, "shared").version() == 2 * commits - 1  # one version per commit, none lost


def test_the_flow_writes_to_the_store_and_loses_nothing_when_it_restarts(store: ObjectStore, nats_server,
                                                                           tmp_path: Path) -> None:
    lake = store.lake("flow")
    ticks = make_ticks(reactors=2, ticks=400)
    first, second = ticks.filter(pc.field("seq") < 200), ticks.filter(pc.field("seq") >= 200)
    log = tmp_path / "flow.log"
    flows = [Flow(start_flow(nats_server.url, lake, tmp_path / "recovery", log_path=log, snapshot_s=1.0), log)]
    try:
        publish(nats_server.url, first)
        wait_rows(lake, "ticks", first.num_rows, flows[-1], timeout_s=90)
        store.stop()
        publish(nats_server.url, second)
        assert restart(store) is store and store.request("HEAD").status_code == 200  # in place: same port, keys
        # the bucket answered before the volume server was back, and reads of the table's objects were 500s for
        # seconds: the restart returns only once an object is written and read back
        assert store.request("GET", "flow/ticks/_delta_log/00000000000000000000.json").status_code == 200
        if not flows[-1].alive():  # a commit failed while the store was down: restarted, as `up` does
            flows.append(Flow(start_flow(nats_server.url, lake, tmp_path / "recovery", log_path=log,
                                         snapshot_s=1.0), log))
        wait_rows(lake, "ticks", ticks.num_rows, flows[-1], timeout_s=90)
        wait_rows(lake, "scores", ticks.num_rows, flows[-1], timeout_s=30)
    finally:
        stop_process_groups([flow.proc for flow in flows])
    stored = delta.read(lake, "ticks", columns=["run_id", "seq"])
    assert stored.num_rows == ticks.num_rows
    assert stored.group_by(["run_id", "seq"]).aggregate([]).num_rows == ticks.num_rows  # no duplicate


_AUDITOR = """
import sys
from datetime import UTC, datetime
from sinks.audit import AuditLog
lake, writer, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(lake)
for n in range(rows):
    log.append({"ts": datetime.now(UTC), "actor": writer, "role": "admin", "token_id": None, "action": "test",
                "target": str(n), "payload_json": "{}", "request_id": None, "client": None, "result": "ok"})
"""


def test_two_processes_chaining_audit_rows_keep_one_intact_chain(store: ObjectStore,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """No file lock on the store: the chain's commits conflict instead, and the loser chains again after."""
    from biopilot.cli import main

    lake, rows = store.lake("audit"), 8
    codes, errors = _two_processes(_AUDITOR, lake, ("a1", "a2"), rows)
    assert codes == [0, 0], errors
    assert main(["audit", "verify", "--lake", lake]) == 0
    assert f"audit chain intact: {2 * rows} row(s)" in capsys.readouterr().out


class _Artefact:  # what the registry asks of a model: a version, and save(directory) -> the file written
    version = "m-s3"

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "m-s3.pt").write_bytes(b"weights")
        return directory / "m-s3.pt"


@dataclass(frozen=True)
class Stored:
    lake: str
    run: str  # a bioreactor run with an overfeed
    patient_run: str


@pytest.fixture(scope="module")
def stored(store: ObjectStore) -> Stored:
    """A lake on the store with one bioreactor run and one patient's run, simulated once for the readers."""
    lake = store.lake("readers")
    run_id = simulate_to_lake(load_scenario("overfeed"), 1, 7, lake).written[0]
    patient_run = simulate_to_lake(load_patient_scenario("warfarin_fixed_5mg").with_overrides(days=20), 1, 0, lake,
                                   kind=PATIENT).written[0]
    return Stored(lake, run_id, patient_run)


def test_the_readers_work_on_the_store(store: ObjectStore, stored: Stored, start_dashboard, tmp_path: Path) -> None:
    lake, run_id = stored.lake, stored.run
    # the agents' and `biopilot report`'s reads: the run's summary, the report from its ticks and findings
    assert run_id in [s.run_id for s in summarize(lake)]
    assert report.write(lake, run_id, "md", tmp_path / "reports").read_text().startswith("#")
    with start_dashboard(lake=lake) as dash, dash.client("viewer") as client:
        assert {r["run_id"] for r in client.get("/api/runs").json()} == {run_id, stored.patient_run}
        assert len(client.get(f"/api/runs/{run_id}/ticks", params={"max_points": 50}).json()["t"]) == 50
        assert client.get(f"/api/reports/{run_id}", params={"format": "md"}).status_code == 200
        live = redis.Redis.from_url(dash.redis_url)
        live.hset(REACTORS_KEY, "r1", json.dumps({"run_id": run_id, "t": 0.0}))  # as the relay records it
        live.close()
        [row] = client.get("/api/fleet").json()
        assert row["run_id"] == run_id and row["run_start_t"] is not None  # the run's start: from the lake
        assert stored.patient_run in {row["run_id"] for row in client.get("/api/patients").json()}
        assert len(client.get(f"/api/patients/{stored.patient_run}/vitals", params={"max_points": 20}
                              ).json()["t"]) == 20
        assert client.get(f"/api/patients/{stored.patient_run}/labs").json()["labs"]


def test_the_registry_keeps_a_versions_artefact_in_the_store_and_reads_it_back(
        store: ObjectStore, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from biopilot.cli import main

    lake = store.lake("registry")
    entry = registry.register(lake, _Artefact(), data_snapshot="test", metrics={}, actor="test")
    assert entry.artefact_uri == f"{lake}/model_artefacts/m-s3/m-s3.pt"
    assert store.request("GET", "registry/model_artefacts/m-s3/m-s3.pt").content == b"weights"
    assert fetch_file(entry.artefact_uri, tmp_path / "cache").read_bytes() == b"weights"
    assert main(["models", "list", "--lake", lake]) == 0
    assert "m-s3" in capsys.readouterr().out


# Every command that reads the lake, on the store: (argv, a line its output must hold); {run}, {patient_run},
# {out} are filled in. `trial run` writes a trial's tables, which `report` then reads.
COMMANDS = [
    (["overview"], "overfeed"),
    (["diagnose", "--run", "{run}"], "overfeed"),
    (["chat", "--run", "{run}", "what went wrong?"], "feed pump"),
    (["report", "{run}", "--format", "md", "--out", "{out}"], ".md"),
    (["report", "{patient_run}", "--format", "md", "--out", "{out}"], ".md"),
    (["whatif", "--run", "{run}", "--without-fault", "overfeed"], "re-simulated run matches its stored assays: True"),
    (["twin", "fit", "--patient", "p000000", "--run", "{patient_run}"], "advice:"),
    (["reference", "build", "--runs", "{run}", "--include-faulted"], "learned from 1 normal batch"),
    (["graph", "build"], "stored in {lake}"),
    (["token", "create", "--role", "viewer"], "viewer token"),  # its audit row: `audit verify` below
    (["lake", "optimize"], "ticks"),
]


@pytest.mark.parametrize(("argv", "expected"), COMMANDS, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else "")
def test_the_commands_that_read_the_lake_work_on_the_store(argv: list[str], expected: str, stored: Stored,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from biopilot.cli import main

    fill = {"run": stored.run, "patient_run": stored.patient_run, "out": str(tmp_path), "lake": stored.lake}
    args = [arg.format(**fill) for arg in argv]
    at = 2 if args[0] in ("graph", "token", "audit", "models", "lake", "reference", "twin") else 1
    assert main([*args[:at], "--lake", stored.lake, *args[at:]]) == 0
    printed = capsys.readouterr()
    assert expected.format(**fill) in printed.out + printed.err


def test_a_trials_tables_written_to_the_store_are_read_back_by_report(stored: Stored, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from biopilot.cli import main

    lake = stored.lake.replace("readers", "trial")
    assert main(["trial", "run", "--design", "null_standard", "--patients-per-arm", "4", "--lake", lake]) == 0
    trial_run = sorted(delta.run_ids(lake))[0]
    assert main(["report", trial_run, "--lake", lake, "--format", "md", "--out", str(tmp_path)]) == 0
    assert "trial" in Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text().lower()


# the fault a day in: the ticks before it are in the lake when the agents diagnose its incident
_SCENARIO = """description = "two days with a jacket failure"
days = 2.0

[[faults]]
fault = "temperature_spike"
start_day = 1.0
duration_h = 4.0
magnitude = 3.0
"""


def test_up_s3_streams_into_its_store_and_the_dashboard_and_agents_read_from_it(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (tmp_path / "short.toml").write_text(_SCENARIO)
    port = free_port()
    up = Up(["--s3", "--reactors", "1", "--speed", "4000", "--batches", "1", "--scenario", str(tmp_path / "short.toml"),
             "--lake", str(lake), "--port", str(port)])
    try:
        login = up.line(r"dashboard  (http://\S+/login\?code=\S+)")
        assert login and up.line(r"lake       s3://biopilot/lake \(embedded object store http://127"), "".join(up.lines)
        wait_port(port, timeout_s=30, proc=up.proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get(login.group(1)).status_code in (200, 303)
            fleet = wait_for(lambda: client.get("/api/fleet").json(), 90)
            assert fleet, "".join(up.lines)
            run_id = fleet[0]["run_id"]  # live from the relay; the ticks below are the flow's, read from the store
            assert wait_for(lambda: client.get(f"/api/runs/{run_id}/ticks").json().get("t"), 90)  # 404 before
        assert up.line(r"flow drained", timeout_s=240), "".join(up.lines)
        up.proc.wait(60)
        assert up.proc.returncode == 0, "".join(up.lines)
    finally:
        up.stop()
    again = start_object_store(lake / ".services" / "s3")  # the store on the data `up` left (new keys)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in again.settings_env().items():
                mp.setenv(name, value)
            ticks = delta.read(again.lake("lake"), "ticks", columns=["run_id", "seq"])
            assert ticks.num_rows == 2880 and len(set(ticks["seq"].to_pylist())) == 2880  # two days' minutes, once
            messages = delta.read(again.lake("lake"), "agent_messages")  # the agents' diagnosis, from the ticks
            assert messages is not None and any(messages["findings_json"].to_pylist()), messages["text"].to_pylist()
    finally:
        again.stop()
