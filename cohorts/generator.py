"""The generator: a small causal transformer over a row's tokens (`codec.py`), one position per column.

Each position has its own vocabulary: one embedding table holds them all side by side, and each position has
its own output layer, masked past its vocabulary's width. A number's tokens are ordered: each carries its normal
score z (`codec.py`), added to its embedding along a learned per-column direction, and each position's logits get
a(h)·z + b(h)·z² on top of the per-token ones (with b < 0 a discretised normal whose mean moves with what came
before), so a column that follows another is learned as a slope rather than token by token.

Training: next-token cross-entropy with AdamW, with a quarter of the input tokens hidden and dropout, a tenth of
the training rows held back. Each column keeps the snapshot of the epoch at which its own held-back loss was
lowest (`BestPerColumn`); training stops when those losses stop improving. Sampling: position by position,
logits / temperature plus a per-token bias (the gate's feedback conditions failing columns through it), seeded.
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
    # against memorising the rows' prefixes, which set in after ~150 steps on a 1,600-row table (docs/COHORTS.md)
    input_masking: float = 0.25
    dropout: float = 0.1
    weight_decay: float = 0.01
    epochs: int = 60
    patience: int = 8  # stop when the columns' best held-back losses gained less than `min_gain` in this many epochs
    min_gain: float = 2e-3  # nats, mean over columns
    batch_rows: int = 64
    learning_rate: float = 2e-3
    validation_share: float = 0.1
    # one thread: the model is small, and two threads on the shared 2-core machine made a step 4x slower
    threads: int = 1


class TabularTransformer(nn.Module):
    def __init__(self, vocab_sizes: list[int], token_scores: np.ndarray, cfg: GeneratorConfig) -> None:
        """`token_scores` [positions, widest]: each token's normal score (0 for categories and missing)."""
        super().__init__()
        self.cfg = cfg
        self.vocab_sizes = list(vocab_sizes)
        n_positions, widest = len(vocab_sizes), max(vocab_sizes)
        offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        scores = torch.as_tensor(token_scores[:, :widest], dtype=torch.float32)
        self.register_buffer("scores", scores)
        flat = [scores[p, :size] for p, size in enumerate(vocab_sizes)]
        self.register_buffer("input_scores", torch.cat([*flat, torch.zeros(1)]))  # the start token scores 0
        # each position's output is as wide as the widest vocabulary; the columns past its own are masked
        self.register_buffer("outside", torch.arange(widest)[None, :] >= torch.tensor(vocab_sizes)[:, None])
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(n_positions))
        self.token = nn.Embedding(int(sum(vocab_sizes)) + 1, cfg.d_model)  # the last one starts the row
        self.position = nn.Parameter(torch.zeros(1, n_positions, cfg.d_model))
        # the direction along which an input token's score moves its embedding, per sequence position
        self.score_direction = nn.Parameter(torch.randn(n_positions, cfg.d_model) * cfg.d_model**-0.5)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head_weight = nn.Parameter(torch.randn(n_positions, widest, cfg.d_model) * cfg.d_model**-0.5)
        self.head_bias = nn.Parameter(torch.zeros(n_positions, widest))
        self.shape_weight = nn.Parameter(torch.randn(n_positions, 2, cfg.d_model) * cfg.d_model**-0.5 / 10)
        self.start_token = int(sum(vocab_sizes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [b, k] (a row's first k positions, k >= 0 as [b, 0]) -> logits [b, k + 1, widest] for positions
        0..k, each masked to its own vocabulary."""
        b, k = tokens.shape
        start = torch.full((b, 1), self.start_token, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([start, torch.where(tokens < 0, self.start_token, tokens + self.offsets[:k])], dim=1)
        h = self.token(inputs) + self.position[:, :k + 1]
        h = h + self.input_scores[inputs][..., None] * self.score_direction[:k + 1]
        h = self.encoder(h, mask=self.causal[:k + 1, :k + 1], is_causal=True)
        logits = torch.einsum("bpd,pvd->bpv", h, self.head_weight[:k + 1]) + self.head_bias[:k + 1]
        slope, curve = torch.einsum("bpd,pcd->bpc", h, self.shape_weight[:k + 1]).unbind(-1)
        z = self.scores[:k + 1]
        logits = logits + slope[..., None] * z + curve[..., None] * z**2
        return logits.masked_fill(self.outside[:k + 1], float("-inf"))

    def position_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """[positions] mean next-token cross-entropy of each column; while training, `input_masking` of the input
        tokens are hidden (shown as the start token), so that the model cannot lean on memorised row prefixes."""
        inputs = tokens[:, :-1]
        if self.training and self.cfg.input_masking > 0:
            inputs = torch.where(torch.rand(inputs.shape) < self.cfg.input_masking, -1, inputs)
        logits = self(inputs)
        return nn.functional.cross_entropy(logits.permute(0, 2, 1), tokens, reduction="none").mean(0)


class BestPerColumn(nn.Module):
    """Each column's conditional taken from the epoch at which it was best on the held-back rows. Columns learn
    at different speeds: a column that follows another (warfarin Q from weight) keeps improving long after the
    model has started to memorise the rows' prefixes for the independent ones, and one stopping epoch for all
    had to give up one or the other. A product of valid conditionals is a valid joint, so drawing column p from
    snapshot `choice[p]` is sampling a proper autoregressive model."""

    def __init__(self, snapshots: list[TabularTransformer], choice: list[int], validation_loss: float) -> None:
        super().__init__()
        self.snapshots = nn.ModuleList(snapshots)
        self.choice = choice
        self.validation_loss = validation_loss  # mean over columns of each one's best held-back loss
        self.vocab_sizes = snapshots[0].vocab_sizes
        self.outside = snapshots[0].outside

    def logits_at(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """[b, widest] logits of column `position` given the row's first `position` tokens."""
        return self.snapshots[self.choice[position]](tokens)[:, position]


def train(tokens: np.ndarray, vocab_sizes: list[int], token_scores: np.ndarray, cfg: GeneratorConfig, seed: int,
          on_epoch: Callable[[int, float], None] | None = None) -> BestPerColumn:
    """Fit on [rows, positions] tokens (`token_scores`: `TableCodec.token_scores`); `on_epoch(epoch,
    validation_loss)` after each epoch (a progress bar). Stops when the mean over columns of each one's best
    held-back loss gained less than `min_gain` in `patience` epochs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(tokens, vocab_sizes, token_scores, cfg, seed, on_epoch)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, as it was


def _train(tokens: np.ndarray, vocab_sizes: list[int], token_scores: np.ndarray, cfg: GeneratorConfig, seed: int,
           on_epoch: Callable[[int, float], None] | None) -> BestPerColumn:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tokens))
    n_val = max(1, int(cfg.validation_share * len(tokens)))
    fit_rows = torch.as_tensor(tokens[order[n_val:]])
    val_rows = torch.as_tensor(tokens[order[:n_val]])
    model = TabularTransformer(vocab_sizes, token_scores, cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    best = torch.full((len(vocab_sizes),), float("inf"))
    snapshots: list[TabularTransformer] = []
    choice = [0] * len(vocab_sizes)
    progress: list[float] = []  # the mean over columns of each one's best held-back loss, after each epoch
    for epoch in range(cfg.epochs):
        model.train()
        for batch in torch.randperm(len(fit_rows)).split(cfg.batch_rows):
            optimiser.zero_grad()
            model.position_losses(fit_rows[batch]).mean().backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_losses = model.position_losses(val_rows)
        if on_epoch:
            on_epoch(epoch + 1, float(val_losses.mean()))
        improved = val_losses < best
        if improved.any():
            snapshots.append(copy.deepcopy(model).eval())
            best = torch.where(improved, val_losses, best)
            choice = [len(snapshots) - 1 if better else c for c, better in zip(choice, improved.tolist(), strict=True)]
        progress.append(float(best.mean()))
        if len(progress) > cfg.patience and progress[-1 - cfg.patience] - progress[-1] < cfg.min_gain:
            break
    used = sorted(set(choice))  # snapshots no column chose are dropped
    return BestPerColumn([snapshots[i] for i in used], [used.index(c) for c in choice], float(best.mean()))


@torch.no_grad()
def sample(model: BestPerColumn, n: int, seed: int, temperature: float = 1.0,
           bias: np.ndarray | None = None) -> np.ndarray:
    """[n, positions] tokens drawn position by position; `bias` [positions, widest] is added to the logits /
    temperature (the gate's conditioning)."""
    generator = torch.Generator().manual_seed(seed)
    extra = torch.zeros(model.outside.shape) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
    tokens = torch.zeros((n, 0), dtype=torch.long)
    for p in range(len(model.vocab_sizes)):
        logits = model.logits_at(tokens, p) / temperature + extra[p]
        drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        tokens = torch.cat([tokens, drawn], dim=1)
    return tokens.numpy()
