"""scripts/run_overview.py: the per-run numbers of a reference README, on a hand-made run folder."""

import sys

import pandas as pd
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import run_overview  # noqa: E402 (scripts/ is no package)


def make_run(root, name="toy/wd0.0/seed0"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    pd.DataFrame({
        "step": [0, 10, 20, 30, 40, 50],
        "train_loss": [4.0, 1e-3, 1e-8, 1e-2, 1e-9, 1e-9],
        "train_acc": [0.02, 0.995, 1.0, 0.9, 1.0, 1.0],
        "test_loss": [4.0] * 6,
        "test_acc": [0.02, 0.10, 0.50, 0.40, 0.95, 0.93],
    }).to_csv(run / "train_log.csv", index=False)
    pd.DataFrame({"step": [0, 0, 50, 50], "layer": ["b", "a", "b", "a"],
                  "alpha": [3.0, 4.0, 1.5, 2.5]}).to_csv(run / "htsr.csv", index=False)
    pd.DataFrame({"step": [0, 0, 50, 50], "layer": ["b", "a", "b", "a"],
                  "num_traps": [0, 0, 2, 0]}).to_csv(run / "traps.csv", index=False)
    return run


def test_fit_grokking_and_spikes_are_read_from_the_train_log(tmp_path):
    train_log = pd.read_csv(make_run(tmp_path) / "train_log.csv")
    row = run_overview.run_row("toy", train_log, fit_acc=0.99, grok_acc=0.9, spike_ratio=100)
    assert row["fit step (test acc.)"] == "10 (0.100)"
    assert row["test acc. > 0.9"] == "40"
    assert row["best test acc. (step)"] == "0.950 (40)"
    assert row["lowest train loss (step)"] == "1.0e-09 (40)"
    assert row["loss spikes (x100): count, first, lowest train acc."] == "1, 30, 0.900"


def test_tables_keep_the_model_order_of_layers_and_count_trapped_checkpoints(tmp_path, capsys):
    make_run(tmp_path)
    text = run_overview.main([str(tmp_path), "--steps", "0,45"])
    assert "| run | step | b | a |" in text
    assert "| toy/wd0.0/seed0 | 50 | 1.50 | 2.50 |" in text
    assert "| toy/wd0.0/seed0 | 2 | 1 (50) | 0 |" in text


def test_a_folder_without_runs_is_named_in_the_error(tmp_path):
    with pytest.raises(SystemExit, match="expected runs/"):
        run_overview.main([str(tmp_path)])


def test_a_failed_fit_is_a_dash_not_nan():
    table = pd.DataFrame({"run": ["r"], "step": [5], "q": [float("nan")], "k": [1.234]})
    assert run_overview.markdown(table).splitlines()[-1] == "| r | 5 | — | 1.23 |"
