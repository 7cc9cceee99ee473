"""`biopilot train scorer`: train the windowed scorer (`detectors.scorer_model`) on simulated runs.

Runs: every fault archetype's built-in scenario and the composite x `runs_per_fault` seeds, plus
`normal_runs` normal runs; a further `val_runs` per scenario on other seeds are held out for the metrics.
Windows end on every `stride`-th tick (every 4th inside a fault window, so faults are not drowned out); the
class of a window is the fault active at its last tick (normal otherwise), the titer target is the run's last
assayed titer, the forecast target the next tick's z. Loss: forecast MSE + class cross-entropy +
0.1 x titer MSE (classes weighted by the square root of their inverse frequency). The checkpoint (float16
weights, a small file kept in the repo) goes to `detectors/scorer.pt` by default, which is what the `transformer`
detector loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.features import features
from detectors.scorer_model import CHECKPOINT, CLASSES, HybridScorer, ScorerConfig, model_inputs, save
from sources.fleet import simulate_run
from sources.scenarios import ARCHETYPE_SCENARIOS

COMPOSITE = "overfeed_then_do_limitation"


@dataclass
class RunData:
    inputs: np.ndarray  # [n, 13] float32
    classes: np.ndarray  # [n] int64, class per tick
    titer_g_l: float


def simulate_labelled(scenario: str, seed: int) -> RunData:
    sim = simulate_run(scenario, seed)
    minutes = sim.minutes()
    X = features(sim.ticks, np.array([np.nan, np.nan]))
    classes = np.zeros(len(minutes), dtype=np.int64)
    for lab in sim.labels:
        start, end = ((lab.start_ts - sim.started).total_seconds() / 60.0,
                      (lab.end_ts - sim.started).total_seconds() / 60.0)
        classes[(minutes >= start) & (minutes <= end)] = CLASSES.index(lab.fault)
    assays = sim.assays.sort_by("sample_ts")
    return RunData(model_inputs(X, minutes), classes, float(assays["titer_g_l"][-1].as_py()))


def window_index(run: RunData, window: int, stride: int) -> np.ndarray:
    """Window end ticks (inclusive) that have a next tick to forecast."""
    ends = np.arange(window - 1, len(run.classes) - 1)
    fault = run.classes[ends] > 0
    return ends[(ends % stride == 0) | (fault & (ends % 4 == 0))]


def batches(runs: list[RunData], index: list[tuple[int, int]], window: int, size: int,
            rng: np.random.Generator | None) -> list[tuple[torch.Tensor, ...]]:
    order = rng.permutation(len(index)) if rng is not None else np.arange(len(index))
    views = [np.lib.stride_tricks.sliding_window_view(r.inputs, window, axis=0) for r in runs]  # [n-w+1, 13, w]
    out = []
    for start in range(0, len(order), size):
        sel = [index[k] for k in order[start:start + size]]
        x = np.stack([views[r][end - window + 1].T for r, end in sel])
        nxt = np.stack([runs[r].inputs[end + 1, :12] for r, end in sel])
        cls = np.array([runs[r].classes[end] for r, end in sel])
        titer = np.array([runs[r].titer_g_l for r, end in sel], dtype=np.float32)
        out.append((torch.from_numpy(x), torch.from_numpy(nxt), torch.from_numpy(cls), torch.from_numpy(titer)))
    return out


def evaluate(model: HybridScorer, runs: list[RunData], index: list[tuple[int, int]], window: int) -> dict:
    model.eval()
    preds, truth, titer_err, f_err, f_fault = [], [], [], [], []
    with torch.no_grad():
        for x, nxt, cls, titer in batches(runs, index, window, 1024, None):
            forecast, logits, titer_hat = model(x)
            preds.append(logits.argmax(dim=1).numpy())
            truth.append(cls.numpy())
            titer_err.append((titer_hat - titer).abs().numpy())
            f_err.append(((forecast - nxt) ** 2).mean(dim=1).numpy())
            f_fault.append(cls.numpy() > 0)
    p, t = np.concatenate(preds), np.concatenate(truth)
    fe, ff = np.concatenate(f_err), np.concatenate(f_fault)
    recall = {CLASSES[c]: float((p[t == c] == c).mean()) for c in np.unique(t)}
    return {"windows": int(len(t)), "accuracy": float((p == t).mean()),
            "macro_recall": float(np.mean(list(recall.values()))), "recall": recall,
            "titer_mae_g_l": float(np.concatenate(titer_err).mean()),
            "forecast_mse_normal": float(fe[~ff].mean()), "forecast_mse_fault": float(fe[ff].mean()) if ff.any() else None}


def train(runs_per_fault: int = 4, normal_runs: int = 12, val_runs: int = 1, epochs: int = 6, stride: int = 16,
          batch_size: int = 256, lr: float = 2e-3, seed: int = 0, device: str = "cpu", out: Path = CHECKPOINT,
          progress: Callable[[str], None] | None = None) -> dict:
    say = progress or (lambda _m: None)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = ScorerConfig()
    scenarios = [*ARCHETYPE_SCENARIOS.values(), COMPOSITE]
    plan = [(s, 1000 + i) for s in scenarios for i in range(runs_per_fault)] + [
        ("normal", 2000 + i) for i in range(normal_runs)]
    val_plan = [(s, 3000 + i) for s in [*scenarios, "normal"] for i in range(val_runs)]
    say(f"simulating {len(plan)} training and {len(val_plan)} validation runs")
    t0 = time.perf_counter()
    runs = [simulate_labelled(s, k) for s, k in plan]
    val = [simulate_labelled(s, k) for s, k in val_plan]
    index = [(r, int(e)) for r, run in enumerate(runs) for e in window_index(run, cfg.window, stride)]
    val_index = [(r, int(e)) for r, run in enumerate(val) for e in window_index(run, cfg.window, stride)]
    counts = np.bincount([runs[r].classes[e] for r, e in index], minlength=len(CLASSES)).astype(np.float32)
    # square-root balancing: faults are not drowned by normal windows, normal windows still count
    weights = torch.from_numpy(np.sqrt(counts.sum() / np.maximum(counts, 1.0)).astype(np.float32))
    say(f"{len(index):,} training windows, {len(val_index):,} validation windows "
        f"({time.perf_counter() - t0:.0f} s)")
    model = HybridScorer(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    ce = nn.CrossEntropyLoss(weight=weights.to(device))
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        t = time.perf_counter()
        for x, nxt, cls, titer in batches(runs, index, cfg.window, batch_size, rng):
            x, nxt, cls, titer = x.to(device), nxt.to(device), cls.to(device), titer.to(device)
            forecast, logits, titer_hat = model(x)
            loss = ((forecast - nxt) ** 2).mean() + ce(logits, cls) + 0.1 * ((titer_hat - titer) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(x), n + len(x)
        sched.step()
        say(f"epoch {epoch + 1}/{epochs}: loss {total / n:.3f} ({time.perf_counter() - t:.0f} s)")
    model = model.cpu()
    metrics = evaluate(model, val, val_index, cfg.window)
    metrics |= {"train_runs": len(plan), "val_runs": len(val_plan), "epochs": epochs, "train_windows": len(index)}
    save(model, metrics, out)
    say(f"checkpoint: {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return metrics
