"""The fault catalogue: what each archetype moves, why it happens and what an operator should do.

Used for the `labels` rows the twin writes and, later, by the troubleshooting agent's signature knowledge base.
"""

from __future__ import annotations

from dataclasses import dataclass

from sources.reactor import FAULT_NAMES


@dataclass(frozen=True)
class FaultInfo:
    name: str
    layer: str  # "physics" acts on the process; "measurement" only on a reported reading
    signals: tuple[str, ...]  # online signals (and assays) the fault moves
    root_cause: str
    action: str
    magnitude_unit: str


CATALOGUE: dict[str, FaultInfo] = {
    f.name: f
    for f in (
        FaultInfo("overfeed", "physics", ("feed_ml", "volume_l", "glucose_g_l", "osmolality_mosm_kg", "lactate_g_l"),
                  "feed pump over-delivered (uncontrolled pump or double dispense)",
                  "stop the feed pump, check the pump calibration and the feed schedule, pull an off-line "
                  "glucose and osmolality sample", "extra daily feed volumes delivered in the window"),
        FaultInfo("underfeed", "physics", ("feed_ml", "our_mmol_l_h", "glucose_g_l", "viability_pct"),
                  "feed pump omission or blocked feed line: scheduled feeds not delivered",
                  "check the feed line and pump, deliver the missed feed, pull an off-line glucose sample",
                  "fraction of scheduled feed not delivered"),
        FaultInfo("do_limitation", "physics", ("do_pct", "o2_sccm", "our_mmol_l_h", "lactate_g_l"),
                  "oxygen transfer limited: sparger fouling or O2 supply loss",
                  "check the O2 supply and the sparger, raise agitation within shear limits",
                  "fraction of O2 supply lost"),
        FaultInfo("ph_excursion", "physics", ("ph", "co2_sccm", "base_ml"),
                  "CO2 mass-flow valve stuck open: dissolved CO2 acidifies the broth",
                  "close the CO2 valve manually, check the mass-flow controller, verify pH off-line",
                  "stuck opening as a fraction of the CO2 range"),
        FaultInfo("temperature_spike", "physics", ("temp_c", "our_mmol_l_h", "viability_pct"),
                  "jacket temperature control failure",
                  "switch the jacket to manual cooling, check the chiller and the temperature loop",
                  "degrees C above setpoint"),
        FaultInfo("sensor_drift", "measurement", (),
                  "probe drift (fouling or ageing): the reading diverges from related signals",
                  "compare with an off-line measurement, recalibrate or replace the probe", "units per day"),
        FaultInfo("sensor_stuck", "measurement", (),
                  "frozen reading: transmitter or probe failure", "check the transmitter and the probe cable",
                  "unused"),
        FaultInfo("sensor_dropout", "measurement", (),
                  "reading missing: communication loss to the transmitter",
                  "check the transmitter connection and the historian link", "unused"),
        FaultInfo("contamination", "physics",
                  ("our_mmol_l_h", "cer_mmol_l_h", "do_pct", "ph", "base_ml", "glucose_g_l", "viability_pct"),
                  "bacterial contamination: glucose consumed fast, respiration climbs, acids produced",
                  "take a sterility sample (Gram stain, plating), isolate the vessel, plan termination",
                  "initial contaminant load (x 1e3 cells/mL)"),
    )
}

assert tuple(CATALOGUE) == FAULT_NAMES
SENSOR_FAULTS = tuple(n for n, f in CATALOGUE.items() if f.layer == "measurement")


def fault_signals(fault: str, signal: str | None) -> list[str]:
    """The signals a label names: the catalogue's, or the faulty sensor's for a measurement fault."""
    info = CATALOGUE[fault]
    return [signal] if info.layer == "measurement" and signal else list(info.signals)
