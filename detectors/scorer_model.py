"""The windowed scorer's network and its inputs (used by the `transformer` detector and `biopilot train scorer`).

Inputs per tick: the 12 detector signals as golden-batch robust z (deviation from the twin's normal runs at the
same culture age, clipped at +-10, missing = 0) plus the culture age in days / 14. A window of `window` ticks
goes through a linear projection, then two branches: a Transformer encoder (learned positions) and a BiLSTM.
Each branch is pooled by attention (a learned query scores every time step); a learned gate mixes the two
pooled vectors. Heads: the next tick's 12 z values (forecast: the anomaly score is its error), the fault class
(9 archetypes + normal) and the run's final titer (g/L). Dropout stays in the model so MC dropout gives an
uncertainty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.golden import GoldenReference, load_reference
from sources.reactor import FAULT_NAMES

CLASSES: tuple[str, ...] = ("normal", *FAULT_NAMES)
CHECKPOINT = Path(__file__).parent / "scorer.pt"
Z_CLIP = 10.0


@dataclass(frozen=True)
class ScorerConfig:
    window: int = 48
    n_inputs: int = 13
    n_signals: int = 12
    d_model: int = 32
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1


def model_inputs(X: np.ndarray, minutes: np.ndarray, ref: GoldenReference | None = None) -> np.ndarray:
    """[n, 13] float32: golden z of the 12 signals, clipped, missing = 0; culture age / 14 days."""
    ref = ref or load_reference()
    bins = np.clip((minutes // ref.bin_min).astype(np.int64), 0, len(ref.median) - 1)
    z = np.clip(np.nan_to_num(ref.z(X, bins)), -Z_CLIP, Z_CLIP)
    return np.hstack([z, (minutes / (14 * 1440.0))[:, None]]).astype(np.float32)


class _AttentionPool(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.score = nn.Linear(d, 1)

    def weights(self, h: torch.Tensor) -> torch.Tensor:  # [b, w, d] -> [b, w]
        return torch.softmax(self.score(h).squeeze(-1), dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [b, w, d] -> [b, d]
        return (self.weights(h).unsqueeze(-1) * h).sum(dim=1)


@dataclass(frozen=True)
class Encoded:
    """What the hybrid encoder makes of a window: the fused vector and the weights that made it (the gate's mix
    of the Transformer branch, each branch's attention over time), which explanations may read."""

    fused: torch.Tensor  # [b, d]
    gate: torch.Tensor  # [b, d], 1 = all Transformer
    attention_t: torch.Tensor  # [b, w]
    attention_l: torch.Tensor  # [b, w]


class HybridEncoder(nn.Module):
    """The Transformer + BiLSTM hybrid over a window: a linear projection, a Transformer encoder (learned
    positions) and a BiLSTM, each pooled by attention, mixed by a learned gate. Shared by the windowed scorer
    (below) and the patient outcome model (`outcomes.model`). Its parameters sit on the module itself (not in a
    submodule) so that a subclass's state_dict keys are the scorer's as they always were."""

    def __init__(self, n_inputs: int, window: int, d_model: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        d = d_model
        self.project = nn.Linear(n_inputs, d)
        self.position = nn.Parameter(torch.zeros(1, window, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True)
        self.pool_t, self.pool_l = _AttentionPool(d), _AttentionPool(d)
        self.gate = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(dropout)

    def encode(self, x: torch.Tensor) -> Encoded:
        """x [b, window, n_inputs] -> the fused vector (dropout applied: MC dropout keeps it on) and its weights."""
        h = self.project(x)
        th = self.transformer(h + self.position)
        lstm_out, _ = self.lstm(h)
        at, al = self.pool_t.weights(th), self.pool_l.weights(lstm_out)
        t = (at.unsqueeze(-1) * th).sum(dim=1)
        l_ = (al.unsqueeze(-1) * lstm_out).sum(dim=1)
        g = torch.sigmoid(self.gate(torch.cat([t, l_], dim=-1)))
        return Encoded(self.drop(g * t + (1 - g) * l_), g, at, al)


class HybridScorer(HybridEncoder):
    def __init__(self, cfg: ScorerConfig = ScorerConfig()) -> None:
        super().__init__(cfg.n_inputs, cfg.window, cfg.d_model, cfg.heads, cfg.layers, cfg.dropout)
        self.cfg = cfg
        self.forecast = nn.Linear(cfg.d_model, cfg.n_signals)
        self.classify = nn.Linear(cfg.d_model, len(CLASSES))
        self.titer = nn.Linear(cfg.d_model, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [b, window, n_inputs] -> (next-tick z [b, 12], class logits [b, 10], final titer [b])."""
        fused = self.encode(x).fused
        return self.forecast(fused), self.classify(fused), self.titer(fused).squeeze(-1)


def save(model: HybridScorer, metrics: dict, path: Path = CHECKPOINT) -> Path:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}  # small file
    torch.save({"config": asdict(model.cfg), "state_dict": state, "metrics": metrics}, path)
    return path


def load(path: Path = CHECKPOINT) -> tuple[HybridScorer, dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: train one with `biopilot train scorer`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = HybridScorer(ScorerConfig(**blob["config"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.eval()
    return model, blob.get("metrics", {})
