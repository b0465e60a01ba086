"""The study readings of issue 33 against known answers: the continuous outcome of a constructed
run, the rank correlation and its bootstrap, the layer combination of a rule's statistic, the
centred-trap windows; and the committed tables equal a rerun of their command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from antigrok.study.centred_trap_counts import centred_trap_summary, run_centred_traps
from antigrok.study.outcome_continuum import combine_layers, rank_correlations, run_decline, spearman_with_bootstrap
from antigrok.study.warning_rules import WarningRule
from conftest import REPO

STEPS = np.unique(np.concatenate([np.round(np.logspace(0, 5, 200)).astype(int), [1000]]))


def phases_frame(accuracy: np.ndarray, peak_step: int, collapse_step=None) -> pd.DataFrame:
    return pd.DataFrame({"step": STEPS, "test_acc_smoothed": accuracy, "fit_step": 10, "peak_step": peak_step,
                         "collapse_step": collapse_step, "grokking_start_step": 20,
                         "anti_grokking_start_step": None})


def test_a_run_losing_a_known_amount_per_decade_is_censored_with_that_slope():
    # 0.9 at the peak (step 1000), then -0.05 per decade: 0.8 at 1e5
    accuracy = np.where(STEPS <= 1000, 0.9 * STEPS / 1000, 0.9 - 0.05 * np.log10(np.maximum(STEPS, 1000) / 1000))
    outcome = run_decline(phases_frame(accuracy, 1000))
    assert outcome["decline_at_end"] == pytest.approx(0.1)
    assert outcome["largest_decline"] == pytest.approx(0.1)
    assert outcome["slope_last_decade"] == pytest.approx(-0.05)
    assert outcome["censored"] and not outcome["collapses"]
    flat = np.where(STEPS <= 1000, 0.9 * STEPS / 1000, 0.9 - 0.05 * np.log10(np.minimum(np.maximum(STEPS, 1000), 1e4) / 1000))
    settled = run_decline(phases_frame(flat, 1000))
    assert settled["slope_last_decade"] == pytest.approx(0.0, abs=1e-12) and not settled["censored"]
    assert settled["decline_at_end"] == pytest.approx(0.05)


def test_the_rank_correlation_and_its_bootstrap():
    x = np.arange(10.0)
    exact = spearman_with_bootstrap(x, x**3)
    assert [exact[key] for key in ("rho", "ci_low", "ci_high")] == pytest.approx([1, 1, 1]) and exact["n"] == 10
    assert spearman_with_bootstrap(x, np.ones(10))["resamples_used"] == 0  # a constant outcome has no rho
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 4, (50, 8)).astype(float), rng.normal(size=(50, 8))  # with ties
    usable = np.ptp(xs, axis=1) > 0
    expected = [stats.spearmanr(a, b).statistic for a, b in zip(xs[usable], ys[usable])]
    np.testing.assert_allclose(rank_correlations(xs[usable], ys[usable]), expected, rtol=1e-12)
    noisy = spearman_with_bootstrap(x, x + rng.normal(scale=3, size=10))
    assert noisy["ci_low"] < noisy["rho"] < noisy["ci_high"]


@pytest.mark.parametrize("combine, compare, expected", [
    ("any", "below", [1.0, 0.5]), ("any", "above", [3.0, 4.0]), ("all", "below", [3.0, 4.0]),
    ("mean", "below", [2.0, 2.25]),
])
def test_a_rules_layers_combine_into_the_value_its_condition_reads(combine, compare, expected):
    columns = pd.DataFrame({"fc1": [1.0, 4.0], "fc2": [3.0, 0.5]})
    rule = WarningRule(name="r", statistic="alpha", layers=("fc1", "fc2"), combine=combine, compare=compare,
                       threshold=2.0)
    assert combine_layers(columns, rule).tolist() == expected


def test_a_centred_trap_counts_before_the_crossing_only_if_it_came_before():
    traps = pd.DataFrame({"step": [100, 200, 300, 100, 200, 300], "layer": ["fc1"] * 3 + ["fc2"] * 3,
                          "num_traps_centered": [0, 0, 2, 0, 1, 1]})
    phases = pd.DataFrame({"fit_step": [10], "peak_step": [50], "collapse_step": [250]})
    rows = {row["layer"]: row for row in run_centred_traps(traps, phases)}
    assert rows["fc1"]["whole_run"] and not rows["fc1"]["before_crossing"] and rows["fc1"]["first_centred_trap_step"] == 300
    assert rows["fc2"]["whole_run"] and rows["fc2"]["before_crossing"]
    healthy = {row["layer"]: row for row in run_centred_traps(traps, phases.assign(collapse_step=[None]))}
    assert healthy["fc1"]["before_crossing"]  # no crossing: every step counts
    runs = pd.DataFrame([{"experiment": "e", "weight_decay": 0.0, **row} for row in rows.values()])
    summary = centred_trap_summary(runs).set_index(["layer", "window"])
    assert summary.loc[("fc1", "before_crossing"), "n_with_centred_trap"] == 0
    assert summary.loc[("fc1", "before_crossing"), "ci_high"] == pytest.approx(0.975)  # exact: 1 - 0.025^(1/1)


def test_the_committed_tables_equal_a_rerun_of_their_command(tmp_path):
    folder = REPO / "docs" / "reference" / "study_readings"
    subprocess.run([sys.executable, str(REPO / "scripts" / "study_readings.py"),
                    str(REPO / "docs" / "reference" / "detector_study"),
                    str(REPO / "docs" / "reference" / "detector_study_wd3e-3"),
                    "--configfile", str(REPO / "configs" / "detector_study.yaml"), "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=REPO)
    for path in sorted((folder / "tables").glob("*.csv")):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tables" / path.name), pd.read_csv(path),
                                      check_exact=False, rtol=1e-12)
    assert len(list((folder / "tables").glob("*.csv"))) == 5
