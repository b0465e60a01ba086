"""docs/reference/detector_study and its weight-decay probe: the committed warning-rule tables are
what the command beside them writes from the committed per-run files and the frozen rules
(configs/detector_study.yaml, 15d694d)."""

import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

STUDY = REPO / "docs" / "reference" / "detector_study"
PROBE = REPO / "docs" / "reference" / "detector_study_wd3e-3"
CONFIGS = REPO / "configs"
TABLES = ["warning_rules.csv", "warning_rules_summary.csv", "warning_rules_summary.md"]


def assert_each_run_has_its_edge_checkpoints(folder, runs: pd.DataFrame) -> None:
    """Every run of runs.csv has its peak and end checkpoints (safetensors) listed and present."""
    for row in runs.itertuples():
        run = folder / "runs" / row.experiment / f"wd{row.weight_decay}" / f"seed{row.seed}"
        checkpoints = pd.read_csv(run / "checkpoints.csv")
        assert {"peak", "end"} <= set(checkpoints["edge"])
        assert all((run / "checkpoints" / name).is_file() for name in checkpoints["file"])


@pytest.mark.parametrize("folder, configfiles", [
    (STUDY, ["detector_study.yaml"]),
    (PROBE, ["detector_study.yaml", "detector_study_wd3e-3.yaml"]),
], ids=["held_out", "wd_probe"])
def test_the_committed_tables_equal_a_rerun_of_their_command(folder, configfiles, tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_warning_rules.py"), str(folder),
                    "--configfile", *[str(CONFIGS / name) for name in configfiles], "--out", str(tmp_path),
                    "--no-figures"], check=True, capture_output=True, cwd=REPO)
    for name in TABLES:
        committed, rerun = folder / "tables" / name, tmp_path / "tables" / name
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(pd.read_csv(rerun), pd.read_csv(committed), check_exact=False, rtol=1e-12)
        else:
            assert rerun.read_text() == committed.read_text(), name


def test_the_held_out_study_has_a_figure_per_statistic_and_experiment():
    # one figure per statistic and experiment
    statistics = {name.split("statistic_")[1].rsplit("_mnist", 1)[0] for name in
                  (p.name for p in (STUDY / "figures").glob("statistic_*.png"))}
    assert len(statistics) == 10 and len(list((STUDY / "figures").glob("statistic_*.png"))) == 20


def test_the_study_has_its_twelve_held_out_runs_each_with_its_checkpoints():
    runs = pd.read_csv(STUDY / "runs.csv")
    assert len(runs) == 12 and not runs.duplicated(["experiment", "weight_decay", "seed"]).any()
    assert sorted(set(zip(runs["experiment"], runs["seed"]))) == sorted(
        [("mnist_lr5e-3", seed) for seed in (2, 3, 4)] + [("mnist_lr2e-3", seed) for seed in (0, 1, 2)])
    assert_each_run_has_its_edge_checkpoints(STUDY, runs)


def test_the_probe_has_its_six_runs_at_weight_decay_0_003_each_with_its_checkpoints():
    runs = pd.read_csv(PROBE / "runs.csv")
    assert sorted(runs["seed"]) == [5, 6, 7, 8, 9, 10]
    assert set(runs["experiment"]) == {"mnist_lr5e-3"} and set(runs["weight_decay"]) == {0.003}
    assert_each_run_has_its_edge_checkpoints(PROBE, runs)
