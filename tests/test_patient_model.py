"""Plausibility of the patient model (cohort, warfarin and metoprolol PK/PD): the published sanity INRs, the
genotype ordering, half-lives, the amiodarone interaction and the CYP2D6 heart-rate difference, and the numba
kernel against scipy's solve_ivp."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sources.patient import metoprolol, warfarin
from sources.patient.cohort import Cohort, draw_cohort
from sources.patient.pkpd import PkpdState, daily_doses, step_pkpd

DT_H = 0.5


def run(cohort: Cohort, days: float, warfarin_mg=5.0, metoprolol_mg=0.0, cl_factor=None, dt_h=DT_H):
    n, steps = len(cohort), int(round(days * 24 / dt_h))
    dw = daily_doses(n, steps, dt_h, warfarin_mg)
    dm = daily_doses(n, steps, dt_h, metoprolol_mg, hour=8.0)
    clf = np.ones((n, steps)) if cl_factor is None else cl_factor
    return step_pkpd(PkpdState.initial(n), cohort, dw, dm, clf, dt_h)


# ---- cohort -----------------------------------------------------------------------------------------------------
def test_cohort_genotype_frequencies_follow_hardy_weinberg_per_ancestry():
    c = draw_cohort(20000, np.random.default_rng(3), ancestry={"white": 1.0})
    p2, p3 = 0.12, 0.07
    assert abs(np.mean(c.cyp2c9 == "*1/*1") - (1 - p2 - p3) ** 2) < 0.015
    assert abs(np.mean(c.cyp2c9 == "*1/*3") - 2 * (1 - p2 - p3) * p3) < 0.01
    assert abs(np.mean(c.vkorc1_1639 == "A/A") - 0.16) < 0.01
    asian = draw_cohort(5000, np.random.default_rng(4), ancestry={"asian": 1.0})
    assert np.mean(asian.vkorc1_1639 == "A/A") > 0.75
    assert abs(np.mean(c.cyp2d6 == "PM") - 0.03) < 0.006


def test_cohort_body_size_vitals_and_hb_are_realistic_and_differ_by_sex():
    c = draw_cohort(5000, np.random.default_rng(5))
    m, f = c.sex == "M", c.sex == "F"
    assert c.height_cm[m].mean() - c.height_cm[f].mean() > 9
    assert 70 < c.weight_kg.mean() < 90 and c.weight_kg.min() >= 38
    assert c.hb_g_dl[m].mean() > c.hb_g_dl[f].mean() + 0.8
    assert np.all(c.dbp_mmhg < c.sbp_mmhg - 25)
    assert 5 < c.hr_bpm.std() < 12 and 10 < c.sbp_mmhg.std() < 20
    assert np.corrcoef(c.sbp_mmhg, c.dbp_mmhg)[0, 1] > 0.3


def test_cohort_co_medication_shares_and_individual_variability():
    c = draw_cohort(4000, np.random.default_rng(6), amiodarone_share=0.2, enzyme_inducer_share=0.05)
    assert abs(c.amiodarone.mean() - 0.2) < 0.03 and abs(c.enzyme_inducer.mean() - 0.05) < 0.015
    wt = (c.cyp2c9 == "*1/*1") & (np.abs(c.age_years - 71) < 3)
    cv = np.std(np.log(c.warfarin["cl_l_h"][wt]))
    assert 0.2 < cv < 0.45  # BPV CV 0.31 plus the weight's spread
    assert c.covariates().cyp2c9.tolist() == c.cyp2c9.tolist()


def test_cohort_is_deterministic_per_seed_and_ids_start_at_first_index():
    a = draw_cohort(50, np.random.default_rng(9), first_index=100)
    b = draw_cohort(50, np.random.default_rng(9), first_index=100)
    assert a.patient_id[0] == "p000100" and np.array_equal(a.warfarin["cl_l_h"], b.warfarin["cl_l_h"])
    table = a.patients_table([f"r{i}" for i in range(50)])
    assert table.num_rows == 50 and table.column("warfarin_ec50_mg_l").to_pylist()[0] == a.warfarin["ec50_mg_l"][0]


def test_cohort_bad_options_raise_one_clear_line():
    with pytest.raises(ValueError, match="unknown ancestry|ancestry share"):
        draw_cohort(3, np.random.default_rng(0), ancestry={"martian": 1.0})
    with pytest.raises(ValueError, match="amiodarone_share"):
        draw_cohort(3, np.random.default_rng(0), amiodarone_share=1.5)
    with pytest.raises(ValueError, match="CYP2D6"):
        metoprolol.typical_params(np.array(["M"]), np.array(["XM"]))


# ---- warfarin -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cyp2c9", "vkorc1", "expected"), [
    ("*1/*1", "G/G", 1.9), ("*1/*1", "A/A", 2.8), ("*1/*3", "G/A", 3.2), ("*3/*3", "A/A", 7.3)])
def test_typical_patient_inr_at_day_42_on_5_mg_matches_hamberg(cyp2c9, vkorc1, expected):
    _, out = run(Cohort.typical([cyp2c9], [vkorc1]), 42)
    assert abs(out.inr[0, -1] - expected) <= 0.25 * expected


def test_mean_inr_in_a_drawn_cohort_orders_by_genotype():
    c = draw_cohort(800, np.random.default_rng(11))
    _, out = run(c, 42, dt_h=1.0)
    inr = out.inr[:, -1]
    wt9 = c.cyp2c9 == "*1/*1"
    by_vk = [inr[wt9 & (c.vkorc1_1639 == g)].mean() for g in ("G/G", "G/A", "A/A")]
    assert by_vk[0] < by_vk[1] < by_vk[2]
    gg = c.vkorc1_1639 != "A/A"
    by_9 = [inr[gg & (c.cyp2c9 == g)].mean() for g in ("*1/*1", "*1/*2", "*1/*3")]
    assert by_9[0] < by_9[1] < by_9[2]
    carriers = np.isin(c.cyp2c9, ["*2/*3", "*3/*3", "*2/*2"])
    assert inr[carriers].mean() > by_9[2]


@pytest.mark.parametrize(("cyp2c9", "expected_h"), [("*1/*1", 45.0), ("*3/*3", 300.0)])
def test_effective_half_life_after_stopping_matches_hamberg(cyp2c9, expected_h):
    c = Cohort.typical([cyp2c9], ["G/G"])
    days = 120 if cyp2c9 == "*3/*3" else 30
    st, _ = run(c, days)  # to steady state
    amount0 = st.war_central_mg[0] + st.war_periph_mg[0] + st.war_depot_mg[0]
    steps = int(60 * 24 / DT_H)
    st2, out = step_pkpd(st, c, np.zeros((1, steps)), np.zeros((1, steps)), np.ones((1, steps)), DT_H)
    conc0 = amount0 / (c.warfarin["v1_l"][0] + c.warfarin["v2_l"][0])
    t_half = DT_H * (1 + np.argmax(out.warfarin_conc_mg_l[0] < 0.5 * out.warfarin_conc_mg_l[0, 0]))
    assert conc0 > 0 and abs(t_half - expected_h) <= 0.3 * expected_h
    assert abs(warfarin.half_life_h(c.warfarin)[0] - expected_h) <= 0.1 * expected_h


def test_r_warfarin_is_cleared_with_its_own_half_life_whatever_the_cyp2c9_genotype():
    c = Cohort.typical(["*1/*1", "*3/*3"], ["G/G", "G/G"])
    st, _ = run(c, 20)  # R-warfarin at steady state; the last dose 6 h before the end, absorbed
    r_amount = st.war_r_central_mg.copy()
    np.testing.assert_allclose(r_amount[0], r_amount[1], rtol=1e-9)  # CYP2C9 does not clear R-warfarin
    expected_h = np.log(2.0) * c.warfarin["r_v_l"][0] / c.warfarin["r_cl_l_h"][0]
    assert 37.0 <= expected_h <= 89.0  # the label's R-warfarin half-life range
    steps = int(round(expected_h / DT_H))
    st2, _ = step_pkpd(st, c, np.zeros((2, steps)), np.zeros((2, steps)), np.ones((2, steps)), DT_H)
    np.testing.assert_allclose(st2.war_r_central_mg / r_amount, 0.5, rtol=0.03)


def test_amiodarone_raises_inr_over_one_to_three_weeks():
    c = Cohort.typical(["*1/*1"], ["G/A"])
    days, start = 63, 21
    t = DT_H * np.arange(int(days * 24 / DT_H))
    clf = warfarin.clearance_factor(np.where(t >= start * 24, t - start * 24, np.nan), np.full(t.shape, np.nan))
    _, base = run(c, days)
    _, amio = run(c, days, cl_factor=clf[None, :])
    at = lambda d: int(d * 24 / DT_H) - 1  # noqa: E731
    rise = {d: amio.inr[0, at(start + d)] - base.inr[0, at(start + d)] for d in (3, 7, 14, 21, 42)}
    assert rise[3] < 0.25 * rise[21]
    assert rise[7] > 0.1 and rise[7] < rise[14] < rise[21]
    assert amio.inr[0, at(start + 21)] > 1.15 * base.inr[0, at(start + 21)]


def test_kernel_matches_solve_ivp_within_1_percent():
    c = draw_cohort(3, np.random.default_rng(21))
    days, dt_h = 14, 1.0 / 12
    _, out = run(c, days, warfarin_mg=np.array([5.0, 7.5, 3.0]), metoprolol_mg=100.0, dt_h=dt_h)
    for p in range(3):
        w = {k: v[p] for k, v in c.warfarin.items()}
        dose = (5.0, 7.5, 3.0)[p] * warfarin.S_FRACTION * w["bioavailability"]
        k1, k2, n1 = warfarin.CHAIN1_COMPARTMENTS / w["mtt1_h"], 1.0 / w["mtt2_h"], warfarin.CHAIN1_COMPARTMENTS

        def rhs(_t, y, w=w, k1=k1, k2=k2, n1=n1):
            conc = y[1] / w["v1_l"]
            s_equivalent = conc + warfarin.R_POTENCY * y[4 + n1] / w["r_v_l"]  # R-warfarin last
            inflow = 1.0 - warfarin.inhibition(s_equivalent, w["ec50_mg_l"], w["gamma"])
            d = np.empty_like(y)
            d[0] = -w["ka_per_h"] * y[0]
            d[1] = w["ka_per_h"] * y[0] - (w["cl_l_h"] + w["q_l_h"]) * conc + w["q_l_h"] * y[2] / w["v2_l"]
            d[2] = w["q_l_h"] * conc - w["q_l_h"] * y[2] / w["v2_l"]
            d[3] = k1 * (inflow - y[3])
            d[4:3 + n1] = k1 * (y[3:2 + n1] - y[4:3 + n1])
            d[3 + n1] = k2 * (inflow - y[3 + n1])
            d[4 + n1] = (warfarin.R_FRACTION / warfarin.S_FRACTION * w["ka_per_h"] * y[0]
                         - w["r_cl_l_h"] * y[4 + n1] / w["r_v_l"])
            return d

        y = np.r_[0.0, 0.0, 0.0, np.ones(n1 + 1), 0.0]
        inr_ref = []
        for day in range(days):
            t0 = day * 24.0
            # doses at 18:00 each day (daily_doses' default): integrate to 18:00, dose, then to midnight
            sol = solve_ivp(rhs, (t0, t0 + 18.0), y, rtol=1e-9, atol=1e-12)
            y = sol.y[:, -1].copy()
            y[0] += dose
            sol = solve_ivp(rhs, (t0 + 18.0, t0 + 24.0), y, rtol=1e-9, atol=1e-12)
            y = sol.y[:, -1].copy()
            inr_ref.append(warfarin.INR_MAX_RISE * (1 - y[2 + n1] * y[3 + n1]) ** warfarin.INR_EXPONENT + 1.0)
        inr_kernel = out.inr[p, int(24 / dt_h) - 1::int(24 / dt_h)]
        np.testing.assert_allclose(inr_kernel, inr_ref, rtol=0.01)


# ---- metoprolol ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sex", ["M", "F"])
def test_metoprolol_poor_metabolisers_heart_rate_3_to_8_5_bpm_lower(sex):
    c = Cohort.typical(["*1/*1"] * 2, ["G/G"] * 2, cyp2d6=["NM", "PM"], sex=[sex] * 2)
    _, out = run(c, 7, warfarin_mg=0.0, metoprolol_mg=100.0)
    last_day = out.hr_effect_bpm[:, -int(24 / DT_H):].mean(axis=1)
    assert 3.0 <= last_day[0] - last_day[1] <= 8.5
    assert -20 < last_day[0] < -5  # a normal metaboliser's resting HR falls by a plausible 5-20 bpm


def test_metoprolol_concentration_follows_lag_and_poor_metaboliser_exposure():
    c = Cohort.typical(["*1/*1"] * 2, ["G/G"] * 2, cyp2d6=["NM", "PM"])
    _, out = run(c, 7, warfarin_mg=0.0, metoprolol_mg=100.0, dt_h=0.05)
    assert np.all(out.metoprolol_conc_mg_l[:, :9] == 0.0)  # the lag: nothing absorbed in the first 0.45 h
    day = out.metoprolol_conc_mg_l[:, -480:]
    auc_ratio = day[1].mean() / day[0].mean()
    assert 4.5 < auc_ratio < 7.0
    assert 8.5 <= 0.05 * np.argmax(day[0]) % 24 <= 13.0  # peak a few hours after the 08:00 dose


def test_step_pkpd_rejects_bad_shapes_and_negative_doses_in_one_line():
    c = Cohort.typical(["*1/*1"], ["G/G"])
    ok = np.zeros((1, 4))
    with pytest.raises(ValueError, match=r"cl_factor has shape \(1, 3\)"):
        step_pkpd(PkpdState.initial(1), c, ok, ok, np.ones((1, 3)), 1.0)
    with pytest.raises(ValueError, match="doses must be >= 0"):
        step_pkpd(PkpdState.initial(1), c, -ok - 1, ok, np.ones((1, 4)), 1.0)
    with pytest.raises(ValueError, match="dt_h"):
        step_pkpd(PkpdState.initial(1), c, ok, ok, np.ones((1, 4)), 0.0)


def test_stepping_in_chunks_equals_one_run():
    c = draw_cohort(3, np.random.default_rng(8))
    n = 96
    dw, dm = daily_doses(3, n, 0.5, 5.0), daily_doses(3, n, 0.5, 100.0, hour=8.0)
    _, whole = step_pkpd(PkpdState.initial(3), c, dw, dm, np.ones((3, n)), 0.5)
    st, a = step_pkpd(PkpdState.initial(3), c, dw[:, :37], dm[:, :37], np.ones((3, 37)), 0.5)
    _, b = step_pkpd(st, c, dw[:, 37:], dm[:, 37:], np.ones((3, n - 37)), 0.5)
    np.testing.assert_allclose(np.concatenate([a.inr, b.inr], axis=1), whole.inr, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([a.metoprolol_conc_mg_l, b.metoprolol_conc_mg_l], axis=1),
                               whole.metoprolol_conc_mg_l, rtol=1e-12)
