"""The windowed scorer (`transformer`): a Transformer + BiLSTM hybrid over sliding windows, scored on a stride.

Every `stride`-th tick (counted from the run's start, so batching changes nothing) the window of the
`window` ticks before it forecasts this tick; the score is the forecast's mean squared error over the 12
signals (inputs and targets are golden-batch z, see `detectors.scorer_model`), held until the next scoring
tick. The same pass gives fault-class probabilities (9 archetypes + normal) and a final-titer estimate;
`predict(state)` returns them for the latest window with an MC-dropout spread. The network ships trained
(`detectors/scorer.pt`, from `biopilot train scorer`); torch loads on first use.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("transformer")
>>> ref = det.reference
>>> X = ref.median[:400].copy()  # four days on the golden trajectory, one tick per 10 minutes
>>> X[300:, 0] -= 30.0  # then DO falls 30 points
>>> ts = np.arange(400) * 600_000_000
>>> state, scores = det.score_learn(det.init_state(["s"] * 12), ts, X)
>>> bool(scores[300:310].max() > 5 * np.median(scores[100:290]))
True
>>> sorted(det.predict(state))
['class_probabilities', 'class_spread', 'titer_g_l', 'titer_g_l_spread']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectors.base import register
from detectors.golden import load_reference


@dataclass
class ScorerState:
    start_us: int | None = None
    seen: int = 0
    last_score: float = 0.0
    buffer: np.ndarray = field(default_factory=lambda: np.zeros((0, 13), np.float32))  # the last `window` ticks


@register("transformer")
class WindowedScorer:
    name = "transformer"

    def __init__(self, stride: int = 8, checkpoint: str | Path | None = None, mc_samples: int = 8) -> None:
        import torch

        from detectors.scorer_model import CHECKPOINT, load

        self.torch = torch
        self.model, self.metrics = load(Path(checkpoint) if checkpoint else CHECKPOINT)
        self.model.double()  # float64 inference: a window scores the same whatever batch it is scored in
        self.window = self.model.cfg.window
        self.stride, self.mc_samples = stride, mc_samples
        self.reference = load_reference()

    def init_state(self, signal_names: Sequence[str]) -> ScorerState:
        return ScorerState()

    def score_learn_detail(self, state: ScorerState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[ScorerState, np.ndarray, np.ndarray]:
        """Also returns the per-signal squared forecast errors at the scoring ticks (the contributions)."""
        from detectors.scorer_model import model_inputs

        n = len(X)
        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and n:
            state.start_us = int(ts[0])
        inputs = model_inputs(np.asarray(X, dtype=np.float64), (ts - (state.start_us or 0)) / 6e7, self.reference)
        history = np.vstack([state.buffer, inputs])  # [len(buffer) + n, 13]
        offset = len(state.buffer)
        counts = state.seen + np.arange(n)  # ticks seen before each row
        due = np.flatnonzero((counts % self.stride == 0) & (counts >= self.window))
        scores = np.empty(n)
        contrib = np.zeros((n, X.shape[1]))
        errors = np.zeros((0, X.shape[1]))
        if len(due):
            windows = np.stack([history[offset + i - self.window: offset + i] for i in due]).astype(np.float64)
            with self.torch.no_grad():
                forecast, _, _ = self.model(self.torch.from_numpy(windows))
            errors = (forecast.numpy() - inputs[due, :12]) ** 2
            contrib[due] = errors
        last = state.last_score
        k = 0
        for i in range(n):  # hold each score until the next scoring tick
            if k < len(due) and due[k] == i:
                last = float(errors[k].mean())
                k += 1
            scores[i] = last
        state.last_score = last
        state.seen += n
        state.buffer = history[-self.window:]
        return state, scores, contrib

    def score_learn(self, state: ScorerState, ts: np.ndarray, X: np.ndarray) -> tuple[ScorerState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores

    def predict(self, state: ScorerState) -> dict:
        """Fault-class probabilities and final titer for the latest window: MC-dropout mean and spread."""
        from detectors.scorer_model import CLASSES

        if len(state.buffer) < self.window:
            raise ValueError(f"the scorer needs {self.window} ticks, it has seen {len(state.buffer)}")
        x = self.torch.from_numpy(np.repeat(state.buffer[None], self.mc_samples, axis=0).astype(np.float64))
        self.model.train()  # dropout on: each sample is one draw of the network
        try:
            with self.torch.no_grad():
                _, logits, titer = self.model(x)
        finally:
            self.model.eval()
        probs = self.torch.softmax(logits, dim=1).numpy()
        return {"class_probabilities": dict(zip(CLASSES, probs.mean(axis=0).round(4).tolist(), strict=True)),
                "class_spread": dict(zip(CLASSES, probs.std(axis=0).round(4).tolist(), strict=True)),
                "titer_g_l": float(titer.mean()), "titer_g_l_spread": float(titer.std())}


def classify_window(det: WindowedScorer, ts_us: np.ndarray, X: np.ndarray, run_start_us: int) -> dict:
    """The scorer's view of the `window` ticks ending with the last row of `X` (ticks of one run)."""
    from detectors.scorer_model import model_inputs

    ts_us, X = np.asarray(ts_us, dtype=np.int64)[-det.window:], np.asarray(X, dtype=np.float64)[-det.window:]
    state = ScorerState(run_start_us, det.window, 0.0, model_inputs(X, (ts_us - run_start_us) / 6e7, det.reference))
    return det.predict(state)
