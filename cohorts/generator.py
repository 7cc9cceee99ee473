"""The generator: a small causal transformer over a row's tokens (`codec.py`), one position per column.

Each position has its own vocabulary: one embedding table holds them all side by side, and each position has
its own output layer, masked past its vocabulary's width. Training: next-token cross-entropy with AdamW, a tenth of the
training rows held back to keep the epoch with the lowest validation loss (stopping after `patience` epochs
without progress). Sampling: position by position, logits / temperature plus a per-token bias (the gate's
feedback conditions failing columns through it), seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorConfig:
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.0  # early stopping on held-back rows regularises; dropout cost a fifth of a step
    epochs: int = 200
    patience: int = 15
    batch_rows: int = 256
    learning_rate: float = 2e-3
    validation_share: float = 0.1
    # one thread: the model is small, and two threads on the shared 2-core machine made a step 4x slower
    threads: int = 1


class TabularTransformer(nn.Module):
    def __init__(self, vocab_sizes: list[int], cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_sizes = list(vocab_sizes)
        n_positions, widest = len(vocab_sizes), max(vocab_sizes)
        offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        # each position's output is as wide as the widest vocabulary; the columns past its own are masked
        self.register_buffer("outside", torch.arange(widest)[None, :] >= torch.tensor(vocab_sizes)[:, None])
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(n_positions))
        self.token = nn.Embedding(int(sum(vocab_sizes)) + 1, cfg.d_model)  # the last one starts the row
        self.position = nn.Parameter(torch.zeros(1, n_positions, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head_weight = nn.Parameter(torch.randn(n_positions, widest, cfg.d_model) * cfg.d_model**-0.5)
        self.head_bias = nn.Parameter(torch.zeros(n_positions, widest))
        self.start_token = int(sum(vocab_sizes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [b, k] (a row's first k positions, k >= 0 as [b, 0]) -> logits [b, k + 1, widest] for positions
        0..k, each masked to its own vocabulary."""
        b, k = tokens.shape
        start = torch.full((b, 1), self.start_token, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([start, tokens + self.offsets[:k]], dim=1)
        h = self.token(inputs) + self.position[:, :k + 1]
        h = self.encoder(h, mask=self.causal[:k + 1, :k + 1], is_causal=True)
        logits = torch.einsum("bpd,pvd->bpv", h, self.head_weight[:k + 1]) + self.head_bias[:k + 1]
        return logits.masked_fill(self.outside[:k + 1], float("-inf"))

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))


def train(tokens: np.ndarray, vocab_sizes: list[int], cfg: GeneratorConfig, seed: int,
          on_epoch: Callable[[int, float], None] | None = None) -> TabularTransformer:
    """Fit on [rows, positions] tokens; `on_epoch(epoch, validation_loss)` after each epoch (a progress bar)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tokens))
    n_val = max(1, int(cfg.validation_share * len(tokens)))
    fit_rows = torch.as_tensor(tokens[order[n_val:]])
    val_rows = torch.as_tensor(tokens[order[:n_val]])
    model = TabularTransformer(vocab_sizes, cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    best, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    for epoch in range(cfg.epochs):
        model.train()
        for batch in torch.randperm(len(fit_rows)).split(cfg.batch_rows):
            optimiser.zero_grad()
            model.loss(fit_rows[batch]).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(model.loss(val_rows))
        if on_epoch:
            on_epoch(epoch + 1, val_loss)
        if val_loss < best - 1e-4:
            best, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model


@torch.no_grad()
def sample(model: TabularTransformer, n: int, seed: int, temperature: float = 1.0,
           bias: np.ndarray | None = None) -> np.ndarray:
    """[n, positions] tokens drawn position by position; `bias` [positions, widest] is added to the logits /
    temperature (the gate's conditioning)."""
    generator = torch.Generator().manual_seed(seed)
    extra = torch.zeros(model.outside.shape) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
    tokens = torch.zeros((n, 0), dtype=torch.long)
    for p in range(len(model.vocab_sizes)):
        logits = model(tokens)[:, p] / temperature + extra[p]
        drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        tokens = torch.cat([tokens, drawn], dim=1)
    return tokens.numpy()
