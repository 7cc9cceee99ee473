"""`biopilot design`: design of experiments on the bioreactor twin (docs/DESIGN-OF-EXPERIMENTS.md).

`propose` writes the run sheet a lab executes; `run` executes it on the twin fleet, fits the response surfaces,
finds the constrained optimum and runs the confirmation runs; `analyse` does the same on a lab's own results;
`sequential` spends a run budget batch by batch with Bayesian optimisation.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import IMAGE_SUFFIXES, check_output, command, group, positive, progress, seed

if TYPE_CHECKING:
    import numpy as np

    from design.analysis import Analysis
    from design.designs import RunSheet
    from design.study import Study

STUDY_HELP = """\
a study is a built-in (titer) or a TOML file, or flags:
  --factor NAME=LOW:HIGH    any scenario setting by its dotted path: feed.percent_of_volume, feed.start_day,
                            process.do_setpoint_pct, process.ph_setpoint, process.temp_shift_day,
                            process.temp_shift_c, process.seed_vcd_e6_per_ml, kinetics.qp_pg_cell_day, ...
  --factor NAME=A,B         a two-level categorical factor: feed.mode=bolus,continuous
  --response R              final_titer, peak_vcd, ivcd, final_hcp, peak_lactate, peak_ammonia,
                            peak_osmolality, final_viability, or COLUMN:AGG / NAME=COLUMN:AGG over any assay
                            column (AGG: last, max, min, mean, integral)
  --constraint 'R<=LIMIT'   e.g. 'peak_lactate<=3' 'peak_osmolality<=450'"""


def study_options(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the study table's layout
    parser.description = textwrap.fill(" ".join((parser.description or "").split()), 110)
    parser.epilog = STUDY_HELP
    parser.add_argument("--study", default=None, help="a built-in study or a TOML file (see below)")
    parser.add_argument("--factor", action="append", default=[], metavar="NAME=LOW:HIGH",
                        help="a factor (repeat); instead of --study")
    parser.add_argument("--response", action="append", default=[], metavar="R",
                        help="a response (repeat; default final_titer)")
    parser.add_argument("--constraint", action="append", default=[], metavar="R<=LIMIT", help="(repeat)")
    parser.add_argument("--goal", default=None, help="the response to optimise (default: the first)")
    parser.add_argument("--minimize", action="store_true", help="minimise the goal instead of maximising it")
    parser.add_argument("--scenario", default="normal", help="the base scenario of a flag-built study")


def study_of(args: argparse.Namespace) -> Study:
    from design.study import StudyError, build_study, load_study

    with user_errors(StudyError):
        if args.study:
            if args.factor:
                raise UsageError("give --study or --factor, not both")
            return load_study(args.study)
        if not args.factor:
            raise UsageError("give --study (a built-in: titer, or a TOML file) or at least one --factor")
        return build_study("cli", args.factor, args.response, args.constraint, args.goal, not args.minimize,
                           args.scenario)


def _json_default(value: object) -> object:
    return float(value) if hasattr(value, "__float__") else str(value)


# ---- propose ------------------------------------------------------------------------------------------------
def add_propose(designs: argparse._SubParsersAction) -> None:
    p = command(designs, "propose", cmd_design_propose, "write the run sheet (CSV) a lab executes")
    study_options(p)
    p.add_argument("--design", default="ccf",
                   help="full, fractional (two-level factorials), box-behnken, ccd (central composite, rotatable), "
                        "ccf (face-centred), cci (inscribed), lhs (Latin hypercube), sobol (default ccf)")
    p.add_argument("--centre-points", type=int, default=3, help="centre runs added (default 3)")
    p.add_argument("--replicates", type=positive("--replicates", int), default=1,
                   help="times each design point is run (default 1)")
    p.add_argument("--runs", type=positive("--runs", int), default=None, help="size of an lhs or sobol design")
    p.add_argument("--resolution", type=int, choices=(3, 4, 5), default=4, help="of a fractional factorial")
    p.add_argument("--no-randomise", action="store_true", help="keep the standard order")
    p.add_argument("--seed", type=seed, default=0, help="draws the run order and each run's twin seed")
    p.add_argument("--out", required=True, help="the run sheet (.csv)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_design_propose(args: argparse.Namespace) -> int:
    """Write the run sheet of a design on the study's factors: one row per run in a randomised run order, with
    its standard order, point type (factorial, axial, edge, centre, space-filling), the settings in real units
    and the twin's seed for that run."""
    from design.designs import propose
    from design.study import StudyError

    if args.centre_points < 0:
        raise UsageError("--centre-points must be >= 0")
    check_output(args.out, "--out")
    study = study_of(args)
    with user_errors(StudyError):
        sheet = propose(study, args.design, args.centre_points, args.replicates, args.runs, args.resolution,
                        args.seed, not args.no_randomise)
    try:
        sheet.write_csv(args.out)
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror}") from None
    counts = {t: sheet.point_type.count(t) for t in dict.fromkeys(sheet.point_type)}
    if args.json:
        print(json.dumps({"sheet": args.out, "design": args.design, "runs": len(sheet.coded), "points": counts,
                          "factors": [f.name for f in study.factors]}))
    else:
        print(f"{args.out}: {len(sheet.coded)} runs ({', '.join(f'{n} {t}' for t, n in counts.items())}) "
              f"of a {args.design} design on {', '.join(f.name for f in study.factors)}")
    return 0


# ---- run / analyse ------------------------------------------------------------------------------------------
def analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sheet", required=True, help="the run sheet (from `design propose`)")
    p.add_argument("--model", choices=("linear", "interaction", "quadratic"), default=None,
                   help="the response-surface model (default: the richest the runs support)")
    p.add_argument("--confirm", type=int, default=3, help="confirmation runs at the optimum (default 3; 0: none)")
    p.add_argument("--report", default=None, help="write the report: .html or .pdf (plots beside it as PNGs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_run(designs: argparse._SubParsersAction) -> None:
    p = command(designs, "run", cmd_design_run, "run a sheet on the twin fleet, fit, optimise, confirm")
    study_options(p)
    analysis_options(p)
    p.add_argument("--results", default=None, help="write the sheet with each run's responses (.csv)")


def add_analyse(designs: argparse._SubParsersAction) -> None:
    p = command(designs, "analyse", cmd_design_analyse, "analyse a lab's results of a run sheet")
    study_options(p)
    analysis_options(p)


def _run_on_twin(sheet: RunSheet, args: argparse.Namespace) -> dict[str, np.ndarray]:
    from design.study import StudyError
    from design.twin import run_settings

    # every row before the first run: an edited sheet can hold a setting the twin refuses (pH 9, NaN)
    for i, settings in enumerate(sheet.settings):
        try:
            sheet.study.scenario_at(settings)
        except StudyError as err:
            raise UsageError(f"{args.sheet}: row {i + 1}: {err}") from None
    say = progress(args)
    say(f"running {len(sheet.coded)} runs on the twin fleet")
    return run_settings(sheet.study, sheet.settings, sheet.seeds, progress=lambda n: say(f"  {n} runs done"))


def cmd_design_run(args: argparse.Namespace) -> int:
    """Execute the run sheet on the twin fleet (each run its own reactor and seed: run-to-run variability, assay
    errors), fit a response-surface model per response (effects, interactions, ANOVA, R², Q², lack of fit),
    find the goal's optimum under the constraints, and run the confirmation runs there."""
    _check_analysis_options(args)
    check_output(args.results, "--results", (".csv",))
    study = study_of(args)
    sheet = _read_sheet(study, args.sheet)
    observed = _run_on_twin(sheet, args)
    if args.results:
        _write_results(sheet, observed, args.results)
    return _analyse_and_report(sheet, observed, args, run_confirmation=True)


def cmd_design_analyse(args: argparse.Namespace) -> int:
    """Analyse the results of a run sheet a lab executed: the sheet with a column per response (named as the
    study names them: final_titer, peak_lactate, ...). Confirmation runs are proposed, not run."""
    import numpy as np

    from biopilot.cli.options import read_table

    _check_analysis_options(args)
    study = study_of(args)
    sheet = _read_sheet(study, args.sheet)
    table = read_table(args.sheet)
    observed = {}
    for r in study.responses:
        if r.name not in table.column_names:
            raise UsageError(f"{args.sheet}: no column {r.name!r} (one column per response of the study)")
        try:
            observed[r.name] = np.array([np.nan if v in (None, "") else float(v) for v in table[r.name].to_pylist()])
        except ValueError:
            raise UsageError(f"{args.sheet}: column {r.name} must hold numbers") from None
        infinite = np.flatnonzero(np.isinf(observed[r.name]))
        if infinite.size:  # else left out of the fit as if it were missing, without a word
            raise UsageError(f"{args.sheet}: row {infinite[0] + 1}: {r.name} is infinite; leave a missing "
                             "result empty")
    return _analyse_and_report(sheet, observed, args, run_confirmation=False)


def _check_analysis_options(args: argparse.Namespace) -> None:
    """--confirm and --report, before the sheet's runs on the twin (not after them)."""
    if args.confirm < 0:
        raise UsageError("--confirm must be >= 0")
    check_output(args.report, "--report", (".html", ".pdf"))


def _read_sheet(study: Study, path: str) -> RunSheet:
    from pathlib import Path

    from design.designs import read_sheet
    from design.study import StudyError

    if not Path(path).is_file():
        raise UsageError(f"cannot read {path}: no such file")
    with user_errors(StudyError):
        return read_sheet(study, path)


def _write_results(sheet: RunSheet, observed: dict[str, np.ndarray], path: str) -> None:
    import csv
    from pathlib import Path

    rows = sheet.rows()
    for i, row in enumerate(rows):
        row.update({name: round(float(v[i]), 6) for name, v in observed.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as the report and the plots do
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _analyse_and_report(sheet: RunSheet, observed: dict[str, np.ndarray], args: argparse.Namespace,
                        run_confirmation: bool) -> int:
    from design.analysis import analyse, confirmation_verdict
    from design.report import write_html, write_pdf
    from design.study import StudyError

    with user_errors(StudyError):
        analysis = analyse(sheet, observed, args.model, max(args.confirm, 1))
    verdict = None
    if run_confirmation and args.confirm:
        confirm = analysis.confirmation
        got = _run_on_twin(confirm, args)
        verdict = confirmation_verdict(analysis, got[sheet.study.goal])
    if args.report:
        (write_pdf if args.report.endswith(".pdf") else write_html)(analysis, args.report, verdict)
    result = as_json(analysis, verdict)
    from core.codec import json_safe

    print(json.dumps(json_safe(result), default=_json_default) if args.json else format_report(analysis, verdict))
    if args.report and not args.json:
        print(f"report: {args.report}", file=sys.stderr)
    return 0


def as_json(analysis: Analysis, confirmation: dict | None) -> dict:
    study = analysis.study
    return {
        "study": study.name, "runs": len(analysis.sheet.coded), "goal": study.goal, "maximize": study.maximize,
        "constraints": [str(c) for c in study.constraints],
        "models": {n: {"order": m.order, "r2": m.r2, "r2_adj": m.r2_adj, "q2": m.q2, "rmse": m.rmse,
                       "lack_of_fit_p": m.lack_of_fit_p,
                       "effects": dict(zip(m.effects["term"], m.effects["effect"], strict=True)),
                       "p_values": dict(zip(m.effects["term"], m.effects["p"], strict=True))}
                   for n, m in analysis.models.items()},
        "optimum": {"settings": analysis.optimum.settings, "predicted": analysis.optimum.predicted,
                    "feasible": analysis.optimum.feasible, "goal_interval": analysis.goal_interval},
        "confirmation_sheet": analysis.confirmation.rows(),
        "confirmation": confirmation,
    }


def format_report(analysis: Analysis, confirmation: dict | None) -> str:
    from design.report import optimum_rows, summary_rows

    goal = analysis.study.goal
    lines = [summary_rows(analysis).to_string(index=False, float_format="{:.3f}".format), "",
             f"effects on {goal} (coded: low to high end):",
             analysis.models[goal].effects.to_string(index=False, float_format="{:.4g}".format), "",
             "optimum:", optimum_rows(analysis).to_string(index=False, header=False)]
    if confirmation:
        lines += ["", f"confirmation: {confirmation['runs']} runs, mean {confirmation['observed_mean']:.4g} "
                      f"(expected {confirmation['expected_lo']:.4g} - {confirmation['expected_hi']:.4g}): "
                      + ("confirmed" if confirmation["confirmed"] else "NOT confirmed")]
    return "\n".join(lines)


# ---- sequential ---------------------------------------------------------------------------------------------
def add_sequential(designs: argparse._SubParsersAction) -> None:
    p = command(designs, "sequential", cmd_design_sequential,
                "Bayesian optimisation on the twin: a run budget spent batch by batch")
    study_options(p)
    p.add_argument("--budget", type=positive("--budget", int), default=40, help="runs in all (default 40)")
    p.add_argument("--batch", type=positive("--batch", int), default=8, help="runs per batch (default 8)")
    p.add_argument("--initial", type=positive("--initial", int), default=None,
                   help="space-filling runs first (default max(4 x factors, batch))")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--results", default=None, help="write every run (batch, settings, responses) as .csv")
    p.add_argument("--png", default=None, help="plot the runs and the best so far")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_design_sequential(args: argparse.Namespace) -> int:
    """Run a space-filling start on the twin, then batch after batch chosen by Gaussian-process surrogates
    (expected improvement of the goal times the probability that the constraints hold) until the budget is
    spent; prints the recommended settings (the surrogates' constrained optimum) and the runs' best."""
    from design.sequential import run_sequential
    from design.study import StudyError
    from design.twin import run_settings

    check_output(args.results, "--results", (".csv",))
    check_output(args.png, "--png", IMAGE_SUFFIXES)
    study = study_of(args)
    say = progress(args)

    def evaluate(coded: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        settings = [{f.name: f.decode(v) for f, v in zip(study.factors, row, strict=True)} for row in coded]
        return run_settings(study, settings, seeds)

    with user_errors(StudyError):
        res = run_sequential(study, evaluate, args.budget, args.batch, args.initial, args.seed,
                             progress=lambda n, best: say(f"{n} runs: best predicted feasible {study.goal} "
                                                          f"{best:.4g}"))
    if args.results:
        import csv
        from pathlib import Path

        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "batch", *(x.name for x in study.factors), *res.responses])
            for i, row in enumerate(res.coded):
                writer.writerow([i + 1, int(res.batch_of_run[i]), *(x.decode(v) for x, v in zip(study.factors, row,
                                                                                              strict=True)),
                                 *(round(float(v[i]), 6) for v in res.responses.values())])
    if args.png:
        from design import plots

        plots.save(plots.progress(res.responses[study.goal], res.batch_of_run, study.goal, study.maximize), args.png)
    out = {"study": study.name, "runs": len(res.coded), "batches": int(res.batch_of_run.max()),
           "goal": study.goal, "optimum": {"settings": res.optimum.settings, "predicted": res.optimum.predicted,
                                           "feasible": res.optimum.feasible}}
    if args.json:
        from core.codec import json_safe

        print(json.dumps(json_safe(out), default=_json_default))
    else:
        print(f"{out['runs']} runs in {out['batches']} batches after the space-filling start; recommended:")
        for name, value in {**res.optimum.settings, **res.optimum.predicted}.items():
            print(f"  {name:32s} {value:.4g}" if isinstance(value, float) else f"  {name:32s} {value}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    designs = group(subparsers, "design", help="design of experiments on the twin",
                    description="Design of experiments on the bioreactor twin: propose a run sheet, run it on the "
                                "twin fleet and analyse it, or optimise sequentially.", metavar="STEP")
    for add in (add_propose, add_run, add_analyse, add_sequential):
        add(designs)
