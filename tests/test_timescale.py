"""The time-scale study: phase edges per learning rate, the peak-step slope, its figure."""

import math

import numpy as np
import pandas as pd
import pytest

from antigrok.study.phases import PhaseThresholds, segment_phases
from antigrok.study.timescale import TIMESCALE_COLUMNS, peak_step_slope, timescale_table, write_timescale

STEPS = np.unique(np.rint(np.geomspace(1, 1e6, 300)).astype(int))


def run_frames(experiment, lr, scale_exponent=1.4):
    """One run whose whole time course is the lr=5e-3 curve with time divided by (lr/5e-3)^scale_exponent."""
    speed = (lr / 5e-3) ** scale_exponent
    t = np.log10(STEPS * speed)
    test = 0.2 + 0.65 / (1 + np.exp(-(t - 4.0) * 4)) - 0.3 / (1 + np.exp(-(t - 5.0) * 4))
    log = pd.DataFrame({"step": STEPS, "train_acc": np.where(t > 3.5, 1.0, 0.5), "test_acc": test,
                        "train_loss": 0.0, "test_loss": 0.0})
    phases = segment_phases(log, PhaseThresholds(smoothing_window=1))
    checkpoints = STEPS[::10]
    tc = np.log10(checkpoints * speed)
    htsr = pd.DataFrame({"step": np.repeat(checkpoints, 2), "layer": ["fc1", "fc2"] * len(checkpoints),
                         "alpha": np.repeat(6.0 - 2.5 * np.clip(tc - 3, 0, None), 2)})
    traps = htsr[["step", "layer"]].assign(num_traps=np.repeat((tc > 4.6).astype(int), 2))
    tag = dict(experiment=experiment, weight_decay=0.0, seed=0)
    return [frame.assign(**tag) for frame in (log, phases, htsr, traps)]


def study(lrs, last_steps=None):
    frames = [run_frames(f"mnist_lr{lr:g}", lr) for lr in lrs]
    logs, phases, htsr, traps = (pd.concat([f[i] for f in frames], ignore_index=True) for i in range(4))
    return logs, phases, htsr, traps, {f"mnist_lr{lr:g}": lr for lr in lrs}


def test_slope_recovers_the_compression_of_the_time_axis():
    logs, phases, htsr, traps, lrs = study([2.5e-3, 5e-3, 1e-2, 2e-2])
    table = timescale_table(logs, phases, htsr, traps, lrs, {name: ["fc1", "fc2"] for name in lrs}, 2.0)
    assert table.columns.tolist() == TIMESCALE_COLUMNS
    assert table["lr"].tolist() == [2.5e-3, 5e-3, 1e-2, 2e-2]
    assert table["peak_inside_run"].all()
    # every edge moves by the same factor: peak_step ~ lr^-1.4
    slope = peak_step_slope(table)
    assert slope["slope"].iloc[0] == pytest.approx(-1.4, abs=0.05)
    assert slope["peak_step_ratio_per_lr_decade"].iloc[0] == pytest.approx(10**1.4, rel=0.15)
    row = table.set_index("lr").loc[5e-3]
    assert 10**4.6 <= row["first_alpha_below_critical_step"] <= 10**4.85  # alpha < 2 from t = 4.6, checkpoints 0.2 decades apart
    assert 10**4.5 < row["first_trap_step"] < 10**4.8
    assert row["fit_step"] < row["peak_step"] < row["anti_grokking_start_step"] <= row["collapse_step"]


def test_a_run_that_ends_before_its_peak_is_left_out_of_the_slope():
    logs, phases, htsr, traps, lrs = study([5e-4, 5e-3, 1e-2])
    short = logs["step"] <= 3e4  # the lr 5e-4 run is cut long before its peak
    keep = (logs["experiment"] != "mnist_lr0.0005") | short
    phases_short = phases[(phases["experiment"] != "mnist_lr0.0005")]
    cut = logs[keep]
    slow = cut[cut["experiment"] == "mnist_lr0.0005"].drop(columns=["experiment", "weight_decay", "seed"])
    phases_slow = segment_phases(slow, PhaseThresholds(smoothing_window=1)).assign(
        experiment="mnist_lr0.0005", weight_decay=0.0, seed=0)
    table = timescale_table(cut, pd.concat([phases_short, phases_slow]), htsr, traps, lrs,
                            {name: ["fc1", "fc2"] for name in lrs}, 2.0)
    slow_row = table.set_index("lr").loc[5e-4]
    assert not slow_row["peak_inside_run"] and math.isnan(slow_row["collapse_step"])
    slope = peak_step_slope(table)
    assert slope["n_runs"].iloc[0] == 2 and slope["lrs"].iloc[0] == "0.005 0.01"


def test_write_timescale_outputs(tmp_path):
    logs, phases, htsr, traps, lrs = study([5e-3, 1e-2])
    paths = {}
    for name, frame in (("train_log", logs), ("phases", phases), ("htsr", htsr), ("traps", traps)):
        paths[name] = []
        for experiment, group in frame.groupby("experiment"):
            path = tmp_path / "runs" / experiment / "wd0.0" / "seed0" / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            group.drop(columns=["experiment", "weight_decay", "seed"]).to_csv(path, index=False)
            paths[name].append(path)
    outputs = {key: tmp_path / "out" / name for key, name in [
        ("table_csv", "t.csv"), ("table_md", "t.md"), ("slope_csv", "s.csv"),
        ("figure_png", "f.png"), ("figure_pdf", "f.pdf")]}
    write_timescale(paths["train_log"], paths["phases"], paths["htsr"], paths["traps"], lrs,
                    {name: ["fc1", "fc2"] for name in lrs}, 2.0, outputs)
    assert pd.read_csv(outputs["table_csv"])["lr"].tolist() == [5e-3, 1e-2]
    assert "Slope of log10(peak_step)" in outputs["table_md"].read_text(encoding="utf-8")
    assert outputs["figure_png"].read_bytes()[:4] == b"\x89PNG" and outputs["figure_pdf"].stat().st_size > 1000
    # The titles name the experiments of the config, not the MNIST MLP whatever ran.
    markdown = outputs["table_md"].read_text(encoding="utf-8")
    assert "experiments mnist_lr0.005, mnist_lr0.01," in markdown and "MNIST MLP" not in markdown


def test_timescale_markdown_is_utf8_whatever_the_locale(tmp_path):
    # write_text without an encoding used the locale's: under an ASCII locale the "—" raised.
    import os
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{__file__}::test_write_timescale_outputs"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
