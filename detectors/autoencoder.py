"""Incremental autoencoder (torch): reconstruction error of the standardised signals, learnt online.

Inputs are each signal's golden-batch z (its deviation from the twin's normal runs at the same culture age,
clipped at +-10; a missing reading is 0 and teaches nothing), so the model learns how normal *deviations*
move together rather than the fed-batch's own swings. A small bottleneck autoencoder (m -> 8 -> 3 -> 8 -> m)
reconstructs them; the score of a tick is its mean squared reconstruction error under the weights learnt
*before* it. It starts from weights pretrained the same way on normal twin runs (`python -m
detectors.autoencoder` writes `autoencoder_init.npz`) and goes on learning on fixed mini-batches of
`minibatch` ticks counted from the start of the stream (so the result does not depend on how the stream is
batched), one in `learn_every` once settled (a training step dominates its cost), from ticks that look normal
only (score below `learn_below`), inputs clipped at `clip` sd: a fault does not teach the model that it is
normal. torch is imported on first use: a flow without this detector does not pay for it.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("autoencoder", seed=0)
>>> ref, rng = det.reference, np.random.default_rng(1)
>>> X = ref.median[:2000] + 0.5 * rng.normal(size=(2000, 12)) * ref.scale[:2000]  # a normal run, 10-min ticks
>>> X[1900:1920, 0] -= 30.0  # DO falls 30 points
>>> state, scores = det.score_learn(det.init_state(["s"] * 12), np.arange(2000) * 600_000_000, X)
>>> bool(scores[1900:1920].mean() > 5 * np.median(scores[1000:1900]))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import DETECTOR_SIGNALS, register
from detectors.features import features
from detectors.golden import load_reference


@dataclass
class AutoencoderState:
    """Plain numpy: the flow snapshots every reactor's state each epoch, and deep-copying a torch module with
    its optimiser was most of the snapshot's cost; torch works on these arrays in place when it learns."""

    start_us: int | None
    params: list[np.ndarray]  # the torch model's parameters in its order (weight, bias per layer), float64
    adam_avg: list[np.ndarray]  # Adam's moment estimates for them
    adam_avg_sq: list[np.ndarray]
    adam_steps: int
    pending: np.ndarray  # inputs waiting to fill the next mini-batch
    pending_err: np.ndarray  # their scores (reconstruction errors before learning), to gate what is learnt
    learnt: int = 0  # mini-batches learnt from

    @property
    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(self.params[::2], self.params[1::2], strict=True))


@register("autoencoder")
class Autoencoder:
    name = "autoencoder"

    def __init__(self, hidden: int = 8, bottleneck: int = 3, minibatch: int = 512, lr: float = 1e-2,
                 learn_below: float = 4.0, clip: float = 4.0, warmup_batches: int = 1, seed: int = 0,
                 settle_batches: int = 10, learn_every: int = 4, pretrained: bool = True) -> None:
        self.hidden, self.bottleneck, self.minibatch, self.lr = hidden, bottleneck, minibatch, lr
        self.learn_below, self.clip, self.warmup_batches, self.seed = learn_below, clip, warmup_batches, seed
        self.settle_batches, self.learn_every = settle_batches, learn_every
        self.reference = load_reference()
        self.initial = _load_pretrained() if pretrained else None

    def init_state(self, signal_names: Sequence[str]) -> AutoencoderState:
        import torch

        m = len(signal_names)
        model, _ = _workspace(m, self.hidden, self.bottleneck, self.lr)  # torch and its optimiser load now
        shapes = [tuple(p.shape) for p in model.parameters()]
        start = self.initial if self.initial and [w.shape for w in self.initial] == shapes else None
        gen = torch.Generator().manual_seed(self.seed)
        # seeded or pretrained: the same stream, the same scores
        params = [np.array(start[k], dtype=np.float64) if start else
                  torch.empty(shape, dtype=torch.float64).uniform_(-0.3, 0.3, generator=gen).numpy()
                  for k, shape in enumerate(shapes)]
        return AutoencoderState(None, params, [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params],
                                0, np.zeros((0, m)), np.zeros(0),
                                learnt=self.settle_batches if start else 0)  # pretrained: already settled

    def _learn(self, state: AutoencoderState, Z: np.ndarray, errors: np.ndarray) -> None:
        import torch

        keep = errors < self.learn_below if state.learnt >= self.warmup_batches else np.ones(len(Z), bool)
        state.learnt += 1
        if state.learnt > self.settle_batches and state.learnt % self.learn_every:
            return  # settled: keep adapting, on one mini-batch in `learn_every` (training is the costly step)
        if keep.sum() < 2:
            return
        model, optimizer = _workspace(Z.shape[1], self.hidden, self.bottleneck, self.lr)
        # this reactor's parameters and Adam moments, shared with torch (no copy): the step updates them in place
        optimizer.state.clear()
        for p, w, avg, avg_sq in zip(model.parameters(), state.params, state.adam_avg, state.adam_avg_sq,
                                     strict=True):
            p.data = torch.from_numpy(w)
            optimizer.state[p] = {"step": torch.tensor(float(state.adam_steps)), "exp_avg": torch.from_numpy(avg),
                                  "exp_avg_sq": torch.from_numpy(avg_sq)}
        x = torch.from_numpy(np.clip(Z[keep], -self.clip, self.clip))
        optimizer.zero_grad()
        loss = ((model(x) - x) ** 2).mean()
        loss.backward()
        optimizer.step()
        state.adam_steps += 1

    def score_learn_detail(self, state: AutoencoderState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[AutoencoderState, np.ndarray, np.ndarray]:
        """Also returns the per-signal squared reconstruction errors (the contributions)."""
        from detectors.scorer_model import model_inputs

        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and len(ts):
            state.start_us = int(ts[0])
        Z = model_inputs(np.asarray(X, dtype=np.float64), (ts - (state.start_us or 0)) / 6e7,
                         self.reference)[:, :-1].astype(np.float64)
        n = len(Z)
        scores = np.zeros(n)
        contrib = np.zeros_like(Z)
        i = 0
        while i < n:
            # score up to the next mini-batch boundary with the current weights, then learn from that batch
            take = min(self.minibatch - len(state.pending), n - i)
            seg = Z[i:i + take]
            sq = (_reconstruct(state.layers, seg) - seg) ** 2
            contrib[i:i + take] = sq
            err = sq.mean(axis=1)
            scores[i:i + take] = err if state.learnt >= self.warmup_batches else 0.0
            state.pending = np.vstack([state.pending, seg])
            state.pending_err = np.concatenate([state.pending_err, err])
            i += take
            if len(state.pending) == self.minibatch:
                batch, errors = state.pending, state.pending_err
                state.pending, state.pending_err = batch[:0], errors[:0]
                self._learn(state, batch, errors)
        return state, scores, contrib

    def score_learn(self, state: AutoencoderState, ts: np.ndarray,
                    X: np.ndarray) -> tuple[AutoencoderState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores


@lru_cache(maxsize=8)
def _workspace(m: int, hidden: int, bottleneck: int, lr: float) -> tuple[Any, Any]:
    """One torch model and Adam per shape for the whole process; each reactor's numbers live in its state."""
    import torch

    # a 12-8-3 network gains nothing from intra-op threads; spinning ones slow the flow's other threads
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(m, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, bottleneck),
                                torch.nn.Tanh(), torch.nn.Linear(bottleneck, hidden), torch.nn.Tanh(),
                                torch.nn.Linear(hidden, m)).double()
    return model, torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def _reconstruct(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The autoencoder's forward pass in numpy (tanh between the linear layers), as torch computes it."""
    for k, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if k < len(layers) - 1:
            x = np.tanh(x)
    return x


PRETRAINED = Path(__file__).parent / "autoencoder_init.npz"


@lru_cache(maxsize=1)
def _load_pretrained() -> list[np.ndarray] | None:
    if not PRETRAINED.exists():
        return None
    data = np.load(PRETRAINED)
    return [data[f"p{k}"] for k in range(len(data.files))]


def pretrain(runs: int = 10, seed: int = 600) -> list[np.ndarray]:
    """Weights learnt online, as in the flow, over `runs` normal runs of the twin one after another: the
    autoencoder then starts every run knowing what normal deviations look like."""
    import pyarrow as pa

    from sources.fleet import Fleet
    from sources.scenarios import load_scenario

    det = Autoencoder(pretrained=False)
    state = det.init_state(DETECTOR_SIGNALS)
    fleet = Fleet(load_scenario("normal"), runs, seed=seed)
    ticks = pa.Table.from_batches([fleet.step(fleet.total_ticks).ticks])
    X = features(ticks, np.array([np.nan, np.nan])).reshape(runs, fleet.total_ticks, -1)
    ts = ticks["ts"].cast(pa.int64()).to_numpy().reshape(runs, fleet.total_ticks)
    for k in range(runs):
        state.start_us = None  # each run from its own inoculation
        for i in range(0, fleet.total_ticks, 1440):
            state, _ = det.score_learn(state, ts[k, i:i + 1440], X[k, i:i + 1440])
    return [w.copy() for w in state.params]


if __name__ == "__main__":
    weights = pretrain()
    np.savez_compressed(PRETRAINED, **{f"p{k}": w for k, w in enumerate(weights)})
    print(f"autoencoder: {sum(w.size for w in weights)} pretrained weights -> {PRETRAINED}")
