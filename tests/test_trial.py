"""In-silico trials (`trials/`, `biopilot trial`): the arithmetic against hand-computed examples, determinism by
seed, design validation, randomisation, and a small trial end to end (tables and report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from biopilot.cli import main
from sinks import delta
from sources.patient.cohort import draw_cohort
from trials import analysis, report, tables
from trials.design import load_design
from trials.endpoints import rosendaal_ttr
from trials.run import Trial, run_trial
from trials.simulate import cohort_from_table, randomise, read_population_file


def test_rosendaal_ttr_matches_a_hand_computed_example() -> None:
    # 1 -> 3 over days 0-10: in 2-3 for 5 days; 3 -> 4: at 3 only, 0 days; 4 -> 2.5 over 10 days: 2.5-3 is a
    # third of the fall, 3.33 days; 2.5 -> 2.5: all 10 days. (5 + 0 + 3.33 + 10) / 40
    t = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    ttr = rosendaal_ttr(t, np.array([[1.0, 3.0, 4.0, 2.5, 2.5],
                                     [2.5, np.nan, np.nan, np.nan, np.nan],  # one reading: not evaluable
                                     [1.0, 3.0, np.nan, np.nan, np.nan]]))  # lost after day 10
    assert ttr[0] == pytest.approx((5 + 0 + 10 / 3 + 10) / 40)
    assert np.isnan(ttr[1])
    assert ttr[2] == pytest.approx(0.5)


def test_difference_ci_and_p_match_a_hand_computed_t_test() -> None:
    # groups 1,2,3 and 4,5,6: pooled SD 1, SE sqrt(2/3), t = 3.674 on 4 df
    r = analysis.compare(np.array([1.0, 2, 3, 4, 5, 6]), np.array([0, 0, 0, 1, 1, 1]))
    se = np.sqrt(2 / 3)
    assert r.difference == pytest.approx(3.0)
    assert r.ci_low == pytest.approx(3 - stats.t.ppf(0.975, 4) * se)
    assert r.ci_high == pytest.approx(3 + stats.t.ppf(0.975, 4) * se)
    assert r.p_value == pytest.approx(2 * stats.t.sf(3 / se, 4))


def test_ancova_on_the_score_matches_a_hand_computed_example() -> None:
    # treated and score orthogonal: effect = 5 - 1.5 = 3.5, score slope 1.5; residuals +-0.25, sigma^2 0.25 on
    # 1 df, SE of the effect sqrt(0.25 / 1) = 0.5, t = 7
    y, treated, score = np.array([1.0, 2, 4, 6]), np.array([0, 0, 1, 1]), np.array([0.0, 1, 0, 1])
    r = analysis.compare(y, treated, score)
    assert (r.difference, r.se, r.residual_variance) == pytest.approx((3.5, 0.5, 0.25))
    assert r.p_value == pytest.approx(1 - 2 * np.arctan(7) / np.pi)
    assert (r.ci_low, r.ci_high) == pytest.approx((3.5 - 12.7062 * 0.5, 3.5 + 12.7062 * 0.5), abs=1e-3)
    effect, se, dof = analysis.batch_effects(y[None, :2], y[None, 2:], score[None, :2], score[None, 2:])
    assert (effect[0], se[0], dof[0]) == pytest.approx((3.5, 0.5, 1))


def test_the_batch_analysis_of_many_trials_equals_statsmodels_one_by_one() -> None:
    rng = np.random.default_rng(4)
    y0, y1 = rng.normal(60, 20, (5, 30)), rng.normal(65, 20, (5, 30))
    s0, s1 = y0 + rng.normal(0, 15, y0.shape), y1 + rng.normal(0, 15, y1.shape)
    for scores in (None, (s0, s1)):
        effect, se, dof = analysis.batch_effects(y0, y1, *(scores or (None, None)))
        p = analysis.two_sided_p(effect, se, dof)
        for k in range(5):
            score = None if scores is None else np.r_[s0[k], s1[k]]
            one = analysis.compare(np.r_[y0[k], y1[k]], np.r_[np.zeros(30), np.ones(30)], score)
            assert (effect[k], se[k], p[k]) == pytest.approx((one.difference, one.se, one.p_value))


def test_permuted_blocks_balance_the_arms_within_each_stratum() -> None:
    stratum = np.array(["G/G"] * 12 + ["A/A"] * 8)
    arm = randomise(stratum, [1, 2], 6, np.random.default_rng(1))
    for s in ("G/G", "A/A"):
        first_blocks = arm[stratum == s][:6]
        assert sorted(first_blocks.tolist()) == [0, 0, 1, 1, 1, 1]
    assert abs((arm == 1).sum() - 2 * (arm == 0).sum()) <= 3


@pytest.fixture(scope="module")
def stored_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trial, Path, Path, list[str]]:
    """One small EU-PACT trial, its tables written to a lake and its report: shared by the tests below."""
    folder = tmp_path_factory.mktemp("trial")
    trial = run_trial(load_design("eu_pact"), 8, seed=2)
    lake, page = folder / "lake", folder / "trial.html"
    written = tables.write(trial, lake)
    report.write(trial, page)
    return trial, lake, page, written


def test_the_same_seed_gives_the_same_trial_and_another_seed_another(stored_trial) -> None:
    trial = stored_trial[0]
    again = run_trial(load_design("eu_pact"), 8, seed=2)
    other = run_trial(load_design("eu_pact"), 8, seed=6)
    assert again.trial_id == trial.trial_id != other.trial_id
    assert np.array_equal(again.course.lab_inr, trial.course.lab_inr, equal_nan=True)
    assert np.array_equal(again.course.arm, trial.course.arm)
    assert not np.array_equal(other.course.lab_inr, trial.course.lab_inr, equal_nan=True)


def test_every_arm_titrates_patients_into_range(stored_trial) -> None:
    trial = stored_trial[0]
    r = trial.results
    assert r["flow"]["randomised"] == 16 and sum(a["allocated"] for a in r["flow"]["arms"].values()) == 16
    for arm in ("standard", "genotype"):
        assert 30 < r["endpoints"]["ttr"]["per_arm"][arm]["mean"] < 95
    late = trial.course.lab_inr[:, trial.course.lab_day >= 28]
    assert 1.8 < np.nanmedian(late) < 3.2


@pytest.mark.parametrize(("text", "expected"), [
    ("[[arms]]\nname = 'a'\nprotocol = 'standard'\n[[arms]]\nname = 'b'\nprotocol = 'magic'\n", "arms.1.protocol"),
    ("[[arms]]\nname = 'a'\nprotocol = 'standard'\n[[arms]]\nname = 'b'\nprotocol = 'genotype'\n"
     "[randomisation]\nratio = [1, 1, 1]\n", "ratio has 3 entries for 2 arms"),
    ("duration_days = 84\n[[arms]]\nname = 'a'\nprotocol = 'standard'\n", "arms"),
    ("this is not toml", "invalid TOML"),
])
def test_a_bad_design_is_one_line_and_exit_2(tmp_path: Path, capsys, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["trial", "run", "--design", str(path), "--patients-per-arm", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_patients_per_arm_is_the_planned_size_and_the_help_says_arms_may_differ(capsys) -> None:
    """Stratified blocks left 31 and 29 of a planned 30 per arm; the help said 30 were randomised to the
    smallest arm."""
    assert main(["trial", "run", "--design", "eu_pact", "--patients-per-arm", "30", "--json"]) == 0
    per_arm = json.loads(capsys.readouterr().out)["endpoints"]["ttr"]["per_arm"]
    assert sum(arm["n"] for arm in per_arm.values()) == 60
    with pytest.raises(SystemExit):
        main(["trial", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "randomised to the smallest arm" not in text and "a few patients either side" in text


def test_an_unknown_design_names_the_built_ins(capsys) -> None:
    assert main(["trial", "run", "--design", "no_such_design"]) == 2
    assert "eu_pact" in capsys.readouterr().err


def test_a_trial_writes_the_patient_tables_the_trial_tables_and_a_report(stored_trial) -> None:
    trial, lake, page, written = stored_trial
    assert trial.results["arms"] == ["standard", "genotype"] and "genotype" in trial.results["endpoints"]["ttr"][
        "vs_control"]
    assert set(written) >= {"patients", "labs", "doses", "runs", "trial_arms", "trial_results"}
    arms = delta.read(lake, "trial_arms")
    assert arms.num_rows == 16 and set(arms["arm"].to_pylist()) == {"standard", "genotype"}
    assert delta.read(lake, "patients").num_rows == 16 and delta.read(lake, "runs").num_rows == 16
    assert delta.read(lake, "labs").num_rows >= 16 * 2
    assert delta.read(lake, "trial_results").num_rows > 0
    text = page.read_text()
    assert "CONSORT" in text and "time in therapeutic range" in text and "data:image/png;base64" in text
    # the same trial again writes nothing twice
    assert tables.write(trial, lake) == []
    assert delta.read(lake, "trial_arms").num_rows == 16


def test_biopilot_report_on_a_trial_run_gives_the_patients_trial_report(stored_trial, tmp_path: Path,
                                                                         capsys) -> None:
    trial, lake = stored_trial[0], stored_trial[1]
    run_id = trial.run_ids()[0]
    arm = trial.arm_names[trial.course.arm[0]]
    assert main(["report", run_id, "--lake", str(lake), "--out", str(tmp_path), "--format", "html"]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text()
    assert f"trial {trial.trial_id}, arm {arm} (protocol" in page
    assert f"{trial.endpoints.ttr[0] * 100:.1f}" in page and "INR draws" in page and "data:image/png;base64" in page
    assert main(["report", "not-a-run", "--lake", str(lake), "--out", str(tmp_path)]) == 2
    assert "not-a-run" in capsys.readouterr().err


def test_diagnose_and_chat_on_a_trial_run_say_it_has_no_vitals_and_point_to_the_report(stored_trial,
                                                                                       capsys) -> None:
    trial, lake = stored_trial[0], stored_trial[1]
    run_id = trial.run_ids()[0]
    for args in (["diagnose", "--run", run_id], ["chat", "why is the INR low?", "--run", run_id]):
        assert main([*args, "--lake", str(lake)]) == 2
        err = capsys.readouterr().err
        assert "has no ticks or vitals to diagnose" in err and f"biopilot report {run_id}" in err, err


def test_a_population_file_supplies_the_patients_covariates(tmp_path: Path) -> None:
    cohort = draw_cohort(40, np.random.default_rng(9), ancestry={"asian": 1.0})
    table = cohort.patients_table([f"r{i}" for i in range(40)])
    path = tmp_path / "cohort.parquet"
    pq.write_table(table, path)
    design = load_design("eu_pact").with_overrides(population={"from": str(path)})
    trial = run_trial(design, 6, seed=1, population_table=pq.read_table(path))
    assert set(trial.cohort.ancestry) == {"asian"}
    assert set(np.round(trial.cohort.age_years, 6)) <= set(np.round(cohort.age_years, 6))


def test_a_relative_population_file_is_read_beside_the_design_not_from_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = tmp_path / "study"
    study.mkdir()
    cohort = draw_cohort(40, np.random.default_rng(9), ancestry={"asian": 1.0})
    pq.write_table(cohort.patients_table([f"r{i}" for i in range(40)]), study / "cohort.parquet")
    (study / "design.toml").write_text('[population]\nfrom = "cohort.parquet"\n[[arms]]\nname = "a"\n'
                                       'protocol = "standard"\n[[arms]]\nname = "b"\nprotocol = "genotype"\n')
    monkeypatch.chdir(tmp_path)  # cohort.parquet is not here
    design = load_design("study/design.toml")
    assert Path(design.population.from_file).resolve() == (study / "cohort.parquet").resolve()
    assert load_design(study / "design.toml").population.from_file == str(study / "cohort.parquet")


def test_a_population_files_yes_no_flags_are_read_as_written_and_bad_cells_are_one_line(tmp_path: Path,
                                                                                       capsys) -> None:
    """A CSV's amiodarone column of yes/no is text: "no" must not become True (numpy's astype(bool) of any
    non-empty text), and text in a number column or an unknown sex is one line, exit 2, not a traceback."""
    header = "age_years,sex,height_cm,weight_kg,ancestry,cyp2c9,vkorc1_1639,amiodarone,enzyme_inducer\n"
    rows = [f"{50 + i},{'MF'[i % 2]},170,75,white,*1/*1,G/A,{'yes' if i < 2 else 'no'},n\n" for i in range(40)]
    good = tmp_path / "good.csv"
    good.write_text(header + "".join(rows))
    cohort = cohort_from_table(read_population_file(str(good)), np.random.default_rng(0))
    assert sorted(zip(cohort.age_years.tolist(), cohort.amiodarone.tolist(), strict=True))[:3] == [
        (50.0, True), (51.0, True), (52.0, False)]
    assert cohort.amiodarone.sum() == 2 and not cohort.enzyme_inducer.any()
    for bad_row, words in (("abc,M,170,75,white,*1/*1,G/A,no,no", "age_years must be a number, got 'abc'"),
                           ("60,X,170,75,white,*1/*1,G/A,no,no", "unknown sex 'X'"),
                           ("60,M,170,75,white,*1/*1,G/A,maybe,no", "amiodarone must be true/false")):
        path = tmp_path / "bad.csv"
        path.write_text(header + "".join(rows[:30]) + bad_row + "\n")
        design = tmp_path / "design.toml"
        design.write_text(f'[population]\nfrom = "{path}"\n[[arms]]\nname = "a"\nprotocol = "standard"\n'
                          '[[arms]]\nname = "b"\nprotocol = "genotype"\n')
        assert main(["trial", "run", "--design", str(design), "--patients-per-arm", "5"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


def test_one_patient_per_arm_prints_n_a_and_says_why_not_nan(recwarn: pytest.WarningsRecorder) -> None:
    text = report.text_summary(run_trial(load_design("eu_pact"), 1, seed=0).results)
    assert "nan" not in text and "95 % CI n/a to n/a), p n/a" in text, text
    assert "fewer than 2 assessed patients" in text
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_procova_reports_rho_the_variance_ratio_and_the_ci_widths() -> None:
    trial = run_trial(load_design("eu_pact"), 24, seed=3, use_procova=True, historical_patients=160)
    p = trial.results["procova"]
    cmp = p["comparisons"]["genotype"]
    assert -1 <= p["rho"] <= 1 and p["historical_patients"] > 130
    analysed = sum(s["n"] for s in trial.results["endpoints"]["ttr"]["per_arm"].values())
    # one more regressor never raises the residual sum of squares: the variance per df by one df at most
    assert cmp["observed_variance_ratio"] <= (analysed - 2) / (analysed - 3) + 1e-9
    assert cmp["sample_size_saved_share"] == pytest.approx(1 - cmp["observed_variance_ratio"], abs=1e-3)
    adj = cmp["adjusted"]
    assert cmp["ci_width_adjusted"] == pytest.approx(adj["ci_high"] - adj["ci_low"], abs=1e-3)


def test_trial_power_on_a_null_design_prints_rates_and_draws_the_curve(tmp_path: Path, capsys) -> None:
    png = tmp_path / "power.png"
    assert main(["trial", "power", "--design", "null_standard", "--n-trials", "200", "--patients-per-arm", "20,40",
                 "--pool", "120", "--procova", "--historical-patients", "150", "--curve", str(png), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["power"]) == len(res["power_procova"]) == 2
    assert all(0.0 <= p <= 0.2 for p in res["power"] + res["power_procova"])  # no effect: near alpha
    assert 0.5 < res["observed_variance_ratio"] <= 1.05 and png.stat().st_size > 1000
    assert main(["trial", "power", "--design", "null_standard", "--patients-per-arm", "100", "--pool", "120"]) == 2


def test_a_metoprolol_trial_reports_heart_rate_and_bradycardia(tmp_path: Path, capsys) -> None:
    lake = tmp_path / "lake"
    assert main(["trial", "run", "--design", "metoprolol_cyp2d6", "--patients-per-arm", "12", "--seed", "1",
                 "--lake", str(lake), "--report", str(tmp_path / "m.html"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["primary"] == "hr_reduction" and set(res["endpoints"]) >= {"hr_control", "bradycardia", "bradycardia_final_visit"}
    for s in res["endpoints"]["hr_reduction"]["per_arm"].values():
        assert 3 < s["mean"] < 20  # metoprolol lowers the resting pulse by up to its Emax (20 bpm)
    doses = delta.read(lake, "doses")
    assert set(doses["drug"].to_pylist()) == {"metoprolol"}
    arms = delta.read(lake, "trial_arms")
    assert set(arms["primary_endpoint"].to_pylist()) == {"hr_reduction"} and arms["ttr_pct"].null_count == 24
    assert "resting HR" in (tmp_path / "m.html").read_text()
