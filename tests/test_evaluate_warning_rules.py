"""scripts/evaluate_warning_rules.py and the statistic figures, on synthetic runs with known answers."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from antigrok.report.statistic_figures import plot_statistic, statistic_long
from test_warning_rules import STEPS, synthetic_run

ROOT = Path(__file__).resolve().parents[1]
RUN_COLUMNS = ["experiment", "weight_decay", "seed"]


def write_run(folder: Path, frames, seed: int, weight_decay: float) -> None:
    run = folder / "runs" / "synthetic" / f"wd{weight_decay}" / f"seed{seed}"
    run.mkdir(parents=True)
    for name, frame in zip(("htsr.csv", "traps.csv", "progress.csv", "phases.csv"), frames):
        frame.drop(columns=RUN_COLUMNS).to_csv(run / name, index=False)


def test_the_script_scores_committed_runs_as_the_rule_does(tmp_path):
    # wd 0: two collapsing runs warned in time (fc1 alpha < 2 at 1.5e4), one early (2e3);
    # wd 0.01: one quiet run and one that fires (a false alarm)
    cases = [(0, 0.0, True, 15000), (1, 0.0, True, 15000), (2, 0.0, True, 2000),
             (3, 0.01, False, None), (4, 0.01, False, 30000)]
    for seed, weight_decay, collapses, cross in cases:
        write_run(tmp_path, synthetic_run(collapses, cross, seed=seed, weight_decay=weight_decay), seed, weight_decay)
    config = tmp_path / "config.yaml"
    experiment = yaml.safe_load((ROOT / "config.yaml").read_text())["experiments"]["mnist_mlp"]
    experiment["optimizer"]["lr"], experiment["steps"] = 1e-3, 100000
    config.write_text(yaml.safe_dump({
        "experiments": {"synthetic": experiment},
        "warning_rules": {"rules": [{"name": "fc1_alpha_below_2", "statistic": "alpha", "layers": ["fc1"],
                                     "compare": "below", "threshold": 2.0}]}}))
    subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path),
                    "--configfile", str(config)], check=True, capture_output=True)
    summary = pd.read_csv(tmp_path / "tables/warning_rules_summary.csv").iloc[0]
    assert (summary["n_collapsing"], summary["n_in_time"], summary["n_early"]) == (3, 2, 1)
    assert (summary["n_not_collapsing"], summary["n_fired_not_collapsing"]) == (2, 1)
    summary_md = (tmp_path / "tables/warning_rules_summary.md").read_text()
    assert "2/3 [0.09, 0.99]" in summary_md
    assert "synthetic: mlp 784-200-200-10, adamw lr 0.001, 100000 steps, batch 200, float64" in summary_md
    runs = pd.read_csv(tmp_path / "tables/warning_rules.csv")
    assert runs.set_index("seed").loc[2, "outcome"] == "before_peak"
    assert (tmp_path / "figures/statistic_alpha_synthetic.png").stat().st_size > 0
    # --out: the same tables elsewhere, nothing new in the runs' folder
    subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path),
                    "--configfile", str(config), "--out", str(tmp_path / "elsewhere")], check=True, capture_output=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "elsewhere/tables/warning_rules.csv"), runs)
    assert (tmp_path / "elsewhere/figures/statistic_alpha_synthetic.png").exists()


def test_rules_from_one_config_and_experiments_from_another(tmp_path):
    # a probe study: its config names its runs' experiment, the frozen rules stay in the study's
    for seed, weight_decay, collapses, cross in [(0, 0.003, True, 15000), (1, 0.003, False, None)]:
        write_run(tmp_path, synthetic_run(collapses, cross, seed=seed, weight_decay=weight_decay), seed, weight_decay)
    experiment = yaml.safe_load((ROOT / "config.yaml").read_text())["experiments"]["mnist_mlp"]
    rules_config, probe_config = tmp_path / "rules.yaml", tmp_path / "probe.yaml"
    rules_config.write_text(yaml.safe_dump({
        "experiments": {"other": experiment},
        "warning_rules": {"rules": [{"name": "fc1_alpha_below_2", "statistic": "alpha", "layers": ["fc1"],
                                     "compare": "below", "threshold": 2.0}]}}))
    probe_config.write_text(yaml.safe_dump({"experiments": {"synthetic": {**experiment, "steps": 100000}}}))
    subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path), "--no-figures",
                    "--configfile", str(rules_config), str(probe_config)], check=True, capture_output=True)
    summary = pd.read_csv(tmp_path / "tables/warning_rules_summary.csv").iloc[0]
    assert summary["rule"] == "fc1_alpha_below_2"
    assert (summary["n_collapsing"], summary["n_in_time"], summary["n_not_collapsing"]) == (1, 1, 1)
    assert "synthetic: mlp 784-200-200-10, adamw lr 0.0005, 100000 steps" in (
        tmp_path / "tables/warning_rules_summary.md").read_text()
    # without the rules' config the script says so instead of scoring nothing
    failed = subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path),
                             "--no-figures", "--configfile", str(probe_config)], capture_output=True, text=True)
    assert failed.returncode != 0 and "list no warning_rules.rules" in failed.stderr, failed.stderr


def test_the_figure_draws_the_median_and_range_over_seeds():
    frames = [synthetic_run(True, cross, seed=seed) for seed, cross in enumerate((15000, 2000, 50000))]
    htsr, traps, progress = (pd.concat([run[index] for run in frames]) for index in range(3))
    values = statistic_long("alpha", htsr, traps, progress)
    fc1 = values[values["layer"] == "fc1"]
    assert fc1.groupby("step")["value"].count().eq(3).all()
    figure = plot_statistic(values, {0.0: [20000]}, "alpha", "synthetic")
    line = figure.axes[0].lines[0]
    expected_median = fc1.groupby("step")["value"].median()
    np.testing.assert_array_equal(line.get_xdata(), STEPS.astype(float))
    np.testing.assert_allclose(line.get_ydata(), expected_median.to_numpy())
    # at 1e4 one seed has crossed (1.5) and two have not (4.0): the median is 4.0, the band 1.5-4.0
    at = int(np.flatnonzero(STEPS == 10000)[0])
    assert line.get_ydata()[at] == 4.0
    band = figure.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 1.5 and band.max() == 4.0


def test_runs_still_training_are_refused_unless_scored_provisionally(tmp_path):
    # the synthetic runs end at 1e5; their experiment is to run 2e5 steps: both still training
    for seed, weight_decay, collapses, cross in [(0, 0.0, True, 15000), (1, 0.01, False, None)]:
        write_run(tmp_path, synthetic_run(collapses, cross, seed=seed, weight_decay=weight_decay), seed, weight_decay)
    experiment = yaml.safe_load((ROOT / "config.yaml").read_text())["experiments"]["mnist_mlp"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "experiments": {"synthetic": {**experiment, "steps": 200000}},
        "warning_rules": {"rules": [{"name": "fc1_alpha_below_2", "statistic": "alpha", "layers": ["fc1"],
                                     "compare": "below", "threshold": 2.0}]}}))
    script = [sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path), "--configfile", str(config)]
    refused = subprocess.run(script + ["--no-figures"], capture_output=True, text=True)
    assert refused.returncode != 0, refused.stdout
    assert "synthetic/wd0.0/seed0: at step 100000 of 200000" in refused.stderr
    assert "--provisional" in refused.stderr
    assert not (tmp_path / "tables").exists()
    subprocess.run(script + ["--provisional"], check=True, capture_output=True)
    summary_md = (tmp_path / "tables/warning_rules_summary.md").read_text().splitlines()
    assert summary_md[2].startswith("**provisional, runs still training: ")
    assert "wd0.01/seed1 at step 100000 of 200000" in summary_md[2]
    for name in ("warning_rules.csv", "warning_rules_summary.csv"):
        table = pd.read_csv(tmp_path / "tables" / name)
        assert table["provisional"].str.startswith("provisional, runs still training").all()
    # the scores themselves are the rule's, as without the mark
    summary = pd.read_csv(tmp_path / "tables/warning_rules_summary.csv").iloc[0]
    assert (summary["n_collapsing"], summary["n_in_time"], summary["n_not_collapsing"]) == (1, 1, 1)
    assert (tmp_path / "figures/statistic_alpha_synthetic.png").stat().st_size > 0


def test_runs_of_an_experiment_no_config_describes_are_refused(tmp_path):
    write_run(tmp_path, synthetic_run(True, 15000, seed=0, weight_decay=0.0), 0, 0.0)
    experiment = yaml.safe_load((ROOT / "config.yaml").read_text())["experiments"]["mnist_mlp"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "experiments": {"other": experiment},
        "warning_rules": {"rules": [{"name": "fc1_alpha_below_2", "statistic": "alpha", "layers": ["fc1"],
                                     "compare": "below", "threshold": 2.0}]}}))
    failed = subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_warning_rules.py"), str(tmp_path),
                             "--no-figures", "--configfile", str(config)], capture_output=True, text=True)
    assert failed.returncode != 0 and "describe no experiment synthetic" in failed.stderr, failed.stderr
