"""Run overview: a summary table (peak VCD, final titer, HCP, faults) and a picture of the key signals.

Used by `make demo` and `biopilot overview`; the reporting agent builds its run reports on the same pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from agents.figures import save_figure
from sinks import delta  # noqa: E402

TICK_PANELS = (("do_pct", "DO (% air sat.)"), ("ph", "pH"), ("our_mmol_l_h", "OUR (mmol/L/h)"),
               ("feed_ml", "feed (mL, cumulative)"))
ASSAY_PANELS = ((("vcd_e6_per_ml",), "VCD (e6 cells/mL)"), (("glucose_g_l", "lactate_g_l"), "glucose / lactate (g/L)"),
                (("titer_g_l",), "titer (g/L)"))
FAULT_COLOURS = {"overfeed": "tab:orange", "underfeed": "tab:brown", "do_limitation": "tab:blue",
                 "ph_excursion": "tab:purple", "temperature_spike": "tab:red", "sensor_drift": "tab:olive",
                 "sensor_stuck": "tab:gray", "sensor_dropout": "tab:pink", "contamination": "tab:green"}


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    reactor_id: str
    scenario: str
    peak_vcd_e6_per_ml: float
    peak_day: float
    final_viability_pct: float
    final_titer_g_l: float
    final_hcp_ng_ml: float
    faults: tuple[str, ...]


def _rows_of(table: pa.Table | None, run_id: str, sort_key: str) -> pa.Table | None:
    if table is None:
        return None
    return table.filter(pc.equal(table["run_id"], run_id)).sort_by(sort_key)


def summarize(lake: str | Path, run_ids: Sequence[str] | None = None) -> list[RunSummary]:
    runs = delta.read(lake, "runs", run_ids=run_ids)
    if runs is None or runs.num_rows == 0:
        return []
    ids = runs["run_id"].to_pylist()
    assays = delta.read(lake, "assays", run_ids=ids)
    labels = delta.read(lake, "labels", run_ids=ids)
    out = []
    for run in runs.to_pylist():
        a = _rows_of(assays, run["run_id"], "sample_ts")
        lab = _rows_of(labels, run["run_id"], "start_ts")
        faults = tuple(lab["fault"].to_pylist()) if lab is not None else ()
        if a is None or a.num_rows == 0:
            continue
        vcd = a["vcd_e6_per_ml"].to_numpy()
        days = (a["sample_ts"].cast(pa.int64()).to_numpy() - int(run["started_ts"].timestamp() * 1e6)) / 86400e6
        last = a.num_rows - 1
        out.append(RunSummary(run["run_id"], run["reactor_id"], run["scenario"], float(vcd.max()),
                              float(days[int(vcd.argmax())]), a["viability_pct"][last].as_py(),
                              a["titer_g_l"][last].as_py(), a["hcp_ng_ml"][last].as_py(), faults))
    return out


def format_table(summaries: Sequence[RunSummary]) -> str:
    head = f"{'run':44s} {'scenario':16s} {'peak VCD':>9s} {'day':>5s} {'viab %':>7s} {'titer g/L':>9s} " \
           f"{'HCP ng/mL':>10s}  faults"
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(f"{s.run_id:44s} {s.scenario:16s} {s.peak_vcd_e6_per_ml:9.1f} {s.peak_day:5.1f} "
                     f"{s.final_viability_pct:7.1f} {s.final_titer_g_l:9.2f} {s.final_hcp_ng_ml:10.0f}  "
                     f"{', '.join(s.faults) or '-'}")
    return "\n".join(lines)


def plot_overview(lake: str | Path, run_ids: Sequence[str], out: str | Path, decimate: int = 10) -> Path:
    """Key signals per run (columns), fault windows shaded; written as PNG."""
    runs = delta.read(lake, "runs", run_ids=run_ids)
    if runs is None or runs.num_rows == 0:
        raise ValueError("no runs to plot")
    ids = runs["run_id"].to_pylist()
    ticks = delta.read(lake, "ticks", columns=["run_id", "seq", "ts"] + [c for c, _ in TICK_PANELS], run_ids=ids)
    assays = delta.read(lake, "assays", run_ids=ids)
    labels = delta.read(lake, "labels", run_ids=ids)
    n_rows = len(TICK_PANELS) + len(ASSAY_PANELS)
    fig, axes = plt.subplots(n_rows, len(ids), figsize=(4.2 * len(ids), 1.6 * n_rows), sharex=True, squeeze=False)
    for col, run in enumerate(runs.to_pylist()):
        t0_us = int(run["started_ts"].timestamp() * 1e6)
        t = _rows_of(ticks, run["run_id"], "seq")
        day = (t["ts"].cast(pa.int64()).to_numpy()[::decimate] - t0_us) / 86400e6
        for row, (name, title) in enumerate(TICK_PANELS):
            ax = axes[row, col]
            ax.plot(day, t[name].to_numpy(zero_copy_only=False)[::decimate], lw=0.7, color="tab:blue")
            ax.set_ylabel(title, fontsize=7)
        a = _rows_of(assays, run["run_id"], "sample_ts")
        a_day = (a["sample_ts"].cast(pa.int64()).to_numpy() - t0_us) / 86400e6
        for k, (names, title) in enumerate(ASSAY_PANELS):
            ax = axes[len(TICK_PANELS) + k, col]
            for name in names:
                ax.plot(a_day, a[name].to_numpy(), "o-", ms=3, lw=0.8, label=name)
            if len(names) > 1:
                ax.legend(fontsize=6, loc="upper right")
            ax.set_ylabel(title, fontsize=7)
        lab = _rows_of(labels, run["run_id"], "start_ts")
        for fault in (lab.to_pylist() if lab is not None else []):
            start = (fault["start_ts"].timestamp() * 1e6 - t0_us) / 86400e6
            end = (fault["end_ts"].timestamp() * 1e6 - t0_us) / 86400e6
            for ax in axes[:, col]:
                ax.axvspan(start, end, color=FAULT_COLOURS.get(fault["fault"], "tab:red"), alpha=0.2, lw=0)
            axes[0, col].text(start, 1.02, fault["fault"], transform=axes[0, col].get_xaxis_transform(),
                              fontsize=7, color=FAULT_COLOURS.get(fault["fault"], "tab:red"))
        axes[0, col].set_title(f"{run['scenario']} · {run['reactor_id']}", fontsize=9, pad=12)
        axes[-1, col].set_xlabel("day")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)
