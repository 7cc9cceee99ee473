"""The signature knowledge base: how each fault archetype shows in the online signals.

A physics fault moves signals in known directions against the golden batch (`expect`: signal -> signed
weight; + means above normal). A sensor fault shows as a frozen or missing reading, or as one reading that
wanders away while the signals coupled to it stay normal. Why each pattern: REFERENCES.md, fault signatures.
Root causes and actions come from the twin's fault catalogue, so labels and diagnoses speak the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sources.faults import CATALOGUE


@dataclass(frozen=True)
class Signature:
    fault: str
    expect: dict[str, float] = field(default_factory=dict)
    sensor: str | None = None  # "frozen" | "missing" | "lone": a reading fault, not a process one
    checks: tuple[str, ...] = ()  # what to sample or inspect to confirm

    @property
    def root_cause(self) -> str:
        return CATALOGUE[self.fault].root_cause

    @property
    def action(self) -> str:
        return CATALOGUE[self.fault].action


SIGNATURES: dict[str, Signature] = {s.fault: s for s in (
    # extra feed volume arrives as a totaliser step far beyond the schedule
    Signature("overfeed", {"feed_ml_per_tick": 3.0}, checks=("off-line glucose", "osmolality")),
    # a scheduled bolus that never arrives; the culture then slows down
    Signature("underfeed", {"feed_ml_per_tick": -3.0, "our_mmol_l_h": -0.5}, checks=("off-line glucose",)),
    # the O2 cascade saturates: DO falls although O2 flow is up, and respiration is throttled
    Signature("do_limitation", {"do_pct": -2.0, "o2_sccm": 1.0, "our_mmol_l_h": -1.5, "cer_mmol_l_h": -1.0},
              checks=("O2 supply pressure", "sparger")),
    # CO2 valve stuck open: pH falls while CO2 flow is high and the base pump works against it
    Signature("ph_excursion", {"ph": -2.0, "co2_sccm": 2.0, "base_ml_per_tick": 1.0},
              checks=("off-line pH", "CO2 mass-flow controller")),
    # jacket failure: temperature above setpoint, metabolism speeds up
    Signature("temperature_spike", {"temp_c": 3.0, "our_mmol_l_h": 0.5, "cer_mmol_l_h": 0.5},
              checks=("jacket and chiller", "temperature probe against a reference")),
    # bacteria respire and acidify far beyond what CHO cells do, and kill them: the viable-cell capacitance falls
    # while respiration holds (a capacitance probe drifting alone would look the same but for the acid)
    Signature("contamination", {"our_mmol_l_h": 2.0, "cer_mmol_l_h": 2.0, "do_pct": -1.0, "o2_sccm": 1.0,
                                "base_ml_per_tick": 0.5, "capacitance_pf_cm": -1.0, "ph": -1.0},
              checks=("sterility sample (Gram stain, plating)",)),
    Signature("sensor_stuck", sensor="frozen", checks=("transmitter", "probe cable")),
    Signature("sensor_dropout", sensor="missing", checks=("transmitter connection", "historian link")),
    Signature("sensor_drift", sensor="lone", checks=("off-line measurement of the drifting signal",)),
)}

assert set(SIGNATURES) == set(CATALOGUE)

# signals a single drifting reading would drag along if the process itself had moved, and which way (+1: the same
# way as the reading): a controller answering a real rise of pH sparges more CO2 and doses less base; a cascade
# answering a real rise of DO backs off O2 and agitation; a warmer or denser culture respires more
COUPLED: dict[str, dict[str, int]] = {
    "do_pct": {"o2_sccm": -1, "agitation_rpm": -1, "our_mmol_l_h": -1},
    "ph": {"co2_sccm": 1, "base_ml_per_tick": -1},
    "temp_c": {"our_mmol_l_h": 1, "cer_mmol_l_h": 1},
    "capacitance_pf_cm": {"our_mmol_l_h": 1, "cer_mmol_l_h": 1},
    "our_mmol_l_h": {"cer_mmol_l_h": 1, "o2_sccm": 1},
    "cer_mmol_l_h": {"our_mmol_l_h": 1, "co2_sccm": -1},  # more CO2 made: pH falls, less CO2 sparged
}
