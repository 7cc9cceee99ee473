"""`biopilot detect` on a user's own file: output columns, metrics with labels, clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]


@pytest.fixture
def historian(tmp_path):
    rng = np.random.default_rng(0)
    n = 1500
    latent = rng.normal(size=n)
    X = np.column_stack([latent, 2 * latent, -latent]) + 0.05 * rng.normal(size=(n, 3))
    label = np.zeros(n)
    X[1200:1300, 1] += 3.0  # breaks the correlation between the signals
    label[1200:1300] = 1
    table = pa.table({"time": pa.array(np.arange(n) * 1_000_000, pa.int64()).cast(pa.timestamp("us")),
                      "flow": X[:, 0], "pressure": X[:, 1], "valve": X[:, 2], "anomaly": label})
    path = tmp_path / "export.csv"
    pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter=";"))
    return path


def _detect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOPILOT, "detect", *args], capture_output=True, text=True)


def test_help_prints_every_option_without_a_traceback(capsys):
    from biopilot.cli import main

    # a bare "%" in an option's help (as in "95 % interval") is a format directive to argparse
    with pytest.raises(SystemExit) as exit_:
        main(["detect", "--help"])
    assert exit_.value.code == 0
    assert "95 % interval" in capsys.readouterr().out


@pytest.mark.integration
def test_scores_keep_time_add_columns_and_report_metrics(historian, tmp_path):
    out = tmp_path / "scores.parquet"
    res = _detect("--input", str(historian), "--sep", ";", "--time-col", "time", "--label-col", "anomaly",
                  "--train-rows", "600", "--detectors", "pca", "--out", str(out))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(out)
    assert table.column_names == ["time", "score_pca", "score_fusion", "is_alarm", "drivers"]
    assert table.num_rows == 1500
    alarm = table["is_alarm"].to_numpy()
    assert alarm[1205:1300].mean() > 0.9 and alarm[600:1190].mean() < 0.05
    named = [d.split(",")[0] for d in table["drivers"].to_pylist()[1205:1300] if d]
    assert named.count("pressure") > 0.9 * len(named)  # the alarm rows name the signal that broke away
    assert "F1" in res.stdout and "FAR" in res.stdout and "MAR" in res.stdout


@pytest.mark.integration
def test_a_separate_training_file(historian, tmp_path):
    table = pacsv.read_csv(historian, parse_options=pacsv.ParseOptions(delimiter=";"))
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pq.write_table(table.slice(0, 600), train)
    pq.write_table(table.slice(600), test)
    out = tmp_path / "scores.parquet"
    res = _detect("--input", str(test), "--train-file", str(train), "--time-col", "time", "--ignore-cols",
                  "anomaly", "--detectors", "pca", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(out).num_rows == 900
    # normal operation exported without the label column the test file has: trained on as it is
    pq.write_table(table.slice(0, 600).drop_columns(["anomaly"]), train)
    res = _detect("--input", str(test), "--train-file", str(train), "--time-col", "time", "--label-col",
                  "anomaly", "--detectors", "pca", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(out).num_rows == 900 and "F1" in res.stdout


@pytest.mark.integration
@pytest.mark.parametrize(("content", "args", "needle"), [
    (None, ["--time-col", "nope"], "time column 'nope' not found"),
    (None, ["--time-col", "time", "--label-col", "missing"], "label column 'missing' not found"),
    ("time;a\n1;x\n2;y\n3;z\n", ["--time-col", "time", "--train-rows", "2"], "column 'a' is not numeric"),
    ("time;a\n", ["--time-col", "time"], "no rows"),
    (None, ["--time-col", "time", "--detectors", "magic"], "unknown detector(s) magic"),
    ("time;a;a\n1;1;2\n2;2;3\n3;3;4\n", ["--time-col", "time", "--train-rows", "2"],
     "column(s) 'a' appear more than once"),
    ("time;a\n1;1\n", ["--time-col", "time"], "1 row(s) are too few"),
    ("time;a;b\n1;1;2\n2;inf;3\n3;3;4\n4;1;2\n", ["--time-col", "time", "--train-rows", "2"],
     "column 'a' is infinite at row 2"),
    ("time;a;b\n1;1;2\n3;2;3\n2;3;4\n4;1;2\n", ["--time-col", "time", "--train-rows", "3"],
     "time column 'time' goes back at row 3"),
    (None, ["--time-col", "time", "--sep", ";;"], "--sep must be one character"),
    (None, ["--time-col", "time", "--margin-detectors", "pca"], "--margin-detectors go with a budget"),
    (None, ["--time-col", "time", "--far", "0.01", "--detectors", "pca", "--margin-detectors", "pca"],
     "pca both under the budget and beyond the margin"),
    (None, ["--time-col", "time", "--out", "/no/such/folder/o.parquet"], "no folder /no/such/folder"),
])
def test_bad_input_is_one_line_and_exit_2(historian, tmp_path, content, args, needle):
    path = historian
    if content is not None:
        path = tmp_path / "bad.csv"
        path.write_text(content)
    out = tmp_path / "o.parquet"
    res = _detect("--input", str(path), "--sep", ";", "--out", str(out), *args)
    assert res.returncode == 2
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.integration
def test_a_wandering_signal_is_left_out_and_named_so_its_drift_raises_no_alarm(tmp_path):
    rng = np.random.default_rng(1)
    n = 1500
    latent = rng.normal(size=n)
    flow = latent + 0.05 * rng.normal(size=n)
    pressure = 2 * latent + 0.05 * rng.normal(size=n)
    temp_c = 30 + 0.004 * np.arange(n) + 0.001 * rng.normal(size=n)  # creeps up all run: no level to learn
    table = pa.table({"time": np.arange(n), "flow": flow, "pressure": pressure, "temp_c": temp_c})
    path = tmp_path / "drift.parquet"
    pq.write_table(table, path)
    alarms = {}
    for keep in (False, True):
        out = tmp_path / f"scores-{keep}.parquet"
        extra = ["--min-roughness", "0"] if keep else []
        res = _detect("--input", str(path), "--time-col", "time", "--detectors", "pca", "--out", str(out), *extra)
        assert res.returncode == 0, res.stderr
        assert ("left out 1 signal(s)" in res.stdout and "temp_c" in res.stdout) is not keep
        alarms[keep] = pq.read_table(out)["is_alarm"].to_numpy()[400:].mean()
    assert alarms[False] < 0.02 and alarms[True] > 0.5


def test_smoothing_is_causal_and_carries_over_missing_readings():
    from detectors.external import smoothed

    x = np.array([[np.nan], [1.0], [1.0], [np.nan], [5.0], [5.0]])
    out = smoothed(x, 3)  # alpha 0.5
    assert np.isnan(out[0, 0]) and np.isnan(out[3, 0])  # a gap stays a gap
    assert out[1, 0] == 1.0 and out[2, 0] == 1.0  # a leading gap starts the mean at the first reading
    assert out[4, 0] == 3.0 and out[5, 0] == 4.0  # the gap carried 1.0; then halfway to 5 each row
    changed = x.copy()
    changed[5, 0] = 100.0
    assert np.array_equal(smoothed(changed, 3)[:5], out[:5], equal_nan=True)  # no look-ahead
