"""The outcome model: the EvoClone hybrid (the windowed scorer's Transformer + BiLSTM encoder with attention
pooling and a learned gate, `detectors.scorer_model.HybridEncoder`) over a patient's last five days of hourly
data (read in 4-hour patches: 30 steps, not 120, a quarter of the LSTM's sequential work on a CPU), with the static covariates and genotype embeddings joined after pooling; heads: the three risks of
`CLASS_HEADS` (logits) and the two values of `REGRESSION_HEADS`.

Around the network, what makes its answers usable (`OutcomeModel`):
- MC dropout (`mc_samples` passes in one batch): the probability is the mean of the passes, [lo, hi] their
  10th-90th percentiles, the regression's spread their SD;
- temperature scaling per classification head (`outcomes.calibration`), fitted on held-out patients;
- conformal prediction (`outcomes.conformal`, crepes, Mondrian by genotype group): a prediction set per
  classification head and an interval per regression head at 90 %;
- an alert threshold per classification head (Youden's J on the calibration patients);
- explanations (`outcomes.explain`: integrated gradients);
- per risk, the predictor served: the network's head, or a bagged logistic regression on the flattened inputs
  (`outcomes.linear_head`, its members standing in for the MC passes) where that ranked the validation patients
  better by more than the network's standard error (opt-in, `TrainConfig.choose_heads`; `linear_heads`,
  `served_by`; the temperature, threshold and conformal scores are then the regression's).

`OutcomeModel.predict(records)` is the serving path (one batched forward pass); `predict_dataset(ds)` the
evaluation's. `save(directory)` writes `<version>.pt`; `load_model()` loads the shipped checkpoint
(`outcomes/outcome_model.pt`), `load_model(path)` a file or the newest in a directory.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from torch import nn

from detectors.scorer_model import HybridEncoder
from outcomes.calibration import sigmoid
from outcomes.conformal import ClassConformal, RegressionConformal
from outcomes.contract import (
    CLASS_HEADS,
    REGRESSION_HEADS,
    CheckpointError,
    HeadPrediction,
    PatientRecord,
    RiskPrediction,
)
from outcomes.explain import explain_batch
from outcomes.features import (
    CATEGORICAL,
    SERIES,
    STATIC,
    STATIC_BASE,
    WINDOW_H,
    Encoded,
    encode_records,
    metoprolol_group,
    warfarin_group,
)
from outcomes.linear_head import LinearHead
from outcomes.twin_features import TWIN_STATIC

CHECKPOINT = Path(__file__).parent / "outcome_model.pt"
# regression targets are learned standardised: (y - centre) / spread
REGRESSION_SCALE: dict[str, tuple[float, float]] = {"inr_3d": (2.5, 1.0), "ttr_12w": (60.0, 25.0)}
SPREAD_QUANTILES = (0.1, 0.9)


@dataclass(frozen=True)
class OutcomeConfig:
    patch_h: int = 4  # the encoder reads the hourly rows in patches of this many hours (its time step)
    d_model: int = 32
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    embed_dim: int = 4
    mc_samples: int = 8
    # how many of `features.STATIC` the model reads: they grow by appending, so an older checkpoint reads the
    # columns of its day (`from_blob`); STATIC_BASE's alone: no twin forecast to compute
    static_inputs: int = len(STATIC)

    @property
    def twin_features(self) -> bool:
        return self.static_inputs > len(STATIC_BASE)


class OutcomeNet(nn.Module):
    def __init__(self, cfg: OutcomeConfig = OutcomeConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = HybridEncoder(len(SERIES) * cfg.patch_h, WINDOW_H // cfg.patch_h, d, cfg.heads, cfg.layers,
                                     cfg.dropout)
        self.embeddings = nn.ModuleList([nn.Embedding(len(v), cfg.embed_dim) for v in CATEGORICAL.values()])
        self.static_width = cfg.static_inputs
        self.static = nn.Sequential(nn.Linear(self.static_width + len(CATEGORICAL) * cfg.embed_dim, d), nn.GELU())
        self.trunk = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(cfg.dropout))
        self.out = nn.Linear(d, len(CLASS_HEADS) + len(REGRESSION_HEADS))

    def embed(self, categorical: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(categorical[:, i]) for i, e in enumerate(self.embeddings)], dim=-1)

    def forward_embedded(self, series: torch.Tensor, static: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """[b, 5]: the class logits then the standardised regression values."""
        b, w, f = series.shape
        fused = self.encoder.encode(series.reshape(b, w // self.cfg.patch_h, self.cfg.patch_h * f)).fused
        s = self.static(torch.cat([static[:, :self.static_width], embedded], dim=-1))
        return self.out(self.trunk(torch.cat([fused, s], dim=-1)))

    def forward(self, series: torch.Tensor, static: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(series, static, self.embed(categorical))


@dataclass
class Raw:
    """The MC-dropout passes summarised, per sample: calibrated probabilities (mean, lo, hi) [n, 3], regression
    values in their units (mean, sd) [n, 2]."""

    p: np.ndarray
    p_lo: np.ndarray
    p_hi: np.ndarray
    value: np.ndarray
    value_sd: np.ndarray


@dataclass
class OutcomeModel:
    """A trained outcome model with its calibration; implements `outcomes.contract.Predictor`."""

    net: OutcomeNet
    temperatures: dict[str, float]
    thresholds: dict[str, float]
    class_conformal: dict[str, ClassConformal]
    regression_conformal: dict[str, RegressionConformal]
    version: str = ""
    metrics: dict = field(default_factory=dict)
    created: str = ""
    # the risks served by logistic regression on the flattened inputs, where it ranked the validation patients
    # better than the network (`outcomes.train.choose_heads`); their AUROCs there per predictor
    linear_heads: dict[str, LinearHead] = field(default_factory=dict)
    validation_auroc: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.net.eval()
        if not self.version:
            self.created = self.created or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.version = f"outcome-{self.created}-{self._digest()}"

    def _digest(self) -> str:
        h = hashlib.sha1()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().numpy().tobytes())
        for k, head in sorted(self.linear_heads.items()):
            h.update(k.encode())
            h.update(head.weights.tobytes())
            h.update(head.member_weights.tobytes())
        return h.hexdigest()[:8]

    @property
    def served_by(self) -> dict[str, str]:
        """Per risk, the predictor behind its probability: `hybrid` or `logistic_regression`."""
        return {h: "logistic_regression" if h in self.linear_heads else "hybrid" for h in CLASS_HEADS}

    # ---- the forward passes ------------------------------------------------------------------------------
    def inputs(self, x: Encoded) -> Encoded:
        """`x` as this model reads it: an older checkpoint reads the static inputs of its day (the first ones)."""
        return x if x.static.shape[1] == self.net.static_width else replace(
            x, static=x.static[:, :self.net.static_width])

    def _passes(self, x: Encoded, batch: int = 4096) -> np.ndarray:
        """[mc, n, 5] outputs with dropout on (reproducible: a fixed seed): the network's, a risk served by
        logistic regression its members' logits (one fit: its logit in every pass, no spread)."""
        x = self.inputs(x)
        mc = self.net.cfg.mc_samples
        outs = []
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            self.net.train()  # dropout on: MC dropout
            try:
                for a in range(0, len(x), max(1, batch // mc)):
                    s, st, c = x.take(np.arange(a, min(len(x), a + max(1, batch // mc)))).tensors()
                    m = len(s)
                    y = self.net(s.repeat(mc, 1, 1), st.repeat(mc, 1), c.repeat(mc, 1))
                    outs.append(y.reshape(mc, m, -1).numpy())
            finally:
                self.net.eval()
        y = np.concatenate(outs, axis=1) if outs else np.zeros((mc, 0, len(CLASS_HEADS) + len(REGRESSION_HEADS)))
        for h, head in self.linear_heads.items():
            y[:, :, CLASS_HEADS.index(h)] = head.member_logits(x, mc)
        return y

    def raw(self, x: Encoded) -> Raw:
        y = self._passes(x)
        k = len(CLASS_HEADS)
        t = np.array([self.temperatures.get(h, 1.0) for h in CLASS_HEADS])
        p = sigmoid(y[:, :, :k] / t)
        lo, hi = np.quantile(p, SPREAD_QUANTILES, axis=0)
        centre = np.array([REGRESSION_SCALE[h][0] for h in REGRESSION_HEADS])
        spread = np.array([REGRESSION_SCALE[h][1] for h in REGRESSION_HEADS])
        v = y[:, :, k:] * spread + centre
        return Raw(p.mean(axis=0), lo, hi, v.mean(axis=0), v.std(axis=0))

    def predict_dataset(self, ds) -> dict[str, dict[str, np.ndarray]]:
        """Per head: `estimate`, `lo`, `hi` (classification: the MC spread; regression: the conformal interval),
        `in_set0`/`in_set1` (classification: the conformal prediction set)."""
        r = self.raw(ds.inputs)
        return self._heads(r, {h: ds.groups(h) for h in (*CLASS_HEADS, *REGRESSION_HEADS)})

    def _heads(self, r: Raw, groups: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for i, h in enumerate(CLASS_HEADS):
            sets = self.class_conformal[h].sets(r.p[:, i], groups[h])
            out[h] = {"estimate": r.p[:, i], "lo": r.p_lo[:, i], "hi": r.p_hi[:, i], "in_set0": sets[:, 0],
                      "in_set1": sets[:, 1]}
        for i, h in enumerate(REGRESSION_HEADS):
            lo, hi = self.regression_conformal[h].interval(r.value[:, i], r.value_sd[:, i], groups[h])
            out[h] = {"estimate": r.value[:, i], "lo": lo, "hi": hi, "sd": r.value_sd[:, i]}
        return out

    # ---- serving ---------------------------------------------------------------------------------------------
    def predict(self, records: Sequence[PatientRecord]) -> list[RiskPrediction]:
        """Risk for each record at its `as_of`: one batched pass (MC dropout, conformal, explanations)."""
        if not records:
            return []
        x = self.inputs(encode_records(records, twin=self.net.cfg.twin_features))
        r = self.raw(x)
        groups = {h: np.array([metoprolol_group(rec.patient) if h == "bradycardia_24h" else
                               warfarin_group(rec.patient) for rec in records], dtype=object)
                  for h in (*CLASS_HEADS, *REGRESSION_HEADS)}
        heads = self._heads(r, groups)
        target = [self._focus(heads, j, rec) for j, rec in enumerate(records)]
        explanations = explain_batch(self.net, x, target, [float(heads[h]["estimate"][j]) for j, h in enumerate(target)],
                                     self.linear_heads)
        out = []
        for j, rec in enumerate(records):
            preds = {}
            for h in CLASS_HEADS:
                v = heads[h]
                p = float(v["estimate"][j])
                preds[h] = HeadPrediction(h, "probability", p, float(v["lo"][j]), float(v["hi"][j]),
                                          tuple(c for c in (0, 1) if v[f"in_set{c}"][j]), self.thresholds[h],
                                          bool(p >= self.thresholds[h] and applies(h, rec)))
            for h in REGRESSION_HEADS:
                v = heads[h]
                preds[h] = HeadPrediction(h, "value", float(v["estimate"][j]), float(v["lo"][j]), float(v["hi"][j]))
            spread = np.mean([preds[h].hi - preds[h].lo for h in CLASS_HEADS])
            covered = 1.0 - float(x.series[j, :, SERIES.index("vitals_missing")].mean())
            attributions, sentence = explanations[j]
            out.append(RiskPrediction(
                str(rec.patient.get("patient_id", "")), str(rec.patient.get("run_id", "")), preds,
                round(float(np.clip((1.0 - spread) * covered, 0.0, 1.0)), 3), attributions, sentence, self.version,
                data_watermark(rec), {"explained_head": target[j], "served_by": self.served_by,
                                      "not_applicable": [h for h in CLASS_HEADS if not applies(h, rec)]}))
        return out

    def _focus(self, heads: dict, j: int, rec: PatientRecord) -> str:
        """The classification head to explain: the one furthest past (or nearest to) its threshold."""
        return max((h for h in CLASS_HEADS if applies(h, rec)),
                   key=lambda h: heads[h]["estimate"][j] / max(self.thresholds[h], 1e-6))

    # ---- persistence -------------------------------------------------------------------------------------------
    def to_blob(self) -> dict:
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.net.state_dict().items()}
        return {"config": asdict(self.net.cfg), "state_dict": state, "temperatures": self.temperatures,
                "thresholds": self.thresholds, "version": self.version, "created": self.created,
                "metrics": self.metrics,
                "class_conformal": {h: {"scores": c.scores.astype(np.float32).tolist(), "bins": c.bins.tolist()}
                                    for h, c in self.class_conformal.items()},
                "regression_conformal": {h: {"scores": c.scores.astype(np.float32).tolist(), "bins": c.bins.tolist()}
                                         for h, c in self.regression_conformal.items()},
                "linear_heads": {h: head.to_blob() for h, head in self.linear_heads.items()},
                "validation_auroc": self.validation_auroc}

    def save(self, directory: Path) -> Path:
        """Write `<directory>/<version>.pt`; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.version}.pt"
        buf = io.BytesIO()
        torch.save(self.to_blob(), buf)
        path.write_bytes(buf.getvalue())
        return path


def applies(head: str, rec: PatientRecord) -> bool:
    """Bradycardia is predicted for patients on metoprolol only (a dose row of it in the record)."""
    if head != "bradycardia_24h":
        return True
    return bool(rec.doses.num_rows) and "metoprolol" in set(rec.doses["drug"].to_pylist())


def data_watermark(rec: PatientRecord) -> datetime:
    """The latest event time in the record (vitals ts, labs reported_ts, doses ts), else `as_of`."""
    times = [t for table, col in ((rec.vitals, "ts"), (rec.labs, "reported_ts"), (rec.doses, "ts"))
             if table.num_rows and (t := pc.max(table[col]).as_py()) is not None]
    return max(times) if times else rec.as_of


def config_from_blob(config: dict) -> OutcomeConfig:
    """The config a checkpoint was written with; one from before `static_inputs` says `twin_features` (absent:
    False), whose inputs ended before the twin's bleeding forecast."""
    config = dict(config)
    if "static_inputs" not in config:
        twin = config.pop("twin_features", False)
        config["static_inputs"] = len(STATIC_BASE) + (TWIN_STATIC.index("twin_bleed_log_rr_14d") if twin else 0)
    if not len(STATIC_BASE) <= config["static_inputs"] <= len(STATIC):
        raise CheckpointError(f"the checkpoint reads {config['static_inputs']} static inputs, this code encodes "
                         f"{len(STATIC_BASE)}-{len(STATIC)}: a checkpoint from a newer version of biopilot?")
    return OutcomeConfig(**config)


def from_blob(blob: dict) -> OutcomeModel:
    net = OutcomeNet(config_from_blob(blob["config"]))
    net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})

    def arrays(d: dict) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(d["scores"], float), np.asarray(d["bins"], dtype=object)

    return OutcomeModel(net, dict(blob["temperatures"]), dict(blob["thresholds"]),
                        {h: ClassConformal(*arrays(d)) for h, d in blob["class_conformal"].items()},
                        {h: RegressionConformal(*arrays(d)) for h, d in blob["regression_conformal"].items()},
                        blob["version"], blob.get("metrics", {}), blob.get("created", ""),
                        {h: LinearHead.from_blob(d) for h, d in blob.get("linear_heads", {}).items()},
                        blob.get("validation_auroc", {}))


def load_model(path: Path | None = None) -> OutcomeModel:
    """The model in `path` (a .pt file, or the newest .pt in a directory); default: the shipped checkpoint."""
    path = Path(path) if path is not None else CHECKPOINT
    if path.is_dir():
        files = sorted(path.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise FileNotFoundError(f"no outcome model (*.pt) in {path}")
        path = files[-1]
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: train one with `biopilot train outcome`")
    return from_blob(torch.load(path, map_location="cpu", weights_only=True))
