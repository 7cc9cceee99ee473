"""Learn a cohort, draw from it, and regenerate what fails the gate, round by round.

A seeded fifth of the real rows is held out (never learned; the gate's DCR and utility test rows). Each round
draws the missing records, rejects records that copy a real row, scores the cohort with the gate, and if it
fails adjusts before the next round:
- columns whose shape fails (KS/TV complement below `min_shapes`) are conditioned: their tokens' logits
  get the log ratio of the real to the synthetic token frequencies added (cumulative over rounds), and the whole
  cohort is redrawn;
- pair trends or detection failing: the temperature is lowered by `TEMPERATURE_STEP` (sharper conditionals
  follow the learned dependencies more closely);
- detection failing: the `REJECT_SHARE` of records the detection classifier finds most synthetic are rejected
  and redrawn.
The loop ends when the gate passes or after `rounds` rounds; every round's scores are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cohorts import gate, generator
from cohorts.codec import TableCodec
from cohorts.table import CohortInputError, ColumnSpec, rounded

HOLDOUT_SHARE = 0.2
TEMPERATURE_STEP = 0.9
MIN_TEMPERATURE = 0.5
REJECT_SHARE = 0.2
MAX_REDRAWS = 5  # draws per round to replace rejected copies


@dataclass
class Round:
    number: int
    temperature: float
    rejected_copies: int
    rejected_by_detection: int
    conditioned_columns: list[str]
    report: gate.GateReport

    def as_json(self) -> dict:
        return {"round": self.number, "temperature": round(self.temperature, 4),
                "rejected_copies": self.rejected_copies, "rejected_by_detection": self.rejected_by_detection,
                "conditioned_columns": self.conditioned_columns, **self.report.as_json()}


@dataclass
class Synthesis:
    frame: pd.DataFrame  # the synthetic records, every column of the spec (new ids)
    rounds: list[Round] = field(default_factory=list)
    epochs: int = 0
    validation_loss: float = float("nan")

    @property
    def final(self) -> gate.GateReport:
        return self.rounds[-1].report

    def as_json(self) -> dict:
        return {"passed": self.final.passed, "failed": self.final.failed, "epochs": self.epochs,
                "validation_loss": round(self.validation_loss, 4),
                "rounds": [r.as_json() for r in self.rounds]}


def split_holdout(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, holdout rows): a seeded HOLDOUT_SHARE of the rows held out."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_holdout = max(1, int(round(HOLDOUT_SHARE * len(frame))))
    return (frame.iloc[np.sort(order[n_holdout:])].reset_index(drop=True),
            frame.iloc[np.sort(order[:n_holdout])].reset_index(drop=True))


def _token_bias(codec: TableCodec, real: pd.DataFrame,
                synthetic: pd.DataFrame, names: list[str], bias: np.ndarray) -> np.ndarray:
    """`bias` plus, for each named column, log(real / synthetic frequency) of its tokens."""
    bias = bias.copy()
    for position, c in enumerate(codec.columns):
        if c.name not in names:
            continue
        real_tokens, synth_tokens, size = c.encode(real[c.name]), c.encode(synthetic[c.name]), c.size
        # add-one smoothing: a token the real data never shows is pushed down, not to minus infinity
        real_freq = (np.bincount(real_tokens, minlength=size) + 1) / (len(real_tokens) + size)
        synth_freq = (np.bincount(synth_tokens, minlength=size) + 1) / (len(synth_tokens) + size)
        bias[position, :size] += np.log(real_freq / synth_freq)
    return bias


def _new_ids(spec: list[ColumnSpec], n: int) -> dict[str, list[str]]:
    return {c.name: [f"s{i:06d}" for i in range(n)] for c in spec if c.kind == "id"}


def synthesize(real: pd.DataFrame, spec: list[ColumnSpec], n: int, *, seed: int = 0, target: str | None = None,
               settings: gate.GateSettings | None = None, config: generator.GeneratorConfig | None = None,
               rounds: int = 5,
               on_epoch: Callable[[int, float], None] | None = None,
               on_round: Callable[[Round], None] | None = None) -> Synthesis:
    """`n` synthetic records learned from `real` (a frame of `spec`'s columns), gated round by round."""
    if n < gate.MIN_SCORED_ROWS:
        raise CohortInputError(f"--n must be at least {gate.MIN_SCORED_ROWS} (the gate scores no fewer), got {n}")
    settings, config = settings or gate.GateSettings(), config or generator.GeneratorConfig()
    gate.check_target(spec, target)
    columns = gate.learned(spec)
    names = [c.name for c in columns]
    train_rows, holdout = split_holdout(real, seed)
    codec = TableCodec.fit(train_rows[names], [c.name for c in columns if c.kind == "numeric"])
    losses: list[float] = []

    def epoch_done(epoch: int, loss: float) -> None:
        losses.append(loss)
        if on_epoch:
            on_epoch(epoch, loss)

    model = generator.train(codec.encode(train_rows[names]), codec.vocab_sizes,
                            codec.token_scores(max(codec.vocab_sizes)), config, seed, epoch_done)
    every_real = pd.concat([train_rows, holdout], ignore_index=True)
    draws = iter(range(seed * 1_000_003, seed * 1_000_003 + 10**6))  # a fresh seeded draw each time

    def draw(count: int, temperature: float, bias: np.ndarray) -> pd.DataFrame:
        tokens = generator.sample(model, count, next(draws), temperature, bias)
        return rounded(codec.decode(tokens, np.random.default_rng(next(draws))), columns)

    temperature, bias = 1.0, codec.impossible(max(codec.vocab_sizes))
    pool = pd.DataFrame(columns=names)
    result = Synthesis(pool, epochs=len(losses), validation_loss=model.validation_loss)
    conditioned: list[str] = []
    rejected_by_detection = 0
    for number in range(1, rounds + 1):
        copies = 0
        for _ in range(MAX_REDRAWS):
            missing = n - len(pool)
            if missing <= 0:
                break
            fresh = draw(missing, temperature, bias)
            is_copy = gate.copy_mask(every_real, fresh, columns)
            copies += int(is_copy.sum())
            pool = pd.concat([pool, fresh[~is_copy]], ignore_index=True) if len(pool) else fresh[~is_copy]
        pool = pool.reset_index(drop=True)
        if len(pool) < gate.MIN_SCORED_ROWS:  # every draw copied a real row: redrawing cannot help
            raise CohortInputError(
                f"{copies} of the records drawn copied a real row in every learned column ({', '.join(names)}): "
                "their values make too few distinct rows for records that copy no patient; add columns with "
                "more distinct values (numbers such as age or weight)")
        report = gate.evaluate(train_rows, pool, spec, holdout=holdout, target=target, settings=settings,
                               seed=seed + number)
        result.rounds.append(Round(number, temperature, copies, rejected_by_detection, conditioned, report))
        if on_round:
            on_round(result.rounds[-1])
        if report.passed or number == rounds:
            break
        conditioned, rejected_by_detection = [], 0
        if "pairs" in report.failed or "detection_auc" in report.failed:
            temperature = max(MIN_TEMPERATURE, temperature * TEMPERATURE_STEP)
        if "shapes" in report.failed:
            conditioned = [name for name, score in report.column_shapes.items() if score < settings.min_shapes]
            conditioned = conditioned or [min(report.column_shapes, key=report.column_shapes.get)]
            bias = _token_bias(codec, train_rows, pool, conditioned, bias)
            pool = pool.iloc[:0]  # the conditioning changes every record: redraw them all
        elif "detection_auc" in report.failed:
            synthetic_p = gate.classifier_scores(train_rows[names], pool, columns, seed + number)
            reject = np.argsort(-synthetic_p)[:int(REJECT_SHARE * len(pool))]
            rejected_by_detection = len(reject)
            pool = pool.drop(index=reject).reset_index(drop=True)
        else:  # pairs, adherence, DCR or utility: a fresh cohort at the new temperature
            pool = pool.iloc[:0]
    frame = pool.copy()
    for name, ids in _new_ids(spec, len(frame)).items():
        frame[name] = ids
    result.frame = frame[[c.name for c in spec]]
    return result
