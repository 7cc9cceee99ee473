"""Design of experiments: the designs' properties, the response-surface statistics against known surfaces, the
constrained optimum, the sequential mode, the twin's runs and the `biopilot design` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from biopilot.cli import main
from design.designs import coded_design, propose, read_sheet, rotatable_alpha
from design.model import fit_response, model_terms
from design.optimize import constrained_optimum
from design.sequential import run_sequential
from design.study import (
    Constraint,
    Factor,
    Study,
    StudyError,
    build_study,
    load_study,
    parse_factor,
    parse_response,
)
from design.twin import run_settings
from sources.scenarios import load_scenario

TWO = (Factor("process.a", 0.0, 1.0), Factor("process.b", 0.0, 1.0))


def _study(factors: tuple[Factor, ...] = TWO, constraints: tuple = (), goal: str = "y") -> Study:
    return Study("t", factors, (parse_response("y=titer_g_l:last"), parse_response("c=lactate_g_l:max")),
                 constraints, goal)


def _quadratic_variance(points: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Scaled prediction variance f(x)' (X'X)^-1 f(x) of the full quadratic model in two factors."""
    def f(x: np.ndarray) -> np.ndarray:
        a, b = x[:, 0], x[:, 1]
        return np.column_stack([np.ones(len(x)), a, b, a * b, a * a, b * b])
    inv = np.linalg.inv(f(design).T @ f(design))
    return np.einsum("ij,jk,ik->i", f(points), inv, f(points))


def test_two_level_factorials_are_orthogonal_and_balanced() -> None:
    full = coded_design("full", 3)
    x = np.column_stack([full, full[:, 0] * full[:, 1], full[:, 0] * full[:, 2], full[:, 1] * full[:, 2]])
    assert np.allclose(x.T @ x, len(full) * np.eye(6))  # every effect and interaction independent
    assert np.allclose(x.sum(axis=0), 0)  # balanced: each column half low, half high
    frac = coded_design("fractional", 5, resolution=4)
    assert len(frac) < 2 ** 5
    assert np.allclose(frac.T @ frac, len(frac) * np.eye(5))
    assert (frac == 1).sum(axis=0).tolist() == [len(frac) // 2] * 5


def test_box_behnken_is_balanced_on_three_levels() -> None:
    bb = coded_design("box-behnken", 3)
    assert np.allclose(bb.sum(axis=0), 0)
    assert all(sorted(set(col)) == [-1.0, 0.0, 1.0] for col in bb.T)
    assert not (np.abs(bb).sum(axis=1) == 3).any()  # no corner runs
    gram = bb.T @ bb
    assert np.allclose(gram, np.diag(np.diag(gram)))  # main effects orthogonal


def test_rotatable_ccds_have_equal_variance_on_a_circle_and_face_centred_does_not() -> None:
    angles = np.linspace(0, np.pi / 2, 7)
    circle = 0.9 * np.column_stack([np.cos(angles), np.sin(angles)])
    centre = np.zeros((5, 2))
    ccd = np.vstack([coded_design("ccd", 2), centre])
    assert np.isclose(np.abs(coded_design("ccd", 2)).max(), rotatable_alpha(2))
    v = _quadratic_variance(circle, ccd)
    assert np.ptp(v) < 1e-9 * v.mean()
    cci = np.vstack([coded_design("cci", 2), centre])
    assert np.isclose(np.abs(coded_design("cci", 2)).max(), 1.0)  # the axial points at the ranges' ends
    v_cci = _quadratic_variance(circle / rotatable_alpha(2), cci)
    assert np.ptp(v_cci) < 1e-9 * v_cci.mean()
    ccf = np.vstack([coded_design("ccf", 2), centre])
    v_ccf = _quadratic_variance(circle, ccf)
    assert np.ptp(v_ccf) > 0.05 * v_ccf.mean()


def test_latin_hypercube_fills_every_bin_once() -> None:
    lhs = coded_design("lhs", 3, runs=20, seed=4)
    bins = np.floor((lhs + 1) / 2 * 20).astype(int)
    assert all(sorted(col) == list(range(20)) for col in bins.T)


def test_run_sheet_adds_centre_points_and_replicates_in_random_order(tmp_path: Path) -> None:
    study = _study()
    sheet = propose(study, "ccf", centre_points=3, replicates=2, seed=1)
    assert len(sheet.coded) == 2 * 8 + 3  # 4 factorial + 4 axial points, twice, and the centre runs
    assert sheet.point_type.count("centre") == 3
    assert len(set(sheet.seeds.tolist())) == len(sheet.seeds)
    assert sheet.std_order.tolist() != sorted(sheet.std_order.tolist())
    path = tmp_path / "runs.csv"
    sheet.write_csv(path)
    back = read_sheet(study, path)
    assert np.allclose(back.coded, sheet.coded) and back.seeds.tolist() == sheet.seeds.tolist()
    with open(path) as f:
        values = {row["process.a"] for row in csv.DictReader(f)}
    assert values == {"0.0", "0.5", "1.0"}


def test_categorical_factor_runs_only_at_its_levels() -> None:
    scenario = load_scenario("normal")
    study = Study("t", (parse_factor("feed.mode=bolus,continuous", scenario),
                        parse_factor("process.do_setpoint_pct=30:50", scenario)),
                  (parse_response("final_titer"),), (), "final_titer", scenario=scenario)
    sheet = propose(study, "ccf", centre_points=2)
    assert set(sheet.coded[:, 0]) == {-1.0, 1.0}
    assert {s["feed.mode"] for s in sheet.settings} == {"bolus", "continuous"}
    # the types follow the numeric factor: its ends are factorial, its middle (at each level) the centre
    for row, kind in zip(sheet.coded, sheet.point_type, strict=True):
        assert kind == ("centre" if row[1] == 0 else "factorial"), (row, kind)


def test_quadratic_fit_recovers_a_known_surface() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([coded_design("ccd", 2), np.zeros((5, 2))])
    a, b = x[:, 0], x[:, 1]
    y = 3 + 1.2 * a - 0.8 * b + 0.5 * a * b - 1.5 * a * a - 0.3 * b * b + rng.normal(0, 0.05, len(x))
    m = fit_response(TWO, x, y, "y")
    assert m.order == "quadratic"
    coef = dict(zip(m.coefficients["term"], m.coefficients["coefficient"], strict=True))
    expected = {"Intercept": 3, "a": 1.2, "b": -0.8, "a:b": 0.5, "I(a ** 2)": -1.5, "I(b ** 2)": -0.3}
    for term, value in expected.items():
        assert abs(coef[term] - value) < 0.12, term
    assert m.r2 > 0.99 and m.q2 > 0.95
    assert m.lack_of_fit_p is not None and m.lack_of_fit_p > 0.01
    assert set(m.anova["source"]) >= {"model", "a", "residual", "lack of fit", "pure error"}


def test_linear_model_of_a_curved_surface_shows_lack_of_fit() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([coded_design("ccf", 2), np.zeros((4, 2))])
    y = 2 - 1.5 * x[:, 0] ** 2 + rng.normal(0, 0.05, len(x))
    m = fit_response(TWO, x, y, "y", order="linear")
    assert m.lack_of_fit_p is not None and m.lack_of_fit_p < 0.01
    assert m.q2 < m.r2


def test_a_two_level_design_supports_no_curvature() -> None:
    x = np.vstack([coded_design("full", 2)] * 2)
    m = fit_response(TWO, x, x[:, 0] + np.arange(len(x)) * 0.01, "y")
    assert m.order == "interaction"
    assert "I(a ** 2)" not in model_terms(TWO, m.order)


def test_constrained_optimum_sits_on_the_active_constraint() -> None:
    study = _study(constraints=(Constraint("c", "<=", 0.1),))
    predictors = {"y": lambda x: -((x[:, 0] - 0.3) ** 2) - (x[:, 1] + 0.2) ** 2, "c": lambda x: x[:, 0]}
    opt = constrained_optimum(study, predictors)
    assert opt.feasible
    assert np.allclose(opt.coded, [0.1, -0.2], atol=1e-3)
    free = constrained_optimum(_study(), predictors)
    assert np.allclose(free.coded, [0.3, -0.2], atol=1e-3)


def test_sequential_design_finds_a_known_optimum_within_budget() -> None:
    study = _study(constraints=(Constraint("c", "<=", 0.2),))
    noise = np.random.default_rng(3)

    def evaluate(x: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        y = 5 - 2 * (x[:, 0] - 0.5) ** 2 - 3 * (x[:, 1] + 0.3) ** 2 + noise.normal(0, 0.05, len(x))
        return {"y": y, "c": x[:, 0]}

    res = run_sequential(study, evaluate, budget=18, batch=5, initial=8)
    assert len(res.coded) == 18 and res.batch_of_run.max() == 2
    assert abs(res.optimum.coded[0] - 0.2) < 0.1 and abs(res.optimum.coded[1] + 0.3) < 0.15
    with pytest.raises(StudyError):
        run_sequential(study, evaluate, budget=5, batch=5, initial=7)


def test_twin_runs_vary_like_a_lab_and_truth_does_not() -> None:
    short = load_scenario("normal").with_overrides(days=4.0)
    study = Study("t", (Factor("feed.percent_of_volume", 2.0, 8.0),), (parse_response("peak_osmolality"),
                                                                       parse_response("ivcd")),
                  (), "ivcd", scenario=short)
    settings = [{"feed.percent_of_volume": 2.0}, {"feed.percent_of_volume": 8.0}] * 2
    measured = run_settings(study, settings, [1, 2, 3, 4])
    truth = run_settings(study, settings, [0, 0, 0, 0], truth=True)
    assert truth["peak_osmolality"][1] > truth["peak_osmolality"][0] + 50  # more feed, more salts
    assert truth["ivcd"][0] == truth["ivcd"][2]  # the truth is one number per setting
    assert measured["ivcd"][0] != measured["ivcd"][2]  # replicates differ: variability and assay error
    assert abs(measured["ivcd"][0] / truth["ivcd"][0] - 1) < 0.25


def test_study_rejects_bad_factors_and_responses() -> None:
    with pytest.raises(StudyError, match="not a scenario setting"):
        build_study("x", ["process.nonsense=1:2"], [], [], None)
    with pytest.raises(StudyError, match="unknown kinetic parameter"):
        build_study("x", ["kinetics.nope=1:2"], [], [], None)
    with pytest.raises(StudyError, match="must be above"):
        build_study("x", ["process.ph_setpoint=7.2:6.8"], [], [], None)
    with pytest.raises(StudyError, match="ph_setpoint"):  # the scenario's own limits hold at both ends
        build_study("x", ["process.ph_setpoint=6.0:7.0"], [], [], None)
    with pytest.raises(StudyError, match="unknown column"):
        parse_response("titre:last")
    with pytest.raises(StudyError, match="aggregate"):
        parse_response("titer_g_l:median")


def _short_study(tmp_path: Path) -> Path:
    """A two-factor study on 5-day runs, with a constraint."""
    scenario = tmp_path / "short.toml"
    scenario.write_text('days = 5.0\n')
    study = tmp_path / "study.toml"
    study.write_text(f'scenario = "{scenario}"\nresponses = ["ivcd", "peak_osmolality"]\n'
                     'constraints = ["peak_osmolality <= 420"]\n'
                     '[[factors]]\nname = "feed.percent_of_volume"\nlow = 2.0\nhigh = 6.0\n'
                     '[[factors]]\nname = "process.do_setpoint_pct"\nlow = 30.0\nhigh = 50.0\n')
    return study


def test_design_cli_proposes_runs_and_analyses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _short_study(tmp_path)
    sheet = tmp_path / "runs.csv"
    assert main(["design", "propose", "--study", str(study), "--design", "ccf", "--out", str(sheet), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 11
    report = tmp_path / "report.html"
    assert main(["design", "run", "--study", str(study), "--sheet", str(sheet), "--confirm", "2", "--report",
                 str(report), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"]["ivcd"]["order"] == "quadratic" and out["models"]["ivcd"]["r2"] > 0.5
    assert out["optimum"]["predicted"]["peak_osmolality"] <= 420 + 1e-6
    assert out["confirmation"]["runs"] == 2
    assert "<table>" in report.read_text() and (tmp_path / "report-contour.png").exists()


@pytest.mark.parametrize("args, message", [
    (["propose", "--factor", "process.a=1:2", "--out", "x.csv"], "not a scenario setting"),
    (["propose", "--factor", "feed.percent_of_volume=2:6", "--design", "taguchi", "--out", "x.csv"],
     "unknown design"),
    (["propose", "--factor", "feed.percent_of_volume=2:6", "--constraint", "peak_lactate<3", "--out", "x.csv"],
     "expected RESPONSE<=LIMIT"),
    (["propose", "--out", "x.csv"], "at least one --factor"),
    (["run", "--study", "titer", "--sheet", "missing.csv"], "no such file"),
    (["run", "--study", "nope", "--sheet", "missing.csv"], "unknown study"),
])
def test_design_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["design", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("value, message", [("500", "less than or equal to 100"), ("nan", "finite number")])
def test_design_run_names_an_edited_sheets_row_the_twin_refuses_before_any_run(
        value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--factor", "process.do_setpoint_pct=30:60", "--factor", "feed.percent_of_volume=2:6"]
    sheet = tmp_path / "runs.csv"
    assert main(["design", "propose", *flags, "--design", "full", "--no-randomise", "--out", str(sheet)]) == 0
    lines = sheet.read_text().splitlines()
    cells = lines[3].split(",")  # the third run: the lab typed a DO setpoint the twin cannot run
    cells[lines[0].split(",").index("process.do_setpoint_pct")] = value
    lines[3] = ",".join(cells)
    sheet.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["design", "run", *flags, "--sheet", str(sheet), "--confirm", "0"]) == 2
    captured = capsys.readouterr()
    assert f"{sheet}: row 3: " in captured.err and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "running" not in captured.err  # no run started


def test_design_analyse_refuses_an_infinite_result_naming_its_row(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the row was left out of the fit as if the lab had no result, without a word."""
    sheet = tmp_path / "lab.csv"
    assert main(["design", "propose", *FLAGS, "--design", "full", "--centre-points", "0", "--out", str(sheet)]) == 0
    with open(sheet) as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["final_titer"] = "inf" if i == 2 else str(2.0 + 0.1 * i)
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["design", "analyse", *FLAGS, "--sheet", str(sheet)]) == 2
    err = capsys.readouterr().err
    assert "row 3: final_titer is infinite" in err and len(err.strip().splitlines()) == 1, err


def test_design_analyse_refuses_a_result_that_never_moves(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Before: R² = -Infinity in the report, `-Infinity` and `NaN` in --json (not strict JSON) and statsmodels'
    divide-by-zero warnings."""
    sheet = tmp_path / "lab.csv"
    assert main(["design", "propose", *FLAGS, "--design", "full", "--centre-points", "0", "--out", str(sheet)]) == 0
    with open(sheet) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["final_titer"] = "2.5"
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["design", "analyse", *FLAGS, "--sheet", str(sheet), "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "final_titer: every run gave 2.5" in out.err


def test_fast_prediction_matches_the_fitted_formula() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (30, 2))
    m = fit_response(TWO, x, 1 + x[:, 0] * x[:, 1] + x[:, 1] ** 2 + rng.normal(0, 0.1, 30), "y")
    points = rng.uniform(-1, 1, (7, 2))
    assert np.allclose(m.predict(points), m.fit.predict(m.frame(points)))


def test_design_analyse_reads_a_labs_results_and_writes_a_pdf(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--factor", "process.do_setpoint_pct=30:50", "--factor", "process.ph_setpoint=6.9:7.1"]
    sheet = tmp_path / "lab.csv"
    assert main(["design", "propose", *flags, "--design", "ccd", "--centre-points", "4", "--out", str(sheet)]) == 0
    with open(sheet) as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(5)
    for row in rows:  # the lab's titer: a peak at DO 45 %, pH 7.0
        do, ph = float(row["process.do_setpoint_pct"]), float(row["process.ph_setpoint"])
        row["final_titer"] = 3.0 - 0.004 * (do - 45) ** 2 - 40 * (ph - 7.0) ** 2 + rng.normal(0, 0.02)
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    pdf = tmp_path / "report.pdf"
    assert main(["design", "analyse", *flags, "--sheet", str(sheet), "--report", str(pdf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["optimum"]["settings"]
    assert abs(best["process.do_setpoint_pct"] - 45) < 1.5 and abs(best["process.ph_setpoint"] - 7.0) < 0.02
    assert out["confirmation"] is None and len(out["confirmation_sheet"]) == 3
    assert pdf.read_bytes().startswith(b"%PDF")


def test_bench_design_reports_the_grid_and_the_design_on_it(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    study = _short_study(tmp_path)
    assert main(["bench", "design", "--study", str(study), "--levels", "5", "--budget-share", "0.8", "--batch", "4",
                 "--repeats", "1", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grid_runs"] == 25 and out["runs_used"] == 20
    assert out["ratio"] == pytest.approx(out["design_best_true"] / out["grid_best"])
    # grid_best is the noise-free twin's goal at the best grid setting, which meets the constraint
    truth = run_settings(load_study(str(study)), [out["grid_best_settings"]], [0], truth=True)
    assert truth["ivcd"][0] == pytest.approx(out["grid_best"]) and truth["peak_osmolality"][0] <= 420
    assert json.loads((tmp_path / "design.json").read_text())["grid_best"] == out["grid_best"]


@pytest.mark.parametrize("toml, message", [
    ("factors = 3\n", "factors must be a list of tables"),
    ("factors = [3]\n", "expected a table"),
    ('maximize = "no"\n[[factors]]\nname = "feed.percent_of_volume"\nlow = 2.0\nhigh = 6.0\n',
     "maximize must be true or false"),
    ('responses = [1]\n[[factors]]\nname = "feed.percent_of_volume"\nlow = 2.0\nhigh = 6.0\n',
     "responses must be a list of strings"),
    ('scenario = "nope"\n[[factors]]\nname = "feed.percent_of_volume"\nlow = 2.0\nhigh = 6.0\n',
     "unknown scenario 'nope'"),
    ('[[factors]]\nname = "process.do_setpoint_pct"\nlow = 30.0\nhigh = inf\n', "must be finite numbers"),
    ('[[factors]]\nname = "feed.mode"\nlevels = ["bolus", "bolus"]\n', "two levels must differ"),
])
def test_a_study_file_of_wrong_types_or_values_is_one_line_and_exit_2(
        toml: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: TypeError/AttributeError tracebacks, a ScenarioError traceback for an unknown base scenario,
    `maximize = "no"` maximised, and two equal levels gave a sheet whose factor never changes."""
    study = tmp_path / "study.toml"
    study.write_text(toml)
    out = tmp_path / "x.csv"
    assert main(["design", "propose", "--study", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unknown_base_scenario_flag_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.csv"
    assert main(["design", "propose", "--factor", "feed.percent_of_volume=2:6", "--scenario", "nope",
                 "--out", str(out)]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err and not out.exists()


FLAGS = ["--factor", "process.do_setpoint_pct=30:60", "--factor", "feed.percent_of_volume=2:6"]


@pytest.mark.parametrize("edit, message", [
    (lambda text: bytes(range(128, 256)), "not a text (UTF-8) CSV"),
    (lambda text: text + "1,3,factorial\n", "fewer cells than the header"),
    (lambda text: text.replace(",30.0,", ",inf,", 1), "must be a finite number"),
    (lambda text: text.replace(text.splitlines()[1].rsplit(",", 1)[1], "-5", 1), "seed must be from 0"),
])
def test_a_broken_run_sheet_is_one_line_before_any_run(edit, message: str, tmp_path: Path,  # noqa: ANN001
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: UnicodeDecodeError, TypeError (a short row), numpy's "must not contain infs" and a negative seed's
    ValueError, tracebacks (the last after the twin runs had started)."""
    sheet = tmp_path / "runs.csv"
    assert main(["design", "propose", *FLAGS, "--design", "full", "--centre-points", "0", "--out", str(sheet)]) == 0
    edited = edit(sheet.read_text())
    (sheet.write_bytes if isinstance(edited, bytes) else sheet.write_text)(edited)
    capsys.readouterr()
    assert main(["design", "run", *FLAGS, "--sheet", str(sheet), "--confirm", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "running" not in err


@pytest.mark.parametrize("args, message", [
    (["--confirm", "-1"], "--confirm must be >= 0"),
    (["--report", "r.txt"], "must end in .html or .pdf"),
    (["--results", "runs.csv/r.csv"], "is a file, not a folder"),
])
def test_design_run_checks_its_options_and_outputs_before_the_twin_runs(
        args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: every run of the sheet first, then the error (or a FileNotFoundError traceback for --results)."""
    monkeypatch.chdir(tmp_path)
    assert main(["design", "propose", *FLAGS, "--design", "full", "--out", "runs.csv"]) == 0
    capsys.readouterr()
    assert main(["design", "run", *FLAGS, "--sheet", "runs.csv", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "running" not in err
