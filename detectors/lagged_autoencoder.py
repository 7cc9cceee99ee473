"""A windowed autoencoder over lagged vectors [z_t, ..., z_t-l] (torch, CPU, small): the nonlinear cousin of
dynamic PCA. An MLP (d -> h -> k -> h -> d, tanh; k = the components dynamic PCA would keep, h = 2k + 8) is
fitted once on the reference's lagged vectors (full-batch Adam, seeded); a row's score is its reconstruction
error, each coordinate over its own error variance on the reference, summed, over the sum's 99th percentile
there; its contributions are those per-coordinate errors summed over each signal's lags. The fitted weights are
kept as numpy arrays and the scoring is numpy: the state pickles small and scores do not depend on batching.

>>> from detectors.base import make_detector
>>> rng = np.random.default_rng(5)
>>> t = np.arange(1200)
>>> X = np.column_stack([np.sin(t / 15), np.cos(t / 15), np.sin(t / 15) ** 2]) + 0.05 * rng.normal(size=(1200, 3))
>>> X[1000:1010, 2] += 1.0  # c no longer the square of a
>>> det = make_detector("lagged_ae", reference_ticks=800, epochs=80)
>>> state, scores, contrib = det.score_learn_detail(det.init_state(["a", "b", "c"]), t, X)
>>> bool(np.median(scores[1000:1010]) > scores[850:1000].max()), int(contrib[1000:1010].sum(axis=0).argmax())
(True, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.base import register
from detectors.lagged import LaggedReferenceDetector, lag_matrix, lag_order, leading_components, per_signal


@dataclass
class LaggedAeModel:
    lags: int
    layers: list[tuple[np.ndarray, np.ndarray]]  # (weight [out, in], bias) per linear layer, float64
    error_var: np.ndarray  # [d] each coordinate's squared error on the reference
    limit: float


def reconstruct(layers: list[tuple[np.ndarray, np.ndarray]], W: np.ndarray) -> np.ndarray:
    h = W
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight.T + bias
        if i < len(layers) - 1:
            h = np.tanh(h)
    return h


@register("lagged_ae")
class LaggedAutoencoder(LaggedReferenceDetector):
    name = "lagged_ae"

    def __init__(self, reference_ticks: int = 1440, max_lag: int = 3, epochs: int = 300, lr: float = 0.01,
                 seed: int = 0, quantile: float = 0.99) -> None:
        super().__init__(reference_ticks, max_lag)
        self.epochs, self.lr, self.seed, self.quantile = epochs, lr, seed, quantile

    def fit(self, Z: np.ndarray) -> LaggedAeModel:
        import torch

        lags = lag_order(Z, self.max_lag)
        W = lag_matrix(Z, lags)
        d = W.shape[1]
        k = leading_components(W, 0.9, max(d - 1, 1)).shape[1]
        sizes = [d, 2 * k + 8, k, 2 * k + 8, d]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a net this small gains nothing from threads, and loses on a busy machine
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
            torch.manual_seed(self.seed)
            net = torch.nn.Sequential(*[layer for i in range(4) for layer in (
                torch.nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64),
                *((torch.nn.Tanh(),) if i < 3 else ()))])
        data = torch.from_numpy(np.ascontiguousarray(W))
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            optimiser.zero_grad()
            loss = ((net(data) - data) ** 2).mean()
            loss.backward()
            optimiser.step()
        torch.set_num_threads(threads)
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linear]
        error_var = ((reconstruct(layers, W) - W) ** 2).mean(axis=0) + 1e-6
        model = LaggedAeModel(lags, layers, error_var, 1.0)
        model.limit = float(np.quantile(self.score_lagged(model, W)[0], self.quantile)) + 1e-9
        return model

    def score_lagged(self, model: LaggedAeModel, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        err = (reconstruct(model.layers, W) - W) ** 2 / model.error_var / model.limit
        return err.sum(axis=1), per_signal(err, W.shape[1] // (model.lags + 1))
