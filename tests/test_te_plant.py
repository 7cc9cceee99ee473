"""The Tennessee Eastman suite of `biopilot bench detect --make-te` (biopilot/bench/te_plant.py): the published
process model's runs in the fault-detection literature's protocol, read by the bench like any user's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from biopilot.bench import detect as bench
from biopilot.bench import te_plant

pytestmark = pytest.mark.integration  # a process pool simulating about 110 h of plant


def test_a_te_suite_has_the_literatures_signals_and_labels_and_its_feed_ratio_step_is_found(tmp_path: Path) -> None:
    onset = 40
    written = te_plant.make_suite(tmp_path, seed=0, faults=(1,), train_rows=200, test_rows=120, onset=onset,
                                  workers=2)
    assert sorted(p.name for p in written) == ["fault_01.csv", "normal_test.csv", "normal_train.csv"]
    fault = pacsv.read_csv(tmp_path / "fault_01.csv")
    assert fault.column_names == ["time_min", *te_plant.signal_names(), "label"]
    assert np.allclose(np.diff(fault["time_min"].to_numpy()), 3.0)  # a reading every 3 min
    label = fault["label"].to_numpy()
    assert len(label) == 120 and not label[:onset].any() and label[onset:].all()
    assert not pacsv.read_csv(tmp_path / "normal_test.csv")["label"].to_numpy().any()
    assert "label" not in pacsv.read_csv(tmp_path / "normal_train.csv").column_names
    # two runs on their own noise seeds: the same plant, not the same rows
    train, test = (pacsv.read_csv(tmp_path / f"normal_{k}.csv")["xmeas_09"].to_numpy() for k in ("train", "test"))
    assert not np.allclose(train[:120], test)

    res = bench.run(tmp_path, ["pca:raw", "cva:raw"], [0.05])
    fused = {r["file"]: r for r in res["results"] if r["detector"] == "fusion"}
    assert fused["fault_01"]["detection_rate"] > 0.9  # IDV(1), the A/C feed ratio step: found by every method
    assert fused["normal_test"]["false_alarm_rate"] < 0.2
