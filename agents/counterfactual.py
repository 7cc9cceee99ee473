"""What the troubleshooting agent's named cause cost a stored run, from `biopilot whatif` (`design.whatif`): the
run re-simulated without that fault from its onset, with the same random streams, beside itself: "without the
overfeed, final titer would have been 3.12 g/L instead of 2.59 g/L".

Computed on demand where a stored run is read whole: the run report (`biopilot report`, the dashboard's reports)
and the chat (`biopilot chat`, the dashboard's). Not on the workers' live path: a what-if re-simulates the whole
run (a few seconds for a 14-day run), and the final titer it quotes is the run's end, which a live run has not
reached. Only a fault the run carries a label for is removed (the twin knows its window), and only where the
re-simulated run is the stored one, complete (every assay to the run's end, the same values), so that "instead
of" quotes the run's own final titer; a cause the agent names without a label, a run still going, or a run the twin
cannot rebuild (a patient's) gets no sentence.

>>> from agents.counterfactual import top_faults
>>> top_faults([{"abstained": False, "hypotheses": [{"fault": "overfeed"}]},
...             {"abstained": True, "hypotheses": [{"fault": "sensor_drift"}]}])
['overfeed']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from design.whatif import Change, WhatIfError, load_run, what_if


def counterfactuals(lake: str | Path, run_id: str, faults: Iterable[str]) -> dict[str, dict]:
    """fault -> `biopilot whatif --run RUN --without-fault FAULT --json`'s object, for each of `faults` the run
    carries a label for, where the re-simulated run reproduces the complete stored one."""
    try:
        run = load_run(lake, run_id)
    except WhatIfError:
        return {}
    labelled = {f["fault"] for f in run.faults}
    out = {}
    for fault in dict.fromkeys(faults):
        if fault in labelled:
            try:
                res = what_if(run, Change(without_fault=fault))
            except WhatIfError:  # a run whose scenario the twin can no longer stack: no sentence, not no report
                continue
            if res.reproduced["match"] and res.reproduced["assays_compared"] == len(res.days["actual"]):
                out[fault] = res.as_json()
    return out


def top_faults(findings: list[dict]) -> list[str]:
    """The cause each finding (`IncidentFinding.as_dict()`) names, where it names one."""
    return [f["hypotheses"][0]["fault"] for f in findings if not f["abstained"] and f["hypotheses"]]


def with_counterfactuals(lake: str | Path, run_id: str, findings: list[dict]) -> list[dict]:
    """The findings, each that names a labelled fault with `counterfactual`: that fault's what-if object."""
    found = counterfactuals(lake, run_id, top_faults(findings))
    out = []
    for f in findings:
        top = top_faults([f])
        out.append(f | {"counterfactual": found[top[0]]} if top and top[0] in found else f)
    return out
