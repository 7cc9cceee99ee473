"""Incremental autoencoder (torch): reconstruction error of the standardised signals, learnt online.

Inputs are the streaming z-scores of each signal (the `zscore` detector's causal EWMA standardisation, so a
missing reading is 0 and teaches nothing). A small bottleneck autoencoder (m -> 8 -> 3 -> 8 -> m) reconstructs
them; the score of a tick is its mean squared reconstruction error under the weights learnt *before* it. The
model learns on fixed mini-batches of `minibatch` ticks counted from the start of the stream (so the result
does not depend on how the stream is batched), from ticks that look normal only (score below `learn_below`),
with their inputs clipped at `clip` sd, so a fault does not teach the model that it is normal. torch is
imported on first use: the flow does not pay for it unless this detector runs.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("autoencoder", seed=0)
>>> rng = np.random.default_rng(1)
>>> latent = rng.normal(size=(3000, 1))
>>> X = np.hstack([latent, 2 * latent, -latent]) + 0.05 * rng.normal(size=(3000, 3))
>>> X[2900:2920, 1] = -2 * X[2900:2920, 0]  # the signals stop moving together
>>> state, scores = det.score_learn(det.init_state(["a", "b", "c"]), np.arange(3000), X)
>>> bool(scores[2900:2920].mean() > 5 * np.median(scores[2000:2900]))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import register
from detectors.zscore import ZScore, ZScoreState


@dataclass
class AutoencoderState:
    standardise: ZScoreState
    model: Any  # torch.nn.Sequential
    optimizer: Any  # torch.optim.Adam
    pending: np.ndarray  # standardised ticks waiting to fill the next mini-batch
    learnt: int = 0  # mini-batches learnt from


@register("autoencoder")
class Autoencoder:
    name = "autoencoder"

    def __init__(self, hidden: int = 8, bottleneck: int = 3, minibatch: int = 64, lr: float = 1e-2,
                 learn_below: float = 4.0, clip: float = 4.0, warmup_batches: int = 10, seed: int = 0,
                 halflife_ticks: float = 720.0) -> None:
        self.hidden, self.bottleneck, self.minibatch, self.lr = hidden, bottleneck, minibatch, lr
        self.learn_below, self.clip, self.warmup_batches, self.seed = learn_below, clip, warmup_batches, seed
        self.standardiser = ZScore(halflife_ticks=halflife_ticks, warmup_ticks=60)

    def init_state(self, signal_names: Sequence[str]) -> AutoencoderState:
        import torch

        m = len(signal_names)
        gen = torch.Generator().manual_seed(self.seed)
        layers = [torch.nn.Linear(m, self.hidden), torch.nn.Tanh(), torch.nn.Linear(self.hidden, self.bottleneck),
                  torch.nn.Tanh(), torch.nn.Linear(self.bottleneck, self.hidden), torch.nn.Tanh(),
                  torch.nn.Linear(self.hidden, m)]
        model = torch.nn.Sequential(*layers).double()
        with torch.no_grad():
            for p in model.parameters():  # seeded initialisation: the same stream gives the same scores
                p.copy_(torch.empty_like(p).uniform_(-0.3, 0.3, generator=gen))
        return AutoencoderState(self.standardiser.init_state(signal_names), model,
                                torch.optim.Adam(model.parameters(), lr=self.lr), np.zeros((0, m)))

    def _errors(self, state: AutoencoderState, Z: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(Z)
            return ((state.model(x) - x) ** 2).mean(dim=1).numpy()

    def _learn(self, state: AutoencoderState, Z: np.ndarray, errors: np.ndarray) -> None:
        import torch

        keep = errors < self.learn_below if state.learnt >= self.warmup_batches else np.ones(len(Z), bool)
        state.learnt += 1
        if keep.sum() < 2:
            return
        x = torch.from_numpy(np.clip(Z[keep], -self.clip, self.clip))
        state.optimizer.zero_grad()
        loss = ((state.model(x) - x) ** 2).mean()
        loss.backward()
        state.optimizer.step()

    def score_learn_detail(self, state: AutoencoderState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[AutoencoderState, np.ndarray, np.ndarray]:
        """Also returns the per-signal squared reconstruction errors (the contributions)."""
        import torch

        state.standardise, _, Z = self.standardiser.score_learn_detail(state.standardise, ts, X)
        n = len(Z)
        scores = np.zeros(n)
        contrib = np.zeros_like(Z)
        i = 0
        while i < n:
            # score up to the next mini-batch boundary with the current weights, then learn from that batch
            take = min(self.minibatch - len(state.pending), n - i)
            seg = Z[i:i + take]
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(seg))
                sq = ((state.model(x) - x) ** 2).numpy()
            contrib[i:i + take] = sq
            scores[i:i + take] = sq.mean(axis=1) if state.learnt >= self.warmup_batches else 0.0
            state.pending = np.vstack([state.pending, seg])
            i += take
            if len(state.pending) == self.minibatch:
                batch, state.pending = state.pending, state.pending[:0]
                self._learn(state, batch, self._errors(state, batch))
        return state, scores, contrib

    def score_learn(self, state: AutoencoderState, ts: np.ndarray,
                    X: np.ndarray) -> tuple[AutoencoderState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
