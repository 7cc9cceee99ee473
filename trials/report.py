"""A trial's report: the design, a CONSORT-like flow, the endpoint tables, and one figure (the primary endpoint per
arm; the lab INRs over time against the 2-3 range, or the resting heart rate against its target; Kaplan-Meier
curves of the time to the first therapeutic INR and to the first INR >= 4, or to bradycardia). Rendered as HTML or PDF by the run report's renderer (`agents.report.render`)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from agents.figures import save_figure
from agents.report import render  # noqa: E402
from trials.run import Trial  # noqa: E402


def _num(v: object, spec: str = "{:.1f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) else spec.format(v)


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def endpoint_lines(r: dict) -> list[str]:
    """Markdown tables of every endpoint: per arm, then each arm against the control."""
    control = r["arms"][0]
    lines = []
    for res in r["endpoints"].values():
        lines += [f"### {res['label']}{' (primary)' if res.get('primary') else ''}", ""]
        first = next(iter(res["per_arm"].values()))
        if "mean" in first:
            lines += ["| arm | n | mean ± SD |", "|---|---|---|"]
            lines += [f"| {a} | {s['n']} | {_num(s['mean'])} ± {_num(s['sd'])} |" for a, s in res["per_arm"].items()]
        elif "share" in first:
            lines += ["| arm | n | share |", "|---|---|---|"]
            lines += [f"| {a} | {s['n']} | {_num(100 * s['share'])} % |" for a, s in res["per_arm"].items()]
        else:
            lines += ["| arm | events | median (days) |", "|---|---|---|"]
            lines += [f"| {a} | {s['events']} | {_num(s['median_days'])} |" for a, s in res["per_arm"].items()]
        lines += ["", f"| vs {control} | estimate | 95 % CI | p | test |", "|---|---|---|---|---|"]
        for a, c in res["vs_control"].items():
            est = c.get("difference", c.get("hazard_ratio"))
            scale = 100.0 if "share" in first else 1.0
            what = "HR " if "hazard_ratio" in c else ""
            lines.append(f"| {a} | {what}{_num(est * scale, '{:+.2f}' if not what else '{:.2f}')} | "
                         f"{_num(c['ci_low'] * scale, '{:.2f}')} to {_num(c['ci_high'] * scale, '{:.2f}')} | "
                         f"{_p(c['p_value'])} | {c['test']} |")
        lines.append("")
    return lines


def text_summary(r: dict) -> str:
    """What `biopilot trial run` prints: per arm n, mean ± SD of the primary endpoint, each comparison."""
    primary = r["endpoints"][r["primary"]]
    out = [f"{r['trial_id']}: {', '.join(r['arms'])}; {r['flow']['randomised']} randomised "
           f"({r['flow']['assessed']} assessed); primary endpoint: {primary['label']}"]
    for a, s in primary["per_arm"].items():
        out.append(f"  {a:<10} n {s['n']:4d}  {_num(s['mean'], '{:6.1f}')} ± {_num(s['sd'], '{:5.1f}')}")
    for a, c in primary["vs_control"].items():
        out.append(f"  {a} - {r['arms'][0]}: {_num(c['difference'], '{:+.2f}')} (95 % CI "
                   f"{_num(c['ci_low'], '{:+.2f}')} to {_num(c['ci_high'], '{:+.2f}')}), p {_p(c['p_value'])} "
                   f"({c['test']})")
    for key, res in r["endpoints"].items():
        if key == r["primary"]:
            continue
        for a, c in res["vs_control"].items():
            kind = "HR" if "hazard_ratio" in c else "difference"
            share = "share" in next(iter(res["per_arm"].values()))
            scale = 100.0 if share else 1.0  # a proportion, shown in percentage points
            est, lo, hi = (v * scale for v in (c.get("difference", c.get("hazard_ratio")), c["ci_low"], c["ci_high"]))
            out.append(f"  {res['label']}: {a} vs {r['arms'][0]} {kind} {_num(est, '{:.3g}')} "
                       f"({_num(lo, '{:.3g}')} to {_num(hi, '{:.3g}')}), p {_p(c['p_value'])}")
    pro = r.get("procova")
    if pro:
        out.append(f"  PROCOVA: rho {pro['rho']:.3f}, 1 - rho^2 {pro['expected_variance_ratio']:.3f}")
        for a, c in pro["comparisons"].items():
            adj = c["adjusted"]
            out.append(f"    {a}: {adj['difference']:+.2f} points (95 % CI {adj['ci_low']:+.2f} to "
                       f"{adj['ci_high']:+.2f}), p {_p(adj['p_value'])}; variance ratio "
                       f"{c['observed_variance_ratio']:.3f}; CI width {c['ci_width_unadjusted']:.2f} -> "
                       f"{c['ci_width_adjusted']:.2f}")
    if "twin" in r:
        out.append(f"  twin arm: {r['twin']['refits']} refits, {r['twin']['refit_s_mean']:.3f} s each")
    if min(s["n"] for s in primary["per_arm"].values()) < 2:
        out.append("  n/a: an arm has fewer than 2 assessed patients, too few for a spread or an interval; "
                   "run more patients per arm")
    return "\n".join(out)


def markdown(trial: Trial, image: str) -> str:
    r, d = trial.results, trial.design
    f = r["flow"]
    schedule = (f"| INR draws (day) | {', '.join(f'{x:g}' for x in d.lab_days)} |" if d.drug == "warfarin" else
                f"| resting HR | each morning at 08:00; target {d.endpoints.hr_target_bpm[0]:g}-"
                f"{d.endpoints.hr_target_bpm[1]:g} bpm; bradycardia < {d.endpoints.bradycardia_bpm:g} bpm at the final "
                f"visit, first < {d.endpoints.severe_bradycardia_bpm:g} bpm |")
    lines = [f"# Trial report: {trial.trial_id}", "", text_summary(r).splitlines()[0], "", "## Design", "",
             "| item | value |", "|---|---|", f"| design | {d.name} |", f"| description | {d.description} |",
             f"| drug | {d.drug} |",
             f"| reference | {d.reference or 'n/a'} |",
             f"| arms | {', '.join(f'{a.name} ({a.protocol})' for a in d.arms)} |",
             f"| randomisation | {':'.join(map(str, d.randomisation.ratio))}, permuted blocks of "
             f"{d.randomisation.block_size}, strata: {', '.join(d.randomisation.stratify_by) or 'none'} |",
             f"| duration | {d.duration_days} days |", schedule,
             f"| adherence | {d.adherence:.0%} of doses taken |", f"| dropouts | {d.dropout_share:.0%} by the end |",
             f"| seed | {trial.seed} |", "", "## Flow (CONSORT)", "",
             f"Assessed for eligibility: {f['assessed']}; excluded: "
             f"{sum(f['excluded'].values())} ({'; '.join(f'{k}: {v}' for k, v in f['excluded'].items()) or 'none'}); "
             f"randomised: {f['randomised']}.", "",
             "| arm | allocated | lost to follow-up | withdrawn (major bleeding) | completed | analysed (TTR) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {s['allocated']} | {s['lost_to_follow_up']} | {s['withdrawn_major_bleeding']} | "
              f"{s['completed']} | {s['analysed']} |" for a, s in f["arms"].items()]
    method = ("TTR: Rosendaal linear interpolation between consecutive lab INRs (from a pre-treatment INR at day "
              "0), INR 2-3." if d.drug == "warfarin" else "Heart-rate reduction: the awake baseline minus the mean "
              "morning HR of the last week on study; control: the share of mornings from day 7 in the target range.")
    lines += ["", "## Endpoints", "", method + " Continuous endpoints: difference in means by OLS (t-test); "
              "proportions: risk difference, z-test; time to event: Kaplan-Meier, Cox hazard ratio, log-rank p.", "",
              *endpoint_lines(r)]
    if "procova" in r:
        p = r["procova"]
        lines += ["## PROCOVA", "", f"Prognostic model trained on {p['historical_patients']} simulated historical "
                  f"controls (R² on held-out patients {p['model_r2_held_out']:.3f}); rho {p['rho']:.3f}, expected variance "
                  f"ratio 1 - rho² = {p['expected_variance_ratio']:.3f}.", "",
                  "| arm | unadjusted | PROCOVA | variance ratio | CI width | sample size saved |",
                  "|---|---|---|---|---|---|"]
        for a, c in p["comparisons"].items():
            u, j = c["unadjusted"], c["adjusted"]
            lines.append(f"| {a} | {u['difference']:+.2f} (p {_p(u['p_value'])}) | {j['difference']:+.2f} "
                         f"(p {_p(j['p_value'])}) | {c['observed_variance_ratio']:.3f} | {c['ci_width_unadjusted']:.2f}"
                         f" → {c['ci_width_adjusted']:.2f} | {c['sample_size_saved_share']:.1%} |")
        lines.append("")
    lines += ["## Figures", "", f"![TTR, INR over time and Kaplan-Meier curves]({image})", ""]
    return "\n".join(lines)


def plot(trial: Trial, out: Path) -> Path:
    r, c, ep = trial.results, trial.course, trial.endpoints
    names = trial.arm_names
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    warfarin = trial.design.drug == "warfarin"
    ax = axes[0, 0]
    y = ep.primary
    ax.boxplot([y[(c.arm == a) & ~np.isnan(y)] for a in range(len(names))], tick_labels=names)
    ax.set_ylabel(r["endpoints"][r["primary"]]["label"], fontsize=8)
    ax.set_title("primary endpoint per patient", fontsize=9)
    ax = axes[0, 1]
    band, t, values, what = ((trial.design.endpoints.ttr_range, c.lab_day, c.lab_inr, "lab INR") if warfarin else
                             (trial.design.endpoints.hr_target_bpm, c.day, c.hr_bpm, "resting HR (bpm)"))
    ax.axhspan(*band, color="tab:green", alpha=0.15, lw=0)
    for a, name in enumerate(names):
        v = values[c.arm == a]
        ax.plot(t, np.nanmedian(v, axis=0), "o-", ms=3, label=f"{name} median")
        ax.fill_between(t, *np.nanpercentile(v, [25, 75], axis=0), alpha=0.15)
    ax.set_xlabel("day")
    ax.set_ylabel(what)
    ax.set_title(f"{what}: median and interquartile range", fontsize=9)
    ax.legend(fontsize=7)
    keys = ["time_to_therapeutic", "over_anticoagulation"] if warfarin else ["bradycardia"]
    if len(keys) < 2:
        axes[1, 1].axis("off")
    for ax, key in zip(axes[1], keys, strict=False):
        res = r["endpoints"][key]
        for name, (t, s) in res["curves"].items():
            ax.step(t, s, where="post", label=name)
        ax.set_xlabel("day")
        ax.set_ylabel("share without the event")
        ax.set_title(f"Kaplan-Meier: {res['label']}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    return save_figure(fig, out, dpi=100)


def write(trial: Trial, out: Path) -> Path:
    """The report as `out` (.html or .pdf); its figure beside it as a PNG of the same stem."""
    png = plot(trial, out.with_suffix(".png"))
    return render(markdown(trial, png.name), png, out.suffix.lstrip("."), out)
