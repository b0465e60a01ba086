"""The long runs beside the rescaled runs at equal lr x step (antigrok.rescaled_comparison)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from antigrok.study.rescaled_comparison import (
    RunRows,
    phase_anchors,
    plot_same_time,
    plot_traps_over_time,
    read_run_rows,
    run_series,
    runs_of_folder,
    same_time_rows,
    same_time_summary,
    same_time_table,
    summary_markdown,
)

LAYERS = ["fc1", "fc2", "fc3"]


def run_frames(steps, test_acc, alpha_fc2, traps_fc2, centred=True, peak_step=None, log_steps=None):
    """A run's five CSVs as frames: ``steps`` are the analysed checkpoints, the train log also has
    ``log_steps`` (rows between the checkpoints)."""
    log_steps = sorted(set(steps) | set(log_steps or []))
    accuracy = dict(zip(steps, test_acc))
    train_log = pd.DataFrame({
        "step": log_steps, "train_loss": 0.0, "train_acc": 1.0, "test_loss": 0.0,
        "test_acc": [accuracy.get(step, -1.0) for step in log_steps],
    })
    htsr = pd.DataFrame([
        {"step": step, "layer": layer, "alpha": {"fc1": 3.0, "fc2": a2, "fc3": 4.0}[layer]}
        for step, a2 in zip(steps, alpha_fc2) for layer in LAYERS
    ])
    traps = pd.DataFrame([
        {"step": step, "layer": layer, "num_traps": t2 if layer == "fc2" else 1,
         **({"num_traps_centered": t2 - 1 if layer == "fc2" else 0} if centred else {})}
        for step, t2 in zip(steps, traps_fc2) for layer in LAYERS
    ])
    progress = pd.DataFrame({"step": steps, "l2_norm": [10.0 + step / 1e5 for step in steps]})
    phases = pd.DataFrame({
        "step": steps, "fit_step": 100, "peak_step": peak_step if peak_step is not None else steps[len(steps) // 2],
        "collapse_step": np.nan, "grokking_start_step": 200, "anti_grokking_start_step": np.nan,
    })
    return {"train_log.csv": train_log, "htsr.csv": htsr, "traps.csv": traps, "progress.csv": progress,
            "phases.csv": phases}


def rows_of(frames, name, weight_decay, lr):
    series = run_series(frames["train_log.csv"], frames["htsr.csv"], frames["traps.csv"], frames["progress.csv"])
    return RunRows(name, weight_decay, lr, series, phase_anchors(frames["phases.csv"], series))


LONG_STEPS = [0, 1000, 10000, 100000, 1000000]
VALUES = dict(test_acc=[0.1, 0.5, 0.8, 0.7, 0.5], alpha_fc2=[5.0, 4.0, 3.0, 2.5, 1.8], traps_fc2=[0, 1, 2, 3, 5])


def test_series_takes_each_quantity_at_the_analysed_steps():
    frames = run_frames(LONG_STEPS, **VALUES, log_steps=[500, 5000])
    series = run_series(frames["train_log.csv"], frames["htsr.csv"], frames["traps.csv"], frames["progress.csv"])
    assert list(series.index) == LONG_STEPS  # the train log's extra rows are not analysed steps
    assert series["test_acc"].tolist() == VALUES["test_acc"]
    assert series["alpha_fc2"].tolist() == VALUES["alpha_fc2"]
    assert series["traps_fc2"].tolist() == VALUES["traps_fc2"]
    assert series["traps"].tolist() == [t + 2 for t in VALUES["traps_fc2"]]
    assert series["traps_centered"].tolist() == [t - 1 for t in VALUES["traps_fc2"]]
    assert series.loc[1000000, "l2_norm"] == pytest.approx(20.0)


def test_a_run_without_centred_counts_reads_nan_not_zero():
    frames = run_frames(LONG_STEPS, **VALUES, centred=False)
    series = run_series(frames["train_log.csv"], frames["htsr.csv"], frames["traps.csv"], frames["progress.csv"])
    assert series["traps_centered"].isna().all() and series["traps_centered_fc2"].isna().all()
    assert series["traps_fc2"].tolist() == VALUES["traps_fc2"]


def test_an_exactly_rescaled_run_matches_the_long_run_at_every_anchor():
    # A run at 10x the lr whose rows at step s are the long run's at step 10 s: at equal lr x step
    # both must read the same values, at every anchor of either run.
    long = rows_of(run_frames(LONG_STEPS, **VALUES, peak_step=10000), "mnist_mlp/wd0.0/seed0", 0.0, 5e-4)
    rescaled_steps = [step // 10 for step in LONG_STEPS]
    rescaled = rows_of(run_frames(rescaled_steps, **VALUES, peak_step=1000), "mnist_lr5e-3/wd0.0/seed2", 0.0, 5e-3)
    rows = same_time_rows(long, rescaled)
    peak = rows[(rows["anchor_of"] == "rescaled") & (rows["anchor"] == "peak")].set_index("quantity")
    assert peak.loc["test_acc", "lr_step"] == pytest.approx(5.0)
    assert peak.loc["test_acc", "long_step"] == 10000 and peak.loc["test_acc", "rescaled_step"] == 1000
    equal = rows.dropna(subset=["long_value", "rescaled_value"])
    differs = equal[(equal["quantity"] != "l2_norm") & (equal["long_value"] != equal["rescaled_value"])]
    assert differs.empty, differs
    assert set(rows["anchor"]) >= {"fit", "grokking start", "peak", "end"}
    assert "decline start" not in set(rows["anchor"])  # NaN edge: no anchor, not a fake step


def test_a_time_the_long_run_has_not_reached_reads_nan():
    long = rows_of(run_frames(LONG_STEPS[:4], **{k: v[:4] for k, v in VALUES.items()}), "long", 0.0, 5e-4)
    rescaled = rows_of(run_frames([0, 100, 1000, 10000, 100000], **VALUES), "rescaled", 0.0, 5e-3)
    rows = same_time_rows(long, rescaled)
    end = rows[(rows["anchor_of"] == "rescaled") & (rows["anchor"] == "end")]
    assert end["long_step"].isna().all() and end["long_value"].isna().all()  # lr x step 500 is step 1e6
    assert end["rescaled_value"].notna().all()


def test_pairs_only_runs_of_the_same_weight_decay_and_summarises_with_n_and_range():
    long = rows_of(run_frames(LONG_STEPS, **VALUES), "long", 0.0, 5e-4)
    long_wd = rows_of(run_frames(LONG_STEPS, **VALUES), "long wd", 0.01, 5e-4)
    rescaled = [
        rows_of(run_frames([s // 10 for s in LONG_STEPS], **{**VALUES, "test_acc": [0.1, 0.5, acc, 0.7, 0.5]}),
                f"r{seed}", 0.0, 5e-3)
        for seed, acc in enumerate([0.6, 0.7, 0.9])
    ]
    table = same_time_table([long, long_wd], rescaled)
    assert set(table["long_run"]) == {"long"}  # no rescaled run has weight decay 0.01
    summary = same_time_summary(table)
    peak = summary[(summary["anchor"] == "peak") & (summary["quantity"] == "test_acc")].iloc[0]
    assert peak["n_rescaled_runs"] == 3
    assert (peak["rescaled_median"], peak["rescaled_min"], peak["rescaled_max"]) == (0.7, 0.6, 0.9)
    assert peak["long_median"] == 0.8 and peak["n_long_reached"] == 3
    markdown = summary_markdown(summary, ["test_acc", "alpha_fc2"])
    assert "### weight decay 0" in markdown and "0.7 [0.6, 0.9]" in markdown


def test_reads_a_folder_with_each_experiments_lr(tmp_path):
    for experiment, seed in (("mnist_lr5e-3", 2), ("other", 0)):
        run_dir = tmp_path / "runs" / experiment / "wd0.0" / f"seed{seed}"
        run_dir.mkdir(parents=True)
        for name, frame in run_frames(LONG_STEPS, **VALUES).items():
            frame.to_csv(run_dir / name, index=False)
    runs = runs_of_folder(tmp_path, {"mnist_lr5e-3": {"optimizer": {"lr": 5e-3}}})
    assert [(run.name, run.lr, run.weight_decay) for run in runs] == [("mnist_lr5e-3/wd0.0/seed2", 5e-3, 0.0)]
    (tmp_path / "runs" / "mnist_lr5e-3" / "wd0.0" / "seed2" / "traps.csv").unlink()
    with pytest.raises(FileNotFoundError, match="traps.csv"):
        read_run_rows(tmp_path / "runs" / "mnist_lr5e-3" / "wd0.0" / "seed2", 5e-3)


def test_figures_draw_one_panel_row_per_weight_decay():
    long = [rows_of(run_frames(LONG_STEPS, **VALUES), f"long{wd}", wd, 5e-4) for wd in (0.0, 0.01)]
    rescaled = [rows_of(run_frames([s // 10 for s in LONG_STEPS], **VALUES), "r", 0.0, 5e-3)]
    figure = plot_same_time(long, rescaled, "title")
    assert len(figure.axes) == 8
    lines = figure.axes[0].get_lines()
    assert [line.get_color() for line in lines][-1] == "black"
    assert np.allclose(lines[-1].get_xdata(), [s * 5e-4 for s in LONG_STEPS[1:]])
    traps = plot_traps_over_time(long, "traps")
    assert len(traps.axes) == 6 and len(traps.axes[0].get_lines()) == 2  # 2 runs x 3 layers; raw, centred
    assert not math.isnan(traps.axes[0].get_lines()[0].get_ydata()[0])
