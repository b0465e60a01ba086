"""benchmarks/monitor_validation.py end to end at 300 steps: the monitor inside the workflow's
training function fires at the detector's steps on the same run."""

import importlib.util

import pandas as pd
import pytest

from conftest import REPO, SHARED_DATA, requires_mnist

SCRIPT = REPO / "benchmarks" / "monitor_validation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("monitor_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_mnist
def test_monitor_validation_at_300_steps(tmp_path, capsys):
    validation = load_script()
    overrides = {
        "data.root": f'"{SHARED_DATA}"',
        "experiments.mnist_lr5e-3.steps": "300",
        "checkpoints.per_decade": "8",
        "detector.arm_at_fit": "false",  # 300 steps may not fit the train set: arm from step 0
        "detector.min_consecutive": "2",
        "htsr.alpha_critical": "4.5",
    }
    args = ["--configfile", str(REPO / "configs" / "cpu.yaml"), "--weight-decay", "0.0", "--seed", "1",
            "--out", str(tmp_path), "--detectors", str(tmp_path / "none.csv")]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert validation.main(args) == 0, capsys.readouterr().out
    run_dir = tmp_path / "mnist_lr5e-3" / "wd0.0" / "seed1"
    table = pd.read_csv(run_dir / "validation.csv")
    assert table.alarm.tolist() == ["alpha_below_critical", "correlation_trap", "alpha_and_trap"]
    assert table.agree.all()
    assert table.monitor_step.notna().any(), "at alpha_critical 4.5 some alarm fires in 300 steps"
    monitor = pd.read_csv(run_dir / "monitor.csv")
    htsr = pd.read_csv(run_dir / "htsr.csv")
    assert monitor.step.unique().tolist() == htsr.step.unique().tolist()  # every checkpoint, no other step
    assert monitor.alpha.to_numpy() == pytest.approx(htsr.alpha.to_numpy(), nan_ok=True, rel=1e-12)
    assert "monitor" in capsys.readouterr().out


def test_workflow_alarm_steps_reads_the_run(tmp_path):
    validation = load_script()
    path = tmp_path / "detectors.csv"
    pd.DataFrame(
        {"experiment": ["e", "e", "e"], "weight_decay": [0.0, 0.01, 0.0], "seed": [0, 0, 1],
         "alarm": ["alpha_below_critical"] * 3, "alarm_step": [500, None, 700]}
    ).to_csv(path, index=False)
    assert validation.workflow_alarm_steps(path, {"experiment": "e", "weight_decay": 0.01, "seed": 0}) == {
        "alpha_below_critical": None}
    assert validation.workflow_alarm_steps(path, {"experiment": "e", "weight_decay": 0.0, "seed": 1}) == {
        "alpha_below_critical": 700}
    assert validation.workflow_alarm_steps(tmp_path / "missing.csv", {}) == {}


def load_plot_script():
    spec = importlib.util.spec_from_file_location("plot_monitor_validation", REPO / "benchmarks" / "plot_monitor_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_validation_run(run_dir):
    """A run folder as monitor_validation.py writes it, small and hand-made."""
    run_dir.mkdir(parents=True)
    steps = [1, 10, 100, 1000, 10000]
    pd.DataFrame({"step": steps, "train_acc": [0.1, 0.5, 1.0, 1.0, 1.0], "test_acc": [0.1, 0.3, 0.5, 0.8, 0.6]}).to_csv(
        run_dir / "train_log.csv", index=False)
    rows = [{"step": s, "layer": layer, "alpha": a, "num_traps": t}
            for s, a, t in zip(steps, [5.0, 4.0, 3.0, 2.5, 1.8], [0, 0, 1, 1, 3]) for layer in ("fc1", "fc2")]
    pd.DataFrame(rows).to_csv(run_dir / "monitor.csv", index=False)
    pd.DataFrame({"alarm": ["alpha_below_critical", "correlation_trap"], "monitor_step": [10000, 100],
                  "peak_step": [1000, 1000], "collapse_step": [10000, 10000]}).to_csv(run_dir / "validation.csv", index=False)


def test_the_validation_figure_is_drawn_from_the_run_folders(tmp_path):
    plot = load_plot_script()
    runs = [tmp_path / "mnist" / wd / "seed0" for wd in ("wd0.0", "wd0.01")]
    for run_dir in runs:
        write_validation_run(run_dir)
    out = tmp_path / "validation.png"
    assert plot.main([str(r) for r in runs] + ["--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert plot.run_title(runs[1]) == "mnist, weight decay 0.01, seed0"


def test_the_validation_figure_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    plot = load_plot_script()
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert "monitor.csv" in capsys.readouterr().err
