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
