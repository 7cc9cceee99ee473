"""Bad options of `biopilot bench ...`: one line, exit 2, refused before any work (in-process, each in well under a
second: the refusal comes before the bench's imports and runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from biopilot.cli import main


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `biopilot bench ...argv` answers with, having exited with 2."""
    try:
        code = main(["bench", *argv])
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [
    ["simulate", "--seed", "-1"],
    ["simulate", "--seed", str(2**64)],
    ["simulate", "--plant", "patient", "--seed", "-3"],
    ["twin", "--seed", "-1"],
    ["trial", "--seed", "-1"],
    ["cohort", "--seed", "-1"],
    ["drift", "--seed", "-1"],
    ["design", "--seed", "-1"],
    ["predict", "--seed", "-1"],
    ["detectors", "--sweep", "1", "--sweep-seed", "-1"],
    ["agents", "--sweep", "1", "--sweep-seed", "-1"],
    ["detect", "--make-plant", "x", "--plant-seed", "-1"],
])
def test_a_negative_or_huge_seed_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "seed must be" in refused(argv, capsys)


@pytest.mark.parametrize("argv", [
    ["simulate", "--days", "inf"],
    ["detectors", "--plant", "patient", "--normal-days", "inf"],
    ["sse", "--duration-s", "inf"],
    ["pipeline", "--live-rate", "inf"],
    ["drift", "--admissions-per-h", "inf"],
])
def test_an_infinite_amount_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "must be > 0 and finite, got inf" in refused(argv, capsys)


@pytest.mark.parametrize("argv", [
    ["detectors", "--grace-h", "nan"],
    ["detectors", "--grace-h", "-5"],
    ["agents", "--latency-alerts", "-5"],
    ["sse", "--slow", "-1"],
    ["predict", "--lake-misses", "-3"],
    ["drift", "--margin", "nan"],
    ["scale", "--live-s", "nan"],
    ["scale", "--live-s", "-1"],
    ["skab", "--min-roughness", "nan"],
    ["detect", "--data", "x", "--min-roughness", "-1"],
])
def test_a_negative_or_nan_amount_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "must be from" in refused(argv, capsys)


@pytest.mark.parametrize(("argv", "option"), [
    (["detectors", "--out", "{file}"], "--out"),
    (["agents", "--out", "{file}"], "--out"),
    (["trial", "--out", "{file}"], "--out"),
    (["cohort", "--out", "{file}"], "--out"),
    (["drift", "--out", "{file}"], "--out"),
    (["drift", "--lake", "{file}"], "--lake"),
    (["design", "--out", "{file}"], "--out"),
    (["scale", "--out", "{file}"], "--out"),
    (["scale", "--keep", "{file}"], "--keep"),
    (["pipeline", "--keep", "{file}"], "--keep"),
    (["simulate", "--lake", "{file}"], "--lake"),
    (["detect", "--make-suite", "{file}"], "--make-suite"),
])
def test_an_output_folder_that_is_a_file_is_refused_before_the_run(argv: list[str], option: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    err = refused([a.format(file=file) for a in argv], capsys)
    assert f"{option} {file} is a file" in err


@pytest.mark.parametrize("argv", [
    ["detectors", "--only", "nosuch"],
    ["skab", "--detectors", "pca", "nosuch"],
    ["skab", "--detectors", "pca,"],
    ["detect", "--make-suite", "{dir}/suite", "--detectors", "pca,nosuch"],
])
def test_an_unknown_detector_is_refused_before_the_run(argv: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown detector" in refused([a.format(dir=tmp_path) for a in argv], capsys)
    assert not (tmp_path / "suite").exists()  # nothing written


def test_two_suites_to_bench_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["detect", "--make-suite", str(tmp_path / "a"), "--make-plant", str(tmp_path / "b")], capsys)
    assert "not --make-suite and --make-plant" in err
    assert not list(tmp_path.iterdir())
    err = refused(["detect", "--make-te", str(tmp_path / "a"), "--data", str(tmp_path)], capsys)
    assert "not --data and --make-te" in err
    assert not list(tmp_path.iterdir())


def test_more_slow_clients_than_clients_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--slow 5 is more than --clients 1" in refused(["sse", "--clients", "1", "--slow", "5"], capsys)


@pytest.mark.parametrize("option", ["--processes", "--live-processes"])
def test_a_thousand_flow_processes_are_refused(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"{option}: each at most 64" in refused(["scale", option, "1,1000"], capsys)


@pytest.mark.parametrize(("argv", "says"), [
    (["trial", "--pool", "4"], "--pool 4 is too small"),
    (["cohort", "--patients", "1"], "at least 20"),
    (["drift", "--days", "1"], "--days 1 must be >= 9"),
    (["predict", "--model", "/nonexistent/model.pt"], "no such checkpoint"),
    (["design", "--budget-share", "5"], "--budget-share must be at most 1"),
    # 5 % of 11**3 is 66 runs; 0.5 % is 6, short of the 12-run space-filling start (before: after the grid, ~7 s)
    (["design", "--budget-share", "0.005"], "the run budget (6) must cover the space-filling start (12 runs)"),
])
def test_a_size_the_bench_cannot_use_is_refused_before_the_run(argv: list[str], says: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert says in refused(argv, capsys)


def test_a_grid_too_large_to_hold_is_refused_before_it_is_built(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--levels 100000 makes a grid of" in refused(["design", "--levels", "100000"], capsys)


def test_a_twin_suite_too_short_for_its_faults_is_refused_before_it_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    suite = tmp_path / "suite"
    for days in ("0.2", "0.5", "1.2"):  # shorter than the 12 h left out; onsets (40-60 % in) inside those 12 h
        err = refused(["detect", "--make-suite", str(suite), "--days", days], capsys)
        assert f"--days {days} is too short for the suite" in err and "give at least 1.25" in err
    err = refused(["detect", "--make-suite", str(suite), "--days", "1.25", "--tick-s", "7200"], capsys)
    assert "--tick-s 7200 leaves 9 readings a run" in err  # (30 h - 12 h) / 2 h
    assert not suite.exists()
    from biopilot.bench import detect

    made: list[tuple] = []
    monkeypatch.setattr(detect, "make_suite", lambda *args, **_: made.append(args))  # writes nothing
    refused(["detect", "--make-suite", str(suite), "--days", "1.25"], capsys)  # then finds no files to bench
    assert len(made) == 1 and 1.25 in made[0]


def test_a_detector_both_under_the_budget_and_beyond_the_margin_is_refused(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["detect", "--make-plant", str(tmp_path / "suite"), "--detectors", "pca:raw,cva",
                   "--margin-detectors", "cva"], capsys)
    assert "cva both under the budget and beyond the margin" in err
    assert not (tmp_path / "suite").exists()


def test_a_te_suite_seed_whose_runs_would_share_their_noise_is_refused(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["detect", "--make-te", str(tmp_path / "te"), "--plant-seed", "2147483"], capsys)
    assert "--plant-seed must be at most 2147482 with --make-te" in err
    assert not (tmp_path / "te").exists()
