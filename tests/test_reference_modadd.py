"""The committed modular-addition references say what their READMEs say (docs/reference/modadd_cpu*/).

The headline findings are checked against the per-run CSVs, so a rerun that changes them fails here
(that each committed phases.csv is the segmentation's is tests/test_reference_phases.py's, for every
reference).
"""

import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

REFERENCES = [REPO / "docs" / "reference" / name for name in ("modadd_cpu", "modadd_cpu_long", "modadd_cpu_float64_long", "modadd_cpu_lr3e-2")]


def runs() -> list[Path]:
    return sorted(path.parent for reference in REFERENCES for path in reference.glob("runs/*/wd*/seed*/train_log.csv"))


def train_log(experiment: str, weight_decay: str, seed: int, reference: str | None = None) -> pd.DataFrame:
    reference = reference or experiment
    return pd.read_csv(REPO / "docs" / "reference" / reference / "runs" / experiment / f"wd{weight_decay}" / f"seed{seed}" / "train_log.csv")


def first_step_above(log: pd.DataFrame, accuracy: float) -> float:
    fit = log.loc[log["train_acc"] >= 0.99, "step"].min()
    above = log[(log["step"] >= fit) & (log["test_acc"] > accuracy)]
    return float(above["step"].iloc[0]) if len(above) else float("nan")


def test_the_references_hold_their_runs():
    names = {"/".join(run.parts[-3:]) for run in runs()}
    assert {"modadd_cpu/wd1.0/seed0", "modadd_cpu/wd1.0/seed1", "modadd_cpu/wd0.0/seed0", "modadd_cpu/wd0.0/seed1",
            "modadd_cpu_long/wd0.0/seed0", "modadd_cpu_float64/wd0.0/seed0", "modadd_cpu_float64/wd1.0/seed0"} <= names


@pytest.mark.parametrize("seed", [0, 1])
def test_weight_decay_1_groks_from_near_chance(seed):
    log = train_log("modadd_cpu", "1.0", seed)
    fit = log[log["train_acc"] >= 0.99].iloc[0]
    assert fit["test_acc"] < 0.2 and first_step_above(log, 0.9) <= 600
    assert log["test_acc"].iloc[-1] > 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_without_weight_decay_float32_groks_late_then_freezes(seed):
    assert math.isnan(first_step_above(train_log("modadd_cpu", "0.0", seed), 0.9))  # not within 1e4 steps
    log = train_log("modadd_cpu_long", "0.0", seed)
    assert 1.2e4 <= first_step_above(log, 0.9) <= 1.7e4
    late = log[log["step"] >= 3.2e4]
    assert (late["train_loss"] == 0).all() and late["test_acc"].nunique() == 1


def test_float64_has_no_loss_spikes_and_no_late_rise_without_weight_decay():
    for weight_decay in ("0.0", "1.0"):
        loss = train_log("modadd_cpu_float64", weight_decay, 0, reference="modadd_cpu_long")["train_loss"].to_numpy()
        assert not (loss[1:] >= 100 * loss[:-1]).any()
    log = train_log("modadd_cpu_float64", "0.0", 0, reference="modadd_cpu_long")
    assert log.loc[log["step"] >= 100, "test_acc"].between(0.18, 0.23).all()


def test_float64_does_not_grok_in_twice_the_float32_grokking_time():
    log = train_log("modadd_cpu_float64_long", "0.0", 0)
    assert log["step"].iloc[-1] == 30000 and log.loc[log["step"] >= 100, "test_acc"].max() < 0.23
    loss = log["train_loss"].to_numpy()
    assert not (loss[1:] >= 100 * loss[:-1]).any()


def test_at_lr_3e_2_no_weight_decay_holds_and_weight_decay_1_breaks_down_in_training():
    held = train_log("modadd_cpu_lr3e-2", "0.0", 0)
    assert first_step_above(held, 0.9) < 400 and held["test_acc"].iloc[-1] > 0.97
    broken = train_log("modadd_cpu_lr3e-2", "1.0", 0)
    assert first_step_above(broken, 0.9) < 200
    late = broken[broken["step"] >= 482]
    assert late["train_acc"].max() < 0.51 and late["test_acc"].max() < 0.35  # train accuracy falls too
