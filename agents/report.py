"""`biopilot report RUN`: a batch-record style run report in Markdown, HTML or PDF.

Key figures from the assays, critical process parameter (CPP) excursions from the online signals, the
incidents with their ranked causes and actions (the same monitoring + troubleshooting as `biopilot diagnose`),
a PNG of the key signals with the incidents shaded, and a short summary. PDF through fpdf2.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from agents.counterfactual import counterfactuals  # noqa: E402
from agents.diagnose import IncidentFinding, diagnose_ticks, load_run  # noqa: E402
from agents.figures import save_figure
from agents.overview import RunSummary, summarize  # noqa: E402
from core.events import ID_PATTERN  # noqa: E402

# CPP limits for a CHO fed-batch (REFERENCES.md: typical process ranges)
CPP_LIMITS = {"do_pct": (20.0, 80.0), "ph": (6.8, 7.3), "temp_c": (30.0, 37.5)}
PANELS = (("do_pct", "DO (% air sat.)"), ("ph", "pH"), ("temp_c", "temperature (°C)"),
          ("our_mmol_l_h", "OUR (mmol/L/h)"), ("feed_ml", "feed (mL)"))
FORMATS = ("md", "html", "pdf")


class UnsafeRunId(ValueError):
    """A run id that could not name a file inside the report folder; the message is one line."""


def report_path(out_dir: Path, run_id: str, suffix: str) -> Path:
    """`<out_dir>/<run_id>.<suffix>`, refused unless the run id is an id (`ID_PATTERN`: no separators) and the
    file, links followed, lies in `out_dir` itself: the run id comes from the command line or the API."""
    if not re.fullmatch(ID_PATTERN, run_id):
        raise UnsafeRunId(f"run id {run_id!r} is not an id: letters, digits, '.', '_' or '-', 1-128 of them")
    out = out_dir / f"{run_id}.{suffix}"
    if out.resolve().parent != out_dir.resolve():
        raise UnsafeRunId(f"{out} leads outside the report folder {out_dir}")
    return out


@dataclass(frozen=True)
class Excursion:
    signal: str
    start_ts: object
    minutes: float
    extreme: float
    limit: str


@dataclass
class RunReport:
    run_id: str
    summary: RunSummary | None
    excursions: list[Excursion]
    findings: list[IncidentFinding]
    plot: Path
    counterfactuals: dict[str, dict] = field(default_factory=dict)  # named fault -> its `whatif` object

    def text_summary(self) -> str:
        s = self.summary
        parts = []
        if s:
            parts.append(f"Run {self.run_id} ({s.scenario}, {s.reactor_id}) peaked at {s.peak_vcd_e6_per_ml:.1f}e6 "
                         f"cells/mL on day {s.peak_day:.1f} and ended at {s.final_titer_g_l:.2f} g/L titer with "
                         f"{s.final_viability_pct:.0f}% viability.")
        named = [f.diagnosis.top.fault for f in self.findings if f.diagnosis.top]
        if self.findings:
            parts.append(f"{len(self.findings)} incident(s) were raised" + (
                f"; most likely causes: {', '.join(dict.fromkeys(named))}." if named else
                "; none with enough evidence to name a cause."))
        else:
            parts.append("No incident was raised.")
        parts.append(f"{len(self.excursions)} CPP excursion(s) outside the limits." if self.excursions
                     else "All CPPs stayed within their limits.")
        return " ".join(parts)


def excursions(ticks: pa.Table, dt_min: float) -> list[Excursion]:
    found = []
    ts = ticks["ts"].to_pylist()
    for signal, (lo, hi) in CPP_LIMITS.items():
        x = ticks[signal].to_numpy(zero_copy_only=False).astype(float)
        out = (x < lo) | (x > hi)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], out.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if b - a < 5:  # a few noisy ticks are not an excursion
                continue
            seg = x[a:b]
            low = np.nanmin(seg) < lo
            found.append(Excursion(signal, ts[a], (b - a) * dt_min, float(np.nanmin(seg) if low else np.nanmax(seg)),
                                   f"< {lo:g}" if low else f"> {hi:g}"))
    return sorted(found, key=lambda e: e.start_ts)


def plot(ticks: pa.Table, findings: list[IncidentFinding], out: Path, decimate: int = 5) -> Path:
    t_us = ticks["ts"].cast(pa.int64()).to_numpy()
    day = (t_us - t_us[0]) / 86400e6
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 1.6 * len(PANELS)), sharex=True)
    for ax, (name, title) in zip(axes, PANELS, strict=True):
        ax.plot(day[::decimate], ticks[name].to_numpy(zero_copy_only=False)[::decimate], lw=0.7)
        ax.set_ylabel(title, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if name in CPP_LIMITS:
            for limit in CPP_LIMITS[name]:
                ax.axhline(limit, color="grey", lw=0.6, ls="--")
    def day_of(ts: datetime) -> float:
        return (ts.timestamp() * 1e6 - t_us[0]) / 86400e6

    return shade_and_save(fig, axes, findings, day_of, float(day[-1]), "day", out)


def shade_and_save(fig, axes, findings, day_of, last_day: float, xlabel: str, out: Path) -> Path:  # noqa: ANN001 - matplotlib objects
    """Shade each incident (`day_of(ts)` in days on the x axis, an open one to `last_day`) on every panel, name its
    top cause above the first, and write the figure to `out`."""
    for f in findings:
        start = day_of(f.incident["start_ts"])
        end = day_of(f.incident["end_ts"]) if f.incident["end_ts"] else last_day
        for ax in axes:
            ax.axvspan(start, max(end, start + 0.05), color="tab:red", alpha=0.15, lw=0)
        name = f.diagnosis.top.fault if f.diagnosis.top else "?"
        axes[0].text(start, 1.02, name, transform=axes[0].get_xaxis_transform(), fontsize=7, color="tab:red")
    axes[-1].set_xlabel(xlabel)
    return save_figure(fig, out)


def build(lake: str | Path, run_id: str, out_dir: Path) -> RunReport:
    ticks, assays = load_run(lake, run_id)
    ticks = ticks.sort_by("seq")
    t_us = ticks["ts"].cast(pa.int64()).to_numpy()
    dt_min = float(np.median(np.diff(t_us))) / 6e7 if len(t_us) > 1 else 1.0
    findings = diagnose_ticks(ticks, assays)
    summary = next(iter(summarize(lake, [run_id])), None)
    named = [f.diagnosis.top.fault for f in findings if f.diagnosis.top]
    return RunReport(run_id, summary, excursions(ticks, dt_min), findings,
                     plot(ticks, findings, report_path(out_dir, run_id, "png")), counterfactuals(lake, run_id, named))


def markdown(r: RunReport, image: str) -> str:
    s = r.summary
    lines = [f"# Run report: {r.run_id}", "", r.text_summary(), "", "## Key figures", ""]
    if s:
        lines += ["| figure | value |", "|---|---|", f"| scenario | {s.scenario} |", f"| reactor | {s.reactor_id} |",
                  f"| peak VCD | {s.peak_vcd_e6_per_ml:.2f} e6 cells/mL (day {s.peak_day:.1f}) |",
                  f"| final viability | {s.final_viability_pct:.1f} % |", f"| final titer | {s.final_titer_g_l:.2f} g/L |",
                  f"| final HCP | {s.final_hcp_ng_ml:.0f} ng/mL |",
                  f"| injected faults (labels) | {', '.join(s.faults) or 'none'} |"]
    else:
        lines.append("No assays stored for this run.")
    lines += ["", "## CPP excursions", ""]
    if r.excursions:
        lines += ["| signal | start | duration (min) | extreme | limit |", "|---|---|---|---|---|"]
        lines += [f"| {e.signal} | {e.start_ts:%Y-%m-%d %H:%M} | {e.minutes:.0f} | {e.extreme:.3g} | {e.limit} |"
                  for e in r.excursions]
    else:
        lines.append("None.")
    lines += ["", "## Incidents", "", *incident_lines(r.findings, r.counterfactuals)]
    lines += ["", "## Key signals", "", f"![key signals with incidents shaded]({image})", ""]
    return "\n".join(lines)


def incident_lines(findings: list[IncidentFinding], counterfactuals: dict[str, dict] | None = None) -> list[str]:
    """Markdown of each incident with its ranked causes and the top one's action (any plant's findings), and what
    the run would have been without the named cause where `counterfactuals` has it (`agents.counterfactual`)."""
    lines = []
    for f in findings:
        d = f.as_dict()
        lines.append(f"### {d['incident_id']} · {d['severity']} · {d['start_ts']} → {d['end_ts'] or 'open'}")
        lines.append("")
        if f.diagnosis.abstained:
            lines.append("Insufficient evidence to name a cause. " + "; ".join(f.diagnosis.facts[:3]))
        for k, h in enumerate(f.diagnosis.ranked(3), 1):
            lines.append(f"{k}. **{h.fault}** (confidence {h.confidence:.2f}): {h.root_cause}. "
                         + " ".join(f"{e}." for e in h.evidence[:3]))
        if f.diagnosis.top:
            lines += ["", f"Action: {f.diagnosis.top.action}."]
            if f.diagnosis.top.fault in (counterfactuals or {}):
                lines += ["", what_if_line(counterfactuals[f.diagnosis.top.fault])]
        lines.append("")
    return lines or ["None."]


def what_if_line(counterfactual: dict) -> str:
    """A `whatif` object as the report's sentence."""
    return (f"What-if: {counterfactual['sentence']} (the twin re-simulated this run from "
            f"{counterfactual['from_ts'][:16].replace('T', ' ')} UTC without it, with the same random streams).")


def to_html(md: str, png: Path) -> str:
    """A self-contained page (image inlined) from the Markdown, without a Markdown dependency."""
    body = []
    for line in md.splitlines():
        esc = html.escape(line)
        if line.startswith("!["):
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<img alt="key signals" style="max-width:100%" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            if set(line) <= set("|-"):
                continue
            cells = "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
            body.append(f"<table><tr>{cells}</tr></table>")
        elif line:
            body.append(f"<p>{esc.replace('**', '')}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px;font-size:.9rem}")
    return f"<!doctype html><meta charset=utf-8><title>run report</title><style>{style}</style>" + "\n".join(body)


def to_pdf(md: str, png: Path, out: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(True, 15)
    pdf.add_page()
    font = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"  # Unicode (°, →) without a system font
    pdf.add_font("dejavu", "", str(font))
    pdf.add_font("dejavu", "B", str(font.with_name("DejaVuSans-Bold.ttf")))
    for line in md.splitlines():
        if line.startswith("!["):
            pdf.image(str(png), w=pdf.epw)
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            pdf.set_font("dejavu", "B", {1: 15, 2: 12}.get(level, 10))
            pdf.multi_cell(0, 7, line[level:].strip(), new_x="LMARGIN", new_y="NEXT")
        elif line.startswith("|"):
            if not set(line) <= set("|-"):
                pdf.set_font("dejavu", "", 8)
                pdf.multi_cell(0, 5, "   ".join(c.strip() for c in line.strip("|").split("|")),
                               new_x="LMARGIN", new_y="NEXT")
        elif line:
            pdf.set_font("dejavu", "", 9)
            pdf.multi_cell(0, 5, line.replace("**", ""), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(out))
    return out


def write(lake: str | Path, run_id: str, fmt: str, out_dir: Path) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = report_path(out_dir, run_id, fmt)  # before anything is read or written
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build(lake, run_id, out_dir)
    return render(markdown(report, report.plot.name), report.plot, fmt, out)


def render(md: str, png: Path, fmt: str, out: Path) -> Path:
    """The report's Markdown (its figure named by `png`) written as `fmt`: the reactor's and the patient's."""
    if fmt == "md":
        out.write_text(md)
    elif fmt == "html":
        out.write_text(to_html(md, png))
    else:
        to_pdf(md, png, out)
    return out
