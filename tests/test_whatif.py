"""`biopilot whatif`: a stored run re-simulated with a change, against the runs it should equal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from agents import chat, phrasing, report
from agents.counterfactual import counterfactuals
from biopilot.cli import main
from biopilot.simulate import simulate_to_lake
from core.events import ASSAYS, LABELS, RUNS
from design.whatif import Change, load_run, what_if
from sinks import delta
from sources.fleet import Fleet
from sources.scenarios import load_scenario

SEED = 11
DAYS = 9.0  # the overfeed's onset is drawn in days 5-8: a shorter run keeps the test quick


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("whatif") / "lake"
    simulate_to_lake(load_scenario("overfeed").with_overrides(days=DAYS), 2, SEED, path)
    return str(path)


def _run_id(lake: str, reactor: str = "r2") -> str:
    runs = delta.read(lake, "runs", columns=["run_id", "reactor_id"]).to_pylist()
    return next(r["run_id"] for r in runs if r["reactor_id"] == reactor)


def _normal_run(index: int) -> tuple[pa.Table, pa.Table]:
    """The normal scenario, same seed and reactor, stepped in the batch writer's daily chunks."""
    fleet = Fleet(load_scenario("normal").with_overrides(days=DAYS), 1, seed=SEED, first_index=index)
    ticks, assays = [], []
    while not fleet.done:
        chunk = fleet.step(1440)
        ticks.append(chunk.ticks)
        assays.append(chunk.assays)
    return pa.Table.from_batches(ticks), pa.concat_tables(assays)


def test_overfeed_removed_is_the_normal_run_with_the_same_seed(lake: str) -> None:
    run = load_run(lake, _run_id(lake))
    res = what_if(run, Change(without_fault="overfeed"))
    onset_h = next(f["start_h"] for f in run.faults if f["fault"] == "overfeed")
    assert res.from_h == pytest.approx(onset_h)
    assert res.reproduced["match"]  # the actual run rebuilt from the lake is the stored one
    ticks, assays = _normal_run(index=1)
    signals = [c for c in ticks.column_names if c not in ("run_id", "reactor_id", "seq", "ts")]
    for name in signals:  # the same trajectory, to the last bit: the twin is deterministic
        assert np.array_equal(res.counterfactual_ticks[name].to_numpy(zero_copy_only=False),
                              ticks[name].to_numpy(zero_copy_only=False), equal_nan=True), name
    normal_titer = assays["titer_g_l"].to_numpy()
    assert np.array_equal(res.counterfactual["titer_g_l"], normal_titer)
    assert res.final("counterfactual", "titer_g_l") == pytest.approx(normal_titer[-1], rel=0.01)
    # and the overfeed did change the actual run: more osmolality after its onset
    assert res.actual["osmolality_mosm_kg"].max() > res.counterfactual["osmolality_mosm_kg"].max() + 20


def test_a_setpoint_changed_mid_run_leaves_the_run_before_it_alone(lake: str) -> None:
    run = load_run(lake, _run_id(lake, "r1"))
    from_ts = run.started + np.timedelta64(3, "D").item()
    res = what_if(run, Change(settings={"do_setpoint_pct": 20.0, "temp_shift_day": 4.0}), from_ts)
    before = res.days["actual"] < 3.0
    after = res.days["actual"] > 5.0
    assert np.array_equal(res.actual["vcd_e6_per_ml"][before], res.counterfactual["vcd_e6_per_ml"][before])
    assert not np.allclose(res.actual["vcd_e6_per_ml"][after], res.counterfactual["vcd_e6_per_ml"][after])
    do_cf = res.counterfactual_ticks.filter(pa.compute.greater(res.counterfactual_ticks["seq"], 5 * 1440))["do_pct"]
    assert abs(np.nanmedian(do_cf.to_numpy(zero_copy_only=False)) - 20.0) < 2.0


def test_whatif_cli_json_and_plot(lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "whatif.png"
    assert main(["whatif", "--run", _run_id(lake), "--without-fault", "overfeed", "--lake", lake, "--json",
                 "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final_titer_g_l_counterfactual"] != out["final_titer_g_l_actual"]
    assert "without the overfeed, final titer would have been" in out["sentence"]
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--run", "nope", "--without-fault", "overfeed"], "no run 'nope'"),
    (["--without-fault", "do_limitation"], "has no do_limitation fault; its faults: overfeed"),
    (["--without-fault", "gremlins"], "unknown fault"),
    (["--set", "do_setpoint_pct"], "KEY=VALUE"),
    (["--set", "process.working_volume_l=3", "--from", "2026-01-07T00:00Z"], "cannot change mid-run"),
    (["--set", "do_setpoint_pct=30", "--from", "2027-01-01T00:00Z"], "outside run"),
    (["--set", "process.ph_setpoint=9"], "ph_setpoint"),
])
def test_whatif_cli_bad_input_is_one_line_and_exit_2(lake: str, args: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    if "--run" not in args:
        args = ["--run", _run_id(lake), *args]
    try:
        code = main(["whatif", *args, "--lake", lake])
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_help_points_only_to_commands_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["whatif", "--help"])
    pointed = re.findall(r"`biopilot ([a-z -]+)`", " ".join(capsys.readouterr().out.split()))
    assert pointed  # the run id's help says where run ids are listed
    for command in pointed:  # each answers its own --help (exit 0), not "invalid choice" (exit 2)
        with pytest.raises(SystemExit) as exit_:
            main([*command.split(), "--help"])
        assert exit_.value.code == 0, command



def test_troubleshooting_quotes_the_whatif_of_the_fault_it_names(lake: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _run_id(lake)
    rep = report.build(lake, run_id, tmp_path)
    assert [f.diagnosis.top.fault for f in rep.findings if f.diagnosis.top][:1] == ["overfeed"]
    lines = [line for line in report.markdown(rep, "plot.png").splitlines() if line.startswith("What-if:")]
    assert len(lines) == 1
    said = re.search(r"without the overfeed, final titer would have been ([0-9.]+) g/L instead of ([0-9.]+) g/L",
                     lines[0])
    assert said, lines[0]
    assert main(["whatif", "--run", run_id, "--without-fault", "overfeed", "--lake", lake, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert float(said[1]) == round(out["final_titer_g_l_counterfactual"], 2)
    assert float(said[2]) == round(out["final_titer_g_l_actual"], 2)
    assert float(said[1]) > float(said[2])  # the overfeed cost titer
    answer = " ".join(phrasing.answer("what happened to the feed?", list(chat.run_findings(lake, run_id))))
    assert said[0] in answer  # the chat's offline answer about the run
    # a cause the run carries no label for has no window to cut: no sentence
    assert counterfactuals(lake, run_id, ["do_limitation"]) == {}


def test_no_sentence_for_a_run_still_going(lake: str, tmp_path: Path) -> None:
    """A run whose assays stop half-way (still running): its final titer is not known, so nothing is quoted."""
    run_id, partial = _run_id(lake), str(tmp_path / "partial")
    for table, schema in (("runs", RUNS), ("labels", LABELS)):
        delta.append(partial, table, delta.read(lake, table, run_ids=[run_id]), schema)
    assays = delta.read(lake, "assays", run_ids=[run_id]).sort_by("sample_ts")
    delta.append(partial, "assays", assays.slice(0, assays.num_rows // 2), ASSAYS)
    assert counterfactuals(partial, run_id, ["overfeed"]) == {}
    assert set(counterfactuals(lake, run_id, ["overfeed"])) == {"overfeed"}


@pytest.mark.parametrize("args, message", [
    (["--without-fault", ""], "nothing to change"),
    (["--set", "do_setpoint_pct=-5", "--from", "2026-01-07T00:00Z"], "do_setpoint_pct"),
    (["--set", "do_setpoint_pct=nan", "--from", "2026-01-07T00:00Z"], "finite number"),
    (["--set", "do_setpoint_pct=1e400", "--from", "2026-01-07T00:00Z"], "finite number"),
    (["--set", "do_setpoint_pct=40", "--png", "plot.txt"], "--png plot.txt: must end in"),
    (["--set", "do_setpoint_pct=40", "--set", "do_setpoint_pct=50"], "--set do_setpoint_pct given more than once"),
])
def test_whatif_refuses_an_empty_change_an_out_of_range_mid_run_setting_and_a_bad_plot_path(
        lake: str, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Mid-run settings are held to the bounds a change at the start is (before: DO -5 % or NaN ran and printed a
    titer); an empty fault changed nothing yet printed "with , ..."; a plot path matplotlib refuses was a
    ValueError traceback after the simulation."""
    monkeypatch.chdir(tmp_path)
    assert main(["whatif", "--run", _run_id(lake), *args, "--lake", lake]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
