"""The scenario agent: realistic composite fault scenarios, as TOML files `biopilot simulate` runs.

Each composite follows a causal chain seen in plants (why it happens is in the chain's `story`); onsets,
durations and magnitudes are drawn from the ranges of the archetypes' built-in scenarios, so they stay
realistic. Next to each `<name>.toml` goes `<name>.labels.json`: the labels the run must produce. They grow the
labelled suite of `biopilot bench detectors` / `bench agents`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sources.scenarios import ARCHETYPE_SCENARIOS, FaultSpec, load_scenario


@dataclass(frozen=True)
class Chain:
    name: str
    story: str
    steps: tuple[tuple[str, float], ...]  # (fault, hours after the previous onset); the first is the lead fault


CHAINS = (
    Chain("overfeed_then_do_limitation", "a double feed dispense boosts growth and O2 demand; a fouling sparger "
          "then cannot keep up", (("overfeed", 0.0), ("do_limitation", 24.0))),
    Chain("pump_omission_then_catch_up", "the feed pump stops; the missed feeds are then dosed by hand twice",
          (("underfeed", 0.0), ("overfeed", 80.0))),
    Chain("maintenance_breaks_sterility", "a probe is serviced (its reading drops out) and the port work lets "
          "bacteria in", (("sensor_dropout", 0.0), ("contamination", 30.0))),
    Chain("co2_valve_then_frozen_ph", "the CO2 valve sticks open; during the intervention the pH transmitter "
          "freezes", (("ph_excursion", 0.0), ("sensor_stuck", 14.0))),
    Chain("jacket_failure_then_do_limitation", "a jacket failure heats the culture; the O2 supply then fails "
          "the next day", (("temperature_spike", 0.0), ("do_limitation", 30.0))),
)
SENSOR_FOR = {"sensor_dropout": "capacitance_pf_cm", "sensor_stuck": "ph", "sensor_drift": "ph"}


def _draw(value: float | tuple[float, float], rng: np.random.Generator) -> float:
    return float(value) if isinstance(value, int | float) else float(rng.uniform(*value))


def propose(n: int = 3, seed: int = 0) -> list[tuple[str, str, list[dict]]]:
    """`n` composites as (name, TOML text, expected labels)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        chain = CHAINS[k % len(CHAINS)]
        onset_h = float(rng.uniform(3.0, 7.0)) * 24
        faults, labels = [], []
        for fault, after_h in chain.steps:
            onset_h += after_h
            spec: FaultSpec = load_scenario(ARCHETYPE_SCENARIOS[fault]).faults[0]
            duration, magnitude = round(_draw(spec.duration_h, rng), 1), round(_draw(spec.magnitude, rng), 3)
            entry = {"fault": fault, "start_day": round(onset_h / 24, 3), "duration_h": duration,
                     "magnitude": magnitude}
            if fault in SENSOR_FOR:
                entry["signal"] = SENSOR_FOR[fault]
            faults.append(entry)
            labels.append(entry)
        name = f"{chain.name}_{seed}_{k}"
        lines = [f'description = "composite: {chain.story}"', ""]
        for f in faults:
            lines.append("[[faults]]")
            lines += [f"{key} = {json.dumps(v)}" for key, v in f.items()]
            lines.append("")
        out.append((name, "\n".join(lines), labels))
    return out


def write(n: int, out_dir: Path, seed: int = 0) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text, labels in propose(n, seed):
        path = out_dir / f"{name}.toml"
        path.write_text(text)
        load_scenario(path)  # never hand out a scenario `biopilot simulate` would reject
        (out_dir / f"{name}.labels.json").write_text(json.dumps(labels, indent=2) + "\n")
        paths.append(path)
    return paths
