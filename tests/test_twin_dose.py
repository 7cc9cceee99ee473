"""The twin's dose advice: the IWPC formula, the model-based stable-dose prediction and `biopilot twin dose`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from biopilot.cli import main
from sources.patient import cohort, warfarin
from sources.patient.cohort import draw_cohort
from sources.patient.dose_advice import (
    INTERVAL_QUANTILES,
    PUBLISHED_CYP2C9_DOSE_RATIO,
    PUBLISHED_VKORC1_DOSE_RATIO,
    STABLE_INR,
    advise_doses,
    daily_dose_for_inr,
    genotype_table,
    lognormal_median_inr,
)
from sources.patient.genetics import ANCESTRIES, CYP2C9_GENOTYPES, VKORC1_GENOTYPES, vkorc1_probabilities
from sources.patient.iwpc import IWPC_ANCESTRY, IWPC_CYP2C9, IWPC_VKORC1, iwpc_weekly_dose_mg

# --- IWPC formula --------------------------------------------------------------------------------------------

def test_iwpc_covers_every_genotype_and_ancestry_of_the_genetics_module():
    assert set(IWPC_VKORC1) - {"unknown"} == set(VKORC1_GENOTYPES)
    assert set(IWPC_CYP2C9) - {"unknown"} == set(CYP2C9_GENOTYPES)
    assert set(IWPC_ANCESTRY) - {"unknown"} == set(ANCESTRIES)


def test_iwpc_matches_a_hand_computed_patient():
    # 67 years -> 6 decades; the published coefficients by hand
    sqrt_dose = 5.6044 - 0.2614 * 6 + 0.0087 * 160 + 0.0128 * 60 - 0.8677 - 0.5211 - 0.1092 - 0.5503
    dose = iwpc_weekly_dose_mg(67, 160, 60, "G/A", "*1/*2", "asian", False, True)
    assert dose.shape == (1,)
    assert dose[0] == pytest.approx(sqrt_dose**2, rel=1e-12)


def test_iwpc_counts_age_in_whole_decades():
    dose = iwpc_weekly_dose_mg([60, 69.9, 70], 170, 70, "G/G", "*1/*1", "white")
    assert dose[0] == dose[1] > dose[2]


def test_iwpc_unknown_genotypes_take_the_unknown_terms_whatever_the_missing_marker():
    known = iwpc_weekly_dose_mg(50, 175, 80, "G/G", "*1/*1", "white")[0]
    expected = (np.sqrt(known) - 0.4854 - 0.2188) ** 2
    for missing in (None, "", np.nan):
        dose = iwpc_weekly_dose_mg(50, 175, 80, [missing], np.array([missing], dtype=object), "white")
        assert dose[0] == pytest.approx(expected, rel=1e-12)


def test_iwpc_unknown_ancestry_takes_the_mixed_or_missing_term():
    unknown, other = iwpc_weekly_dose_mg(50, 175, 80, "G/G", "*1/*1", [None, "other"])
    assert unknown == other < iwpc_weekly_dose_mg(50, 175, 80, "G/G", "*1/*1", "white")[0]


def test_iwpc_orders_by_genotype_and_co_medication():
    vk = iwpc_weekly_dose_mg(60, 170, 75, list(VKORC1_GENOTYPES), "*1/*1", "white")
    assert vk[0] > vk[1] > vk[2]
    cyp = iwpc_weekly_dose_mg(60, 170, 75, "G/G", ["*1/*1", "*1/*2", "*1/*3", "*3/*3"], "white")
    assert np.all(np.diff(cyp) < 0)
    plain, inducer, amio = iwpc_weekly_dose_mg(60, 170, 75, "G/G", "*1/*1", "white", [False, True, False],
                                               [False, False, True])
    assert inducer > plain > amio


def test_iwpc_is_vectorised_over_many_patients():
    rng = np.random.default_rng(1)
    n = 10_000
    dose = iwpc_weekly_dose_mg(rng.uniform(20, 90, n), rng.normal(170, 10, n), rng.normal(80, 15, n),
                               rng.choice(VKORC1_GENOTYPES, n), rng.choice(CYP2C9_GENOTYPES, n),
                               rng.choice(ANCESTRIES, n), rng.random(n) < 0.05, rng.random(n) < 0.05)
    assert dose.shape == (n,) and np.all(np.isfinite(dose)) and np.all(dose >= 0)
    assert 20 < np.median(dose) < 45


def test_iwpc_rejects_an_unknown_genotype_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown VKORC1 -1639 genotype 'A/G'.*G/G, G/A, A/A"):
        iwpc_weekly_dose_mg(60, 170, 75, "A/G", "*1/*1", "white")
    with pytest.raises(ValueError, match="unknown ancestry 'martian'"):
        iwpc_weekly_dose_mg(60, 170, 75, "G/G", "*1/*1", "martian")


def test_iwpc_refuses_a_missing_body_size():
    with pytest.raises(ValueError, match="weight_kg is missing"):
        iwpc_weekly_dose_mg(60, 170, np.nan, "G/G", "*1/*1", "white")


# --- model-based dose advice -----------------------------------------------------------------------------------

GENOTYPE_PAIRS = [(c, v) for c in CYP2C9_GENOTYPES for v in VKORC1_GENOTYPES]


def _typical(cyp2c9, vkorc1, age=71.0, weight=70.0, amiodarone=False, inducer=False):
    n = len(cyp2c9)
    return warfarin.Covariates(np.full(n, age), np.full(n, weight), np.asarray(cyp2c9), np.asarray(vkorc1),
                               np.full(n, amiodarone), np.full(n, inducer))


def test_the_advised_dose_holds_the_target_inr_at_steady_state():
    cyp, vk = zip(*GENOTYPE_PAIRS, strict=True)
    for target in (2.0, 2.5, 3.5):
        advice = advise_doses([f"p{i}" for i in range(len(cyp))], age_years=71, weight_kg=70, cyp2c9=cyp,
                              vkorc1_1639=vk, amiodarone=[i % 2 == 0 for i in range(len(cyp))],
                              target_inr=target)
        cov = _typical(cyp, vk)
        cov = warfarin.Covariates(cov.age_years, cov.weight_kg, cov.cyp2c9, cov.vkorc1,
                                  np.array([i % 2 == 0 for i in range(len(cyp))]), cov.enzyme_inducer)
        inr = warfarin.steady_state_inr(warfarin.typical_params(cov), advice.weekly_dose_mg / 7.0,
                                        warfarin.steady_state_factor(cov))
        np.testing.assert_allclose(inr, target, rtol=1e-6)


def test_a_changed_model_is_solved_by_bisection(monkeypatch):
    real = warfarin.steady_state_inr

    def shifted(params, daily_dose_mg, cl_factor=1.0):  # a model the closed form no longer inverts
        return real(params, daily_dose_mg, cl_factor) + 0.3 * np.tanh(np.asarray(daily_dose_mg, float))

    monkeypatch.setattr(warfarin, "steady_state_inr", shifted)
    params = warfarin.typical_params(_typical(["*1/*1", "*1/*3"], ["G/G", "A/A"]))
    dose = daily_dose_for_inr(params, 2.5)
    np.testing.assert_allclose(shifted(params, dose), 2.5, rtol=1e-6)


def test_typical_wild_type_patient_gets_a_published_stable_dose():
    # FDA warfarin label table (CYP2C9 *1/*1, VKORC1 G/G: 5-7 mg/day); IWPC for the same patient ~38 mg/week
    advice = advise_doses(["wt"], age_years=71, sex="M", height_cm=170, weight_kg=70, ancestry="white",
                          cyp2c9="*1/*1", vkorc1_1639="G/G")
    assert 35.0 <= advice.weekly_dose_mg[0] <= 49.0


def test_the_default_target_is_the_middle_of_the_inrs_held_on_maintenance_doses():
    # Mearns 2014: 25 % of the time below 2, 14 % above 3 -> a log-normal with median ~2.34
    assert abs(STABLE_INR - 2.34) < 0.01
    assert lognormal_median_inr(0.2, 0.2) == pytest.approx(np.sqrt(6.0), rel=1e-9)  # symmetric: geometric middle
    default = advise_doses(["d"], age_years=71, weight_kg=70, cyp2c9="*1/*1", vkorc1_1639="G/G")
    explicit = advise_doses(["e"], age_years=71, weight_kg=70, cyp2c9="*1/*1", vkorc1_1639="G/G",
                            target_inr=STABLE_INR)
    assert default.weekly_dose_mg[0] == explicit.weekly_dose_mg[0]


def test_hambergs_apparent_oral_parameters_are_not_divided_by_bioavailability_again():
    assert warfarin.BIOAVAILABILITY == 1.0


def test_typical_wild_type_dose_is_within_a_factor_two_of_iwpc():
    advice = advise_doses(["wt"], age_years=71, height_cm=170, weight_kg=70, ancestry="white", cyp2c9="*1/*1",
                          vkorc1_1639="G/G")
    iwpc = iwpc_weekly_dose_mg(71, 170, 70, "G/G", "*1/*1", "white")
    assert 0.5 < advice.weekly_dose_mg[0] / iwpc[0] < 2.0


@pytest.fixture(scope="module")
def genotypes() -> dict:
    return genotype_table()


@pytest.mark.parametrize("genotype", list(PUBLISHED_CYP2C9_DOSE_RATIO))
def test_cyp2c9_dose_ratios_fall_in_the_meta_analysis_confidence_intervals(genotypes, genotype):
    # Lindh 2009 (docs/MODEL-PATIENT.md, "Dose advice"); with S-warfarin alone the ratios were 0.68, 0.55, 0.28,
    # 0.31, 0.15 (R-warfarin dilutes CYP2C9's effect)
    row = next(r for r in genotypes["cyp2c9"] if r["cyp2c9"] == genotype)
    assert row["published_lo"] <= row["advice_ratio"] <= row["published_hi"], row


@pytest.mark.parametrize("genotype", list(PUBLISHED_VKORC1_DOSE_RATIO))
def test_vkorc1_dose_ratios_fall_in_the_published_band(genotypes, genotype):
    row = next(r for r in genotypes["vkorc1_1639"] if r["vkorc1_1639"] == genotype)
    assert row["published_lo"] <= row["advice_ratio"] <= row["published_hi"], row


def test_typical_patients_advice_is_near_iwpc_where_iwpc_had_the_patients(genotypes):
    # IWPC's data held few *3/*3 patients and its formula lowers their dose less than the meta-analysis does
    ratios = {(r["cyp2c9"], r["vkorc1_1639"]): r["advice_to_iwpc"] for r in genotypes["doses"]}
    for (cyp, _vk), ratio in ratios.items():
        if cyp in ("*1/*1", "*1/*2", "*1/*3", "*2/*2"):
            assert 0.85 < ratio < 1.15, (cyp, _vk, ratio)


def test_drawn_cohort_advice_is_at_iwpcs_level():
    c = draw_cohort(3000, np.random.default_rng(3))
    advice = advise_doses(c.patient_id, c.age_years, c.sex, c.height_cm, c.weight_kg, c.ancestry, c.cyp2c9,
                          c.vkorc1_1639, c.amiodarone, c.enzyme_inducer).weekly_dose_mg
    iwpc = iwpc_weekly_dose_mg(c.age_years, c.height_cm, c.weight_kg, c.vkorc1_1639, c.cyp2c9, c.ancestry,
                               c.enzyme_inducer, c.amiodarone)
    assert 0.9 < np.median(advice / iwpc) < 1.1
    for cyp in ("*1/*1", "*1/*2", "*1/*3"):
        for vk in VKORC1_GENOTYPES:
            group = (c.cyp2c9 == cyp) & (c.vkorc1_1639 == vk)
            assert 0.85 < advice[group].mean() / iwpc[group].mean() < 1.15, (cyp, vk)


def test_twin_genotypes_prints_the_table_as_json(capsys, genotypes):
    assert main(["twin", "genotypes", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(genotypes))
    assert len(printed["doses"]) == len(CYP2C9_GENOTYPES) * len(VKORC1_GENOTYPES)


def test_doses_order_by_genotype_like_iwpc():
    cyp, vk = zip(*GENOTYPE_PAIRS, strict=True)
    model = advise_doses(list(range(len(cyp))), age_years=65, height_cm=170, weight_kg=75, ancestry="white",
                         cyp2c9=cyp, vkorc1_1639=vk).weekly_dose_mg.reshape(6, 3)
    iwpc = iwpc_weekly_dose_mg(65, 170, 75, vk, cyp, "white").reshape(6, 3)
    assert np.all(np.diff(model, axis=1) < 0)  # G/G > G/A > A/A for every CYP2C9 genotype
    for rows in ([0, 1, 3], [0, 2, 5], [1, 4, 5], [3, 4, 5]):  # *1/*1 > *1/*2 > *2/*2, ..., *2/*2 > *2/*3 > *3/*3
        assert np.all(np.diff(model[rows], axis=0) < 0)
    rank = np.argsort(np.argsort(model.ravel()))
    rank_iwpc = np.argsort(np.argsort(iwpc.ravel()))
    assert np.corrcoef(rank, rank_iwpc)[0, 1] > 0.9


def test_on_a_drawn_population_the_advice_tracks_iwpc():
    c = draw_cohort(3000, np.random.default_rng(3))
    inducer = np.arange(len(c)) % 20 == 0
    amio = np.arange(len(c)) % 20 == 1
    model = advise_doses(c.patient_id, c.age_years, c.sex, c.height_cm, c.weight_kg, c.ancestry, c.cyp2c9,
                         c.vkorc1_1639, amio, inducer).weekly_dose_mg
    iwpc = iwpc_weekly_dose_mg(c.age_years, c.height_cm, c.weight_kg, c.vkorc1_1639, c.cyp2c9, c.ancestry,
                               inducer, amio)
    assert np.corrcoef(np.log(model), np.log(iwpc))[0, 1] > 0.85


@pytest.mark.parametrize(("covariate", "low", "high"), [
    ("age_years", 50.0, 80.0), ("weight_kg", 60.0, 100.0), ("cyp2c9", "*1/*1", "*1/*3"),
    ("vkorc1_1639", "G/G", "A/A"), ("amiodarone", False, True), ("enzyme_inducer", False, True)])
def test_each_covariate_moves_the_dose_the_way_iwpc_does(covariate, low, high):
    base = {"age_years": 65.0, "height_cm": 170.0, "weight_kg": 75.0, "ancestry": "white", "cyp2c9": "*1/*2",
            "vkorc1_1639": "G/A", "amiodarone": False, "enzyme_inducer": False}
    both = {k: [v, v] for k, v in base.items()} | {covariate: [low, high]}
    model = advise_doses(["lo", "hi"], **both).weekly_dose_mg
    iwpc = iwpc_weekly_dose_mg(both["age_years"], both["height_cm"], both["weight_kg"], both["vkorc1_1639"],
                               both["cyp2c9"], both["ancestry"], both["enzyme_inducer"], both["amiodarone"])
    assert np.sign(model[1] - model[0]) == np.sign(iwpc[1] - iwpc[0]) != 0


def test_an_unknown_genotype_is_averaged_over_hardy_weinberg_for_the_ancestry():
    vk = list(VKORC1_GENOTYPES)
    known = advise_doses(vk, age_years=60, weight_kg=80, cyp2c9="*1/*1", vkorc1_1639=vk).weekly_dose_mg
    unknown = advise_doses(["w", "a", "b"], age_years=60, weight_kg=80, cyp2c9="*1/*1", vkorc1_1639=None,
                           ancestry=["white", "asian", "black"]).weekly_dose_mg
    for dose, ancestry in zip(unknown, ("white", "asian", "black"), strict=True):
        probs = vkorc1_probabilities(ancestry)
        expected = np.exp(sum(probs[g] * np.log(d) for g, d in zip(vk, known, strict=True)))
        assert dose == pytest.approx(expected, rel=1e-9)
    assert unknown[2] > unknown[0] > unknown[1]  # VKORC1 -1639A: rare in Africans, common in East Asians


def test_not_knowing_the_genotype_widens_the_interval():
    advice = advise_doses(["known", "unknown"], age_years=60, weight_kg=80, ancestry="white",
                          cyp2c9=["*1/*1", None], vkorc1_1639=["G/A", ""])
    width = np.log(advice.dose_hi_mg / advice.dose_lo_mg)
    assert width[1] > width[0] * 1.2


def test_an_unknown_ancestry_is_averaged_over_the_mix():
    alone = advise_doses(["x"], age_years=60, weight_kg=80, ancestry="asian")
    mixed = advise_doses(["x"], age_years=60, weight_kg=80, ancestry=None, ancestry_mix={"asian": 1.0})
    default_mix = advise_doses(["x"], age_years=60, weight_kg=80)
    assert mixed.weekly_dose_mg[0] == pytest.approx(alone.weekly_dose_mg[0], rel=1e-12)
    assert default_mix.weekly_dose_mg[0] > alone.weekly_dose_mg[0]


def test_missing_age_and_weight_take_the_cohort_typical_values():
    missing = advise_doses(["m"], sex="M", height_cm=180, cyp2c9="*1/*1", vkorc1_1639="G/G")
    typical_weight = cohort.BMI_MEDIAN_KG_M2 * 1.8**2
    given = advise_doses(["g"], age_years=cohort.AGE_MEAN_YEARS, sex="M", height_cm=180,
                         weight_kg=typical_weight, cyp2c9="*1/*1", vkorc1_1639="G/G")
    assert missing.weekly_dose_mg[0] == pytest.approx(given.weekly_dose_mg[0], rel=1e-12)
    taller = advise_doses(["t"], sex="M", height_cm=195, cyp2c9="*1/*1", vkorc1_1639="G/G")
    assert taller.weekly_dose_mg[0] > missing.weekly_dose_mg[0]  # heavier at the same BMI


def test_the_interval_holds_the_stated_share_of_simulated_patients():
    n = 4000
    cyp, vk = np.full(n, "*1/*2"), np.full(n, "G/A")
    cov = _typical(cyp, vk, age=60.0, weight=80.0)
    people = warfarin.individual_params(cov, np.random.default_rng(99))  # not the advice's draws
    true_weekly = 7.0 * daily_dose_for_inr(people, STABLE_INR, warfarin.steady_state_factor(cov))
    advice = advise_doses(["x"], age_years=60, weight_kg=80, cyp2c9="*1/*2", vkorc1_1639="G/A")
    inside = (true_weekly >= advice.dose_lo_mg[0]) & (true_weekly <= advice.dose_hi_mg[0])
    lo, hi = INTERVAL_QUANTILES
    assert inside.mean() == pytest.approx(hi - lo, abs=0.05)
    assert np.median(true_weekly) == pytest.approx(advice.weekly_dose_mg[0], rel=0.05)


def test_a_patients_advice_does_not_depend_on_the_batch():
    alone = advise_doses(["x"], age_years=55, weight_kg=90, ancestry="black")
    c = draw_cohort(50, np.random.default_rng(1))
    def plus(values, last):
        return np.concatenate([np.asarray(values, dtype=object), [last]])

    batch = advise_doses(plus(c.patient_id, "x"), plus(c.age_years, 55), None, None, plus(c.weight_kg, 90),
                         plus(c.ancestry, "black"), plus(c.cyp2c9, None), plus(c.vkorc1_1639, None))
    assert (batch.weekly_dose_mg[-1], batch.dose_lo_mg[-1], batch.dose_hi_mg[-1]) == (
        alone.weekly_dose_mg[0], alone.dose_lo_mg[0], alone.dose_hi_mg[0])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weight_kg": -3}, r"implausible weight_kg -3; allowed: 30 to 250"),
    ({"age_years": 400}, r"implausible age_years 400"),
    ({"height_cm": 17.5}, r"implausible height_cm 17.5"),
    ({"sex": "X"}, r"unknown sex 'X'; allowed: M, F"),
    ({"cyp2c9": "*1/*4"}, r"unknown CYP2C9 genotype '\*1/\*4'"),
    ({"ancestry": "european"}, r"unknown ancestry 'european'; allowed: white, black, asian, other"),
    ({"target_inr": 5.0}, r"target INR 5 is outside 1.5 to 4"),
])
def test_bad_covariates_raise_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        advise_doses(["x"], **kwargs)


# --- biopilot twin dose ----------------------------------------------------------------------------------------

GOOD_CSV = """patient_id,age_years,sex,height_cm,weight_kg,ancestry,cyp2c9,vkorc1_1639,amiodarone,enzyme_inducer
p1,71,M,170,70,white,*1/*1,G/G,false,no
p2,71,F,160,70,white,*3/*3,A/A,0,0
p3,,,,,,,,,
p4,64,F,158,61,asian,*1/*1,,yes,
"""


def _twin_dose(*args: str) -> int:
    return main(["twin", "dose", *args])


def test_twin_dose_writes_one_row_per_patient_from_a_csv(tmp_path, capsys):
    src, out = tmp_path / "cohort.csv", tmp_path / "doses.csv"
    src.write_text(GOOD_CSV)
    assert _twin_dose("--input", str(src), "--out", str(out)) == 0
    table = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(column_types={"patient_id": pa.string()}))
    assert table.column_names == ["patient_id", "weekly_dose_mg", "dose_lo_mg", "dose_hi_mg"]
    assert table["patient_id"].to_pylist() == ["p1", "p2", "p3", "p4"]
    dose = table["weekly_dose_mg"].to_numpy()
    expected = advise_doses(["p1", "p2"], age_years=71, sex=["M", "F"], height_cm=[170, 160], weight_kg=70,
                            ancestry="white", cyp2c9=["*1/*1", "*3/*3"], vkorc1_1639=["G/G", "A/A"])
    np.testing.assert_allclose(dose[:2], expected.weekly_dose_mg, atol=0.006)
    assert np.all(table["dose_lo_mg"].to_numpy() < dose) and np.all(dose < table["dose_hi_mg"].to_numpy())
    assert "advised 4 patients" in capsys.readouterr().out


def test_twin_dose_takes_only_patient_id_and_parquet_both_ways(tmp_path):
    src, out = tmp_path / "ids.parquet", tmp_path / "doses.parquet"
    pq.write_table(pa.table({"patient_id": [1, 2], "weight_kg": [None, 95.0], "amiodarone": [None, True]}), src)
    assert _twin_dose("--input", str(src), "--out", str(out), "--target-inr", "3") == 0
    table = pq.read_table(out)
    assert table["patient_id"].to_pylist() == ["1", "2"]
    prior = advise_doses(["1"], target_inr=3.0).weekly_dose_mg[0]
    assert table["weekly_dose_mg"][0].as_py() == pytest.approx(prior, abs=0.006)
    assert table["weekly_dose_mg"][1].as_py() < prior  # amiodarone outweighs the extra weight


def test_twin_dose_target_inr_raises_the_dose(tmp_path):
    src = tmp_path / "cohort.csv"
    src.write_text(GOOD_CSV)
    doses = []
    for target in ("2", "3"):
        out = tmp_path / f"doses_{target}.csv"
        assert _twin_dose("--input", str(src), "--out", str(out), "--target-inr", target) == 0
        doses.append(pacsv.read_csv(out)["weekly_dose_mg"].to_numpy())
    assert np.all(doses[1] > doses[0])


@pytest.mark.parametrize(("csv_text", "extra", "message"), [
    ("id,age_years\np1,60\n", [], "has no patient_id column (columns: id, age_years)"),
    ("patient_id,cyp2c9\np1,*1/*9\n", [], "unknown CYP2C9 genotype '*1/*9'; allowed: *1/*1"),
    ("patient_id,vkorc1_1639\np1,GG\n", [], "unknown VKORC1 -1639 genotype 'GG'"),
    ("patient_id,ancestry\np1,martian\n", [], "unknown ancestry 'martian'"),
    ("patient_id,sex\np1,male\n", [], "unknown sex 'male'; allowed: M, F"),
    ("patient_id,weight_kg\np1,-70\n", [], "implausible weight_kg -70; allowed: 30 to 250"),
    ("patient_id,height_cm\np1,1.75\n", [], "implausible height_cm 1.75"),
    ("patient_id,age_years\np1,171\n", [], "implausible age_years 171"),
    ("patient_id,weight_kg\np1,heavy\n", [], "weight_kg must be a number, got 'heavy' (row 1)"),
    ("patient_id,amiodarone\np1,maybe\n", [], "amiodarone must be true/false, yes/no or 1/0, got 'maybe'"),
    ("patient_id\np1\n", ["--target-inr", "5"], "target INR 5 is outside 1.5 to 4"),
    ("patient_id\np1\n", ["--target-inr", "1"], "target INR 1 is outside 1.5 to 4"),
    ("patient_id,age_years,patient_id\np1,60,p2\n", [], "has more than one column named patient_id"),
    # the row of a bad genotype or an implausible number, as of a value that is not a number
    ("patient_id,cyp2c9\np1,*1/*1\np2,\np3,*1/*9\n", [], "*3/*3 (or empty for unknown; row 3)"),
    ("patient_id,weight_kg\np1,70\np2,700\n", [], "30 to 250 (or empty for unknown; row 2)"),
])
def test_twin_dose_bad_input_is_one_line_and_exit_2(tmp_path, capsys, csv_text, extra, message):
    src, out = tmp_path / "cohort.csv", tmp_path / "doses.csv"
    src.write_text(csv_text)
    assert _twin_dose("--input", str(src), "--out", str(out), *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("make", ["missing", "garbage_parquet", "directory"])
def test_twin_dose_unreadable_input_is_one_line_and_exit_2(tmp_path, capsys, make):
    src = tmp_path / ("in.parquet" if make == "garbage_parquet" else "in.csv")
    if make == "garbage_parquet":
        src.write_bytes(b"not a parquet file at all")
    elif make == "directory":
        src.mkdir()
    assert _twin_dose("--input", str(src), "--out", str(tmp_path / "o.csv")) == 2
    err = capsys.readouterr().err
    assert f"cannot read {src}" in err and err.count("\n") == 1, err


def test_twin_dose_help_states_the_values_a_missing_age_and_weight_take(tmp_path, capsys):
    """The help said a missing age is 71 and a missing weight 70 kg; the advice takes the cohort's mean age and its
    median BMI at the patient's height (docs/MODEL-PATIENT.md)."""
    with pytest.raises(SystemExit):
        main(["twin", "dose", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(missing: {cohort.AGE_MEAN_YEARS:g}, the virtual cohort's mean)" in text
    assert f"(missing: the cohort's median BMI, {cohort.BMI_MEDIAN_KG_M2:g}, at the patient's height)" in text
    height_m = 1.75
    bmi_weight = round(cohort.BMI_MEDIAN_KG_M2 * height_m**2, 3)
    src, out = tmp_path / "cohort.csv", tmp_path / "doses.csv"
    src.write_text("patient_id,age_years,weight_kg,height_cm,sex,ancestry,cyp2c9,vkorc1_1639\n"
                   f"missing,,,{height_m * 100:g},M,white,*1/*1,G/G\n"
                   f"stated,{cohort.AGE_MEAN_YEARS:g},{bmi_weight},{height_m * 100:g},M,white,*1/*1,G/G\n")
    assert _twin_dose("--input", str(src), "--out", str(out)) == 0
    doses = pacsv.read_csv(out)["weekly_dose_mg"].to_pylist()
    assert doses[0] == pytest.approx(doses[1], abs=0.02)


def test_twin_dose_help_explains_the_columns(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["twin", "dose", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for column in ("patient_id", "age_years", "sex", "height_cm", "weight_kg", "ancestry", "cyp2c9",
                   "vkorc1_1639", "amiodarone", "enzyme_inducer", "weekly_dose_mg", "dose_lo_mg", "dose_hi_mg"):
        assert column in text
