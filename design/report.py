"""The analysed design as a report: the study, each response's model (fit statistics, coefficients, ANOVA), the
optimum with its intervals, the confirmation runs, and the plots. HTML (self-contained: the plots inline) or
PDF (fpdf2); the plots are also written as PNG files beside it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from design import plots
from design.analysis import Analysis

FMT = "{:.4g}".format


def figures(analysis: Analysis, out_dir: str | Path, stem: str) -> list[tuple[str, Path]]:
    """The report's plots as PNGs in `out_dir`: (caption, path)."""
    study, goal = analysis.study, analysis.study.goal
    model = analysis.models[goal]
    predictors = {n: m.predict for n, m in analysis.models.items()}
    at = analysis.optimum.coded
    out = Path(out_dir)
    made = [("main effects (prediction profiler) at the optimum",
             plots.save(plots.main_effects(study, model.predict, goal, at), out / f"{stem}-main-effects.png"))]
    k = len(study.factors)
    if k >= 2:
        # the two factors with the largest effects on the goal
        size = np.zeros(k)
        for term, effect in zip(model.effects["term"], model.effects["effect"], strict=True):
            for j, col in enumerate(model.frame(at).columns):
                if term == col:
                    size[j] = abs(effect)
        a, b = sorted(np.argsort(-size)[:2])
        made.append((f"interaction of {study.factors[a].short} and {study.factors[b].short}",
                     plots.save(plots.interaction(study, model.predict, goal, a, b, at), out / f"{stem}-interaction.png")))
        made.append((f"{goal} over {study.factors[a].short} and {study.factors[b].short}, the others at the optimum",
                     plots.save(plots.contour(study, predictors, a, b, at, analysis.sheet.coded),
                                out / f"{stem}-contour.png")))
    observed = analysis.observed[goal]
    keep = np.isfinite(observed)
    made.append(("predicted vs observed", plots.save(
        plots.predicted_vs_observed(observed[keep], model.predict(analysis.sheet.coded[keep]), goal),
        out / f"{stem}-predicted-vs-observed.png")))
    return made


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(FMT(v) if isinstance(v, float) else str(v))}</td>"
                                    for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


def summary_rows(analysis: Analysis) -> pd.DataFrame:
    return pd.DataFrame([{"response": n, "model": m.order, "runs": m.n, "R2": m.r2, "R2 adj": m.r2_adj, "Q2": m.q2,
                          "RMSE": m.rmse, "lack of fit p": "n/a" if m.lack_of_fit_p is None else FMT(m.lack_of_fit_p)}
                         for n, m in analysis.models.items()])


def optimum_rows(analysis: Analysis) -> pd.DataFrame:
    o = analysis.optimum
    rows = [{"item": name, "value": value} for name, value in o.settings.items()]
    rows += [{"item": f"predicted {name}", "value": value} for name, value in o.predicted.items()]
    gi = analysis.goal_interval
    rows += [{"item": f"{analysis.study.goal} 95% CI (mean)", "value": f"{gi['mean_ci_lower']:.3g} - {gi['mean_ci_upper']:.3g}"},
             {"item": f"{analysis.study.goal} 95% PI (one run)", "value": f"{gi['obs_ci_lower']:.3g} - {gi['obs_ci_upper']:.3g}"},
             {"item": "constraints hold (predicted)", "value": str(o.feasible)}]
    return pd.DataFrame(rows)


def write_html(analysis: Analysis, path: str | Path, confirmation: dict | None = None) -> Path:
    path = Path(path)
    study = analysis.study
    made = figures(analysis, path.parent, path.stem)
    factors = pd.DataFrame([{"factor": f.name, "low": f.levels[0] if f.categorical else f.low,
                             "high": f.levels[1] if f.categorical else f.high} for f in study.factors])
    parts = [f"<h1>Design of experiments: {html.escape(study.name)}</h1>",
             f"<p>{len(analysis.sheet.coded)} runs ({html.escape(analysis.sheet.kind)}) on the twin, base scenario "
             f"<code>{html.escape(study.scenario.name)}</code>; goal: {'maximise' if study.maximize else 'minimise'} "
             f"<b>{html.escape(study.goal)}</b>; constraints: "
             f"{html.escape(', '.join(map(str, study.constraints)) or 'none')}.</p>",
             "<h2>Factors</h2>", _table(factors), "<h2>Models</h2>", _table(summary_rows(analysis)),
             "<h2>Optimum</h2>", _table(optimum_rows(analysis))]
    if confirmation:
        parts += ["<h2>Confirmation runs</h2>", _table(pd.DataFrame([confirmation]))]
    for caption, png in made:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
                     "</figcaption></figure>")
    for name, m in analysis.models.items():
        parts += [f"<h2>{html.escape(name)}: coefficients (coded units)</h2>", _table(m.coefficients),
                  f"<h3>{html.escape(name)}: ANOVA</h3>", _table(m.anova)]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;margin:6px 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study.name)}</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return path


def write_pdf(analysis: Analysis, path: str | Path, confirmation: dict | None = None) -> Path:
    from fpdf import FPDF

    path = Path(path)
    made = figures(analysis, path.parent, path.stem)
    pdf = FPDF()
    pdf.set_auto_page_break(True, 12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, f"Design of experiments: {analysis.study.name}", new_x="LMARGIN", new_y="NEXT")

    def table(title: str, frame: pd.DataFrame) -> None:
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=7)
        with pdf.table() as t:
            t.row([str(c) for c in frame.columns])
            for row in frame.itertuples(index=False):
                t.row([FMT(v) if isinstance(v, float) else str(v) for v in row])

    table("Models", summary_rows(analysis))
    table("Optimum", optimum_rows(analysis))
    if confirmation:
        table("Confirmation runs", pd.DataFrame([confirmation]))
    for caption, png in made:
        pdf.add_page()
        pdf.set_font("Helvetica", size=9)
        pdf.cell(0, 6, caption, new_x="LMARGIN", new_y="NEXT")
        pdf.image(str(png), w=170)
    for name, m in analysis.models.items():
        pdf.add_page()
        table(f"{name}: coefficients (coded units)", m.coefficients)
        table(f"{name}: ANOVA", m.anova)
    pdf.output(str(path))
    return path
