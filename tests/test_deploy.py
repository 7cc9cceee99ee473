"""deploy/ (issue 27 §4): the Kubernetes manifests are valid against the Kubernetes schema (offline,
kubernetes-validate), the flow's StatefulSet is wired for a Bytewax cluster, the NATS chart's users have the
permissions `biopilot up` gives its own broker, and the compose file runs real commands: parsed by `biopilot`'s
own parser or Bytewax's dataflow importer, and the quick ones run here without Docker."""

from __future__ import annotations

import asyncio
import copy
import importlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from biopilot.cli import build_parser, main
from core.nats_cluster import start_nats_cluster
from core.processes import spawn, stop_process_groups
from core.services import (
    NATS_PERMISSIONS,
    _nats_user,
    connect_nats,
    ensure_streams,
    free_port,
    start_redis,
    wait_port,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.35.0"  # a recent release the offline schemas cover
MANIFESTS = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")
NOT_KUSTOMIZED = {"secret.example.yaml"}  # copied and filled in by hand: never applied empty


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _resources() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in _docs(path)}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelled_field() -> None:
    flow = copy.deepcopy(_resources()["StatefulSet", "biopilot-flow"])
    flow["spec"]["podManagmentPolicy"] = flow["spec"].pop("podManagementPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(flow, K8S_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS} - NOT_KUSTOMIZED


def test_the_flow_statefulset_is_one_bytewax_cluster_with_a_volume_per_pod() -> None:
    resources = _resources()
    flow = resources["StatefulSet", "biopilot-flow"]
    service = resources["Service", flow["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None" and flow["spec"]["podManagementPolicy"] == "Parallel"
    pod = flow["spec"]["template"]["spec"]
    [prepare], [container] = pod["initContainers"], pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["BYTEWAX_STATEFULSET_NAME"]["value"] == flow["metadata"]["name"]
    assert env["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    processes = {e["name"]: e for e in prepare["env"]}["FLOW_PROCESSES"]["value"]
    assert int(processes) == flow["spec"]["replicas"]  # the hostfile lists every pod, no more
    hostfile_port = service["spec"]["ports"][0]["port"]
    assert f"{flow['metadata']['name']}-$n.{service['metadata']['name']}." in prepare["args"][0]
    assert f":{hostfile_port}" in prepare["args"][0]
    recovery = container["command"][container["command"].index("-r") + 1]
    [claim] = flow["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == recovery
    assert env["BIOPILOT_FLOW_WAL"]["value"].startswith(recovery + "/")  # the sink's logs on the pod's volume
    last_line = prepare["args"][0].strip().splitlines()[-1]  # the shell's variables as pod 0 has them
    shell_vars = {"i": "0", "FLOW_PROCESSES": processes}
    _assert_a_biopilot_command(shlex.split(re.sub(r"\$(\w+)", lambda m: shell_vars[m.group(1)], last_line)))
    _assert_a_bytewax_command(container["command"])


def test_every_component_gets_its_own_broker_user_and_the_object_store_settings() -> None:
    resources = _resources()
    secret_keys = {k for (kind, _), doc in resources.items() if kind == "Secret" for k in doc["stringData"]}
    settings = resources["ConfigMap", "biopilot-settings"]["data"]
    assert settings["BIOPILOT_LAKE"].startswith("s3://")
    assert {"BIOPILOT_S3_ENDPOINT", "BIOPILOT_S3_REGION"} <= set(settings)
    assert {"BIOPILOT_S3_ACCESS_KEY", "BIOPILOT_S3_SECRET_KEY"} <= secret_keys
    users = {("StatefulSet", "biopilot-flow"): "NATS_URL_FLOW", ("Deployment", "biopilot-agents"): "NATS_URL_AGENTS",
             ("Deployment", "biopilot-dashboard"): "NATS_URL_DASHBOARD", ("Job", "biopilot-streams"): "NATS_URL_ADMIN"}
    for key, secret_key in users.items():
        [container] = resources[key]["spec"]["template"]["spec"]["containers"]
        url = {e["name"]: e for e in container["env"]}["BIOPILOT_NATS_URL"]["valueFrom"]["secretKeyRef"]["key"]
        assert url == secret_key and url in secret_keys


def test_the_nats_chart_values_are_a_cluster_of_three_with_the_stacks_users_and_permissions() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "nats-values.yaml").read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] and config["jetstream"]["fileStore"]["enabled"]
    users = {u["user"]: u for u in config["merge"]["authorization"]["users"]}
    assert set(users) == set(NATS_PERMISSIONS)
    for name, user in users.items():
        wanted = _nats_user(name, "")["permissions"]
        got = user["permissions"]
        assert got["publish"]["allow"] == wanted["publish"]["allow"], name
        assert got["publish"].get("deny", []) == wanted["publish"]["deny"], name
        assert got["subscribe"]["allow"] == wanted["subscribe"]["allow"], name
        variable = re.fullmatch(r"<< \$(\w+) >>", user["password"]).group(1)
        assert values["container"]["env"][variable]["valueFrom"]["secretKeyRef"]["key"] == name


def _assert_a_biopilot_command(command: list[str]) -> None:
    assert command[0] == "biopilot", command
    args = build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or option
    assert callable(args.func)


def _assert_a_bytewax_command(command: list[str]) -> None:
    assert command[:3] == ["python", "-m", "bytewax.run"], command
    module, _, factory = command[3].partition(":")
    assert callable(getattr(importlib.import_module(module), factory.removesuffix("()")))


def test_the_compose_file_runs_real_commands_and_one_bytewax_cluster() -> None:
    services = _compose()["services"]
    flows = {name: s["command"] for name, s in services.items() if s["command"][:3] == ["python", "-m", "bytewax.run"]}
    for service in services.values():
        if service.get("image", "").startswith("biopilot"):
            command = service["command"]
            (_assert_a_bytewax_command if command[0] == "python" else _assert_a_biopilot_command)(command)
    addresses = {command[command.index("-a") + 1] for command in flows.values()}
    [hosts] = addresses  # every process names the same cluster
    assert sorted(h.split(":")[0] for h in hosts.split(";")) == sorted(flows)
    assert sorted(int(c[c.index("-i") + 1]) for c in flows.values()) == list(range(len(flows)))
    prepares = [s["command"] for s in services.values() if s["command"][:2] == ["biopilot", "flow-prepare"]]
    assert {c[c.index("--processes") + 1] for c in prepares} == {str(len(flows))}
    nats_nodes = [name for name, s in services.items() if s.get("image", "").startswith("nats:")]
    assert len(nats_nodes) == 3
    url = services["agents"]["environment"]["BIOPILOT_NATS_URL"]
    assert sorted(u.removeprefix("nats://").split(":")[0] for u in url.split(",")) == sorted(nats_nodes)


@pytest.mark.integration
def test_the_compose_files_streams_prepare_agents_and_dashboard_commands_run_here(tmp_path: Path) -> None:
    """Their commands as the compose file has them, against a local 3-node broker and a cache instead of its
    services (the components given the nodes as a URL list)."""
    services = _compose()["services"]
    nats_cluster, redis_server = start_nats_cluster(tmp_path / "nats", 3), start_redis(tmp_path / "redis")
    port = free_port()
    env = {**os.environ, "BIOPILOT_NATS_URL": nats_cluster.url, "BIOPILOT_REDIS_URL": redis_server.url,
           "BIOPILOT_LAKE": str(tmp_path / "lake"), "BIOPILOT_PORT": str(port), "BIOPILOT_HOST": "127.0.0.1",
           "BIOPILOT_SECRET": "a-compose-test-secret-0123456789abcdef"}
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    try:
        for name in ("streams", "flow-prepare-0"):
            command = [str(bin_dir / "biopilot"), *services[name]["command"][1:]]
            command = [str(tmp_path / a.lstrip("/")) if a.startswith("/recovery") else a for a in command]
            subprocess.run(command, env=env, check=True, timeout=120, capture_output=True)
        assert sorted(p.name for p in (tmp_path / "recovery" / "0").glob("part-*.sqlite3"))[:2] == [
            "part-0.sqlite3", "part-10.sqlite3"]
        for name in ("agents", "dashboard"):
            command = [str(bin_dir / "biopilot"), *services[name]["command"][1:]]
            procs.append(spawn(command, tmp_path / f"{name}.log", env))
        wait_port(port, timeout_s=90, proc=procs[1])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200

        async def agents_consumers() -> set[str]:
            nc = await connect_nats(nats_cluster.url)
            try:
                return {c.name for c in await nc.jetstream().consumers_info("ALERTS")}
            finally:
                await nc.close()

        deadline = time.monotonic() + 90
        while not {"biopilot-monitoring", "biopilot-troubleshooting"} <= asyncio.run(agents_consumers()):
            assert procs[0].poll() is None, (tmp_path / "agents.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the agents made no consumers"
            time.sleep(0.2)
        assert asyncio.run(ensure_streams(nats_cluster.url)) == 3  # made by `streams`, replicated
    finally:
        stop_process_groups(procs)
        nats_cluster.stop()
        redis_server.stop()


@pytest.mark.parametrize("args, message", [
    (["flow-prepare", "--recovery", "a-file"], "is a file; give a directory"),
    (["flow-prepare", "--recovery", ""], "give the process's recovery directory"),
    (["flow-prepare", "--recovery", "rec", "--lake", "a-file"], "the lake a-file is a file"),
])
def test_flow_prepare_refuses_a_file_or_empty_recovery_and_a_file_lake_writing_nothing(
        args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a FileExistsError traceback; "" filled the working directory with 16 partitions; a lake that is a
    file passed ("recovery partitions [...]", exit 0)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]



def test_streams_with_no_broker_listening_is_one_line_after_its_wait_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the client retried for about two minutes, then a ConnectionRefusedError traceback."""
    monkeypatch.setenv("BIOPILOT_NATS_URL", f"nats://admin:secret@127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert main(["streams", "--wait-s", "0.5"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - started < 10 and len(err.strip().splitlines()) == 1, err
    assert "no NATS node of nats://127.0.0.1:" in err and "secret" not in err and "Traceback" not in err
