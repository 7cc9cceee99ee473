"""Design of experiments and counterfactual what-if on the bioreactor twin (docs/DESIGN-OF-EXPERIMENTS.md).

The API the CLI, the benchmark and the agents use (kept stable; each module's docstring has the details):

    study = load_study("titer")                    # design.study; or build_study("s", ["feed.percent_of_volume=2:6"],
                                                   #   ["final_titer"], ["peak_lactate<=3"], "final_titer")
    sheet = propose(study, "ccf", centre_points=3)  # design.designs: a RunSheet (.settings, .seeds, .rows(), .write_csv)
    observed = run_settings(study, sheet.settings, sheet.seeds)  # design.twin: response -> one value per run
    result = analyse(sheet, observed)              # design.analysis: .models (design.model), .optimum, .confirmation
    best = run_sequential(study, evaluate, budget=40, batch=8)  # design.sequential: Bayesian optimisation
    res = what_if(load_run(lake, run_id), Change(without_fault="overfeed"))  # design.whatif: .as_json(), .sentence()
"""
