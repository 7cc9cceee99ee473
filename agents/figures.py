"""Writing a matplotlib figure the way every report and plot here does."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def save_figure(fig: Figure, out: str | Path, dpi: int = 110) -> Path:
    """`fig` laid out tight, written to `out` (its folder made) and closed: pyplot keeps every figure it made
    alive until then."""
    out = Path(out)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
