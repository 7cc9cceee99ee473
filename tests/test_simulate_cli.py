"""`biopilot simulate` / `scenarios` / `overview`: real Delta tables, idempotent reruns, clear errors."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from biopilot.cli import main
from core.events import SCHEMAS
from sinks import delta

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]


def _simulate(lake, *extra: str) -> list[str]:
    out = subprocess.run([*BIOPILOT, "simulate", "--lake", str(lake), "--quiet", *extra], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("lake")
    ids = _simulate(path, "--scenario", "overfeed", "--reactors", "2", "--days", "8", "--seed", "11")
    return path, ids


@pytest.mark.integration
def test_writes_the_four_tables_with_their_schemas(lake):
    path, ids = lake
    assert len(ids) == 2 and len(set(ids)) == 2
    for name in ("runs", "ticks", "assays", "labels"):
        # deltalake's own view of the table (its metadata; reading rows goes through sinks.delta.read)
        assert pa.schema(DeltaTable(str(path / name)).schema().to_arrow()).names == SCHEMAS[name].names, name
    ticks = delta.read(path, "ticks")
    assert ticks.num_rows == 2 * 8 * 1440
    labels = delta.read(path, "labels")
    assert labels.num_rows == 2 and set(labels["fault"].to_pylist()) == {"overfeed"}


@pytest.mark.integration
def test_tables_are_readable_by_polars_and_duckdb(lake):
    path, ids = lake
    frame = pl.read_delta(str(path / "ticks"))
    assert frame.height == 2 * 8 * 1440
    runs = pl.read_delta(str(path / "runs"))
    relation = runs.to_arrow()  # noqa: F841 - duckdb scans the local variable by name
    assert duckdb.sql("select count(*) from relation").fetchall()[0][0] == 2
    per_run = frame.group_by("run_id").agg(pl.col("seq").max())
    assert sorted(per_run["seq"].to_list()) == [8 * 1440 - 1] * 2


@pytest.mark.integration
def test_rerun_adds_no_duplicate_rows(lake):
    path, ids = lake
    before = delta.read(path, "ticks").num_rows
    again = _simulate(path, "--scenario", "overfeed", "--reactors", "2", "--days", "8", "--seed", "11")
    assert again == ids
    assert delta.read(path, "ticks").num_rows == before
    more = _simulate(path, "--scenario", "overfeed", "--reactors", "3", "--days", "8", "--seed", "11")
    assert more[:2] == ids
    runs = delta.read(path, "runs")
    assert sorted(runs["run_id"].to_pylist()) == sorted(more)
    assert delta.read(path, "ticks").num_rows == 3 * 8 * 1440


@pytest.mark.integration
def test_an_interrupted_write_is_cleaned_up_on_rerun(tmp_path):
    ids = _simulate(tmp_path, "--days", "1", "--seed", "4")
    delta.delete_runs(tmp_path, ["runs"], ids)  # as if the process died before the runs commit
    assert _simulate(tmp_path, "--days", "1", "--seed", "4") == ids
    ticks = delta.read(tmp_path, "ticks")
    assert ticks.num_rows == 1440


@pytest.mark.integration
def test_one_second_ticks(tmp_path):
    ids = _simulate(tmp_path, "--days", "0.05", "--tick-s", "1")
    ticks = delta.read(tmp_path, "ticks")
    assert ticks.num_rows == 4320 and len(ids) == 1
    ts = ticks.sort_by("seq")["ts"].cast("int64").to_numpy()
    assert set((ts[1:] - ts[:-1]).tolist()) == {1_000_000}


@pytest.mark.integration
@pytest.mark.parametrize(("args", "needle"), [
    (["--scenario", "meltdown"], "unknown scenario 'meltdown'"),
    (["--days", "0"], "--days must be > 0"),
    (["--days", "-3"], "--days must be > 0"),
    (["--reactors", "0"], "--reactors must be from 1 to 100000, got 0"),
    (["--reactors", str(10**12)], "--reactors must be from 1 to 100000, got 1000000000000"),
    (["--tick-s", "7200"], "tick_s"),
    (["--seed", "-1"], "--seed must be from 0 to 2**63 - 1, got -1"),
    (["--seed", str(2**64)], "--seed must be from 0 to 2**63 - 1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    out = subprocess.run([*BIOPILOT, "simulate", "--lake", str(tmp_path / "lake"), *args], capture_output=True,
                         text=True)
    assert out.returncode == 2
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lake").exists()


def test_a_scenario_file_that_is_not_text_is_one_line(tmp_path, capsys):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\x00\x01\xff\xfe")
    assert main(["simulate", "--scenario", str(bad), "--lake", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biopilot: error: binary.toml: not a text (UTF-8) file; a scenario is a TOML file") and "\n" not in err
    assert not (tmp_path / "lake").exists()


def test_bad_scenario_file_fields_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[process]\nworking_volume_l = -2\n')
    assert main(["simulate", "--scenario", str(bad), "--lake", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biopilot: error: bad.toml: process.working_volume_l")
    assert "\n" not in err
    assert not (tmp_path / "lake").exists()


def test_scenarios_lists_one_line_each(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("pump_omission") for line in lines)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


@pytest.mark.integration
def test_overview_prints_the_summary_and_draws_the_picture(lake, tmp_path, capsys):
    path, ids = lake
    png = tmp_path / "overview.png"
    assert main(["overview", "--lake", str(path), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "peak VCD" in out and "overfeed" in out
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
