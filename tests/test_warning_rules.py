"""Warning rules scored on synthetic runs whose answers are known (antigrok.study.warning_rules)."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from antigrok.study.warning_rules import (
    WarningRule,
    evaluate_run,
    exact_binomial_interval,
    rules_from_config,
    summarize_rules,
)

STEPS = np.unique(np.round(np.logspace(0, 5, 101)).astype(int))  # 20 per decade, 1 .. 1e5
FIT, PEAK, COLLAPSE = 1000, 10000, 50000


def synthetic_run(collapses: bool, fc1_alpha_cross: int | None, seed: int = 0, weight_decay: float = 0.0):
    """One run's frames: train fitted from FIT; test accuracy rising to 0.9 at PEAK, then (if it
    collapses) falling linearly in log step to 0.6 at the end; fc1 alpha 4 until fc1_alpha_cross, then 1.5."""
    log_steps = np.log10(STEPS)
    test = np.interp(log_steps, [0, 3, 4], [0.1, 0.5, 0.9])
    if collapses:
        test = np.where(STEPS > PEAK, np.interp(log_steps, [4, 5], [0.9, 0.6]), test)
    train = np.where(STEPS >= FIT, 1.0, 0.5)
    phases = pd.DataFrame({"step": STEPS, "train_acc": train, "test_acc": test, "test_acc_smoothed": test})
    peak = int(STEPS[np.argmax(test)])
    collapse = int(STEPS[np.argmax((STEPS > peak) & (test <= 0.8 + 1e-12))]) if collapses else None
    phases["fit_step"], phases["peak_step"] = FIT, peak
    phases["collapse_step"] = collapse if collapses else pd.NA
    phases["groks"], phases["collapses"] = True, collapses
    phases["grokking_start_step"] = 1000
    phases["anti_grokking_start_step"] = 12589 if collapses else pd.NA
    phases["phase"] = "none"
    alpha1 = np.where((fc1_alpha_cross is not None) & (STEPS >= (fc1_alpha_cross or 0)), 1.5, 4.0)
    htsr = pd.concat([
        pd.DataFrame({"step": STEPS, "layer": "fc1", "alpha": alpha1, "stable_rank": 50.0, "mp_ks_stat": 0.01,
                      "max_rand_eval": 10.0, "rand_lambda_plus": 9.0}),
        pd.DataFrame({"step": STEPS, "layer": "fc2", "alpha": 3.0, "stable_rank": 40.0, "mp_ks_stat": 0.01,
                      "max_rand_eval": 8.0, "rand_lambda_plus": 9.0}),
    ])
    traps = htsr[["step", "layer"]].assign(num_traps=np.where(htsr["layer"] == "fc1", 1, 0), num_traps_centered=0)
    l2 = 100.0 * (STEPS / FIT) ** 0.05  # a smooth power law in step: no departure
    progress = pd.DataFrame({"step": STEPS, "l2_norm": l2, "activation_sparsity": 0.9, "abs_weight_entropy": 5e4,
                             "circuit_complexity": 30.0})
    tag = {"experiment": "synthetic", "weight_decay": weight_decay, "seed": seed}
    return [frame.assign(**tag) for frame in (htsr, traps, progress, phases)]


FC1_BELOW_2 = WarningRule(name="fc1_alpha_below_2", statistic="alpha", layers=("fc1",), compare="below", threshold=2.0)


@pytest.mark.parametrize(
    "collapses, cross, outcome, lead_vs_crossing",
    [
        (True, 15000, "after_peak_before_collapse", None),
        (True, 2000, "before_peak", None),
        (True, 80000, "late", None),
        (True, None, "missed", None),
        (False, 20000, "false_alarm", None),
        (False, None, "quiet", None),
    ],
)
def test_each_run_is_scored_by_its_own_outcome(collapses, cross, outcome, lead_vs_crossing):
    htsr, traps, progress, phases = synthetic_run(collapses, cross)
    row = evaluate_run([FC1_BELOW_2], htsr, traps, progress, phases).iloc[0]
    assert row["outcome"] == outcome
    if cross is None:
        assert not row["fired"]
        return
    first_checkpoint = int(STEPS[STEPS >= cross][0])
    assert row["alarm_step"] == first_checkpoint
    if outcome == "after_peak_before_collapse":
        collapse = int(phases["collapse_step"].iloc[0])
        assert row["lead_decades_vs_collapse"] == pytest.approx(math.log10(collapse) - math.log10(first_checkpoint))
        assert row["lead_decades_vs_decline_start"] == pytest.approx(math.log10(12589) - math.log10(first_checkpoint))
        # cost of stopping: peak 0.9 minus the accuracy on the linear decline at the alarm
        expected = 0.9 - np.interp(math.log10(first_checkpoint), [4, 5], [0.9, 0.6])
        assert row["cost_of_stopping"] == pytest.approx(expected)
    if outcome == "before_peak":
        assert row["cost_of_stopping"] == pytest.approx(0.9 - np.interp(math.log10(first_checkpoint), [3, 4], [0.5, 0.9]))


def test_a_rule_is_armed_only_from_fit_step_and_persistence_delays_it():
    htsr, traps, progress, phases = synthetic_run(True, 100)  # alpha < 2 long before the fit
    rule = WarningRule(name="r", statistic="alpha", layers=("fc1",), compare="below", threshold=2.0, persist=3)
    row = evaluate_run([rule], htsr, traps, progress, phases).iloc[0]
    armed = STEPS[STEPS >= FIT]
    assert row["alarm_step"] == armed[2]  # the third checkpoint in a row from fit_step


def test_mean_of_layers_baseline_and_all_of():
    htsr, traps, progress, phases = synthetic_run(True, 20000)
    rules = rules_from_config([
        # mean of fc1 (1.5 after the cross) and fc2 (3.0) = 2.25: never below 2, below 2.5 from the cross
        {"name": "mean_below_2", "statistic": "alpha", "layers": ["fc1", "fc2"], "combine": "mean", "threshold": 2.0},
        {"name": "mean_below_2.5", "statistic": "alpha", "layers": ["fc1", "fc2"], "combine": "mean", "threshold": 2.5},
        # l2 grows as (step / fit)^0.05: x1.1 of its value at the fit at step fit * 1.1^20 = 6727
        {"name": "l2_growth", "statistic": "l2_norm", "baseline": "ratio", "compare": "above", "threshold": 1.1},
        {"name": "fc1_trap_growth", "statistic": "num_traps", "layers": ["fc1"], "baseline": "difference",
         "compare": "at_least", "threshold": 1},
        {"name": "both", "all_of": ["mean_below_2.5", "l2_growth"]},
        {"name": "smooth_l2_departs", "statistic": "l2_norm", "compare": "departs", "threshold": 3.0},
    ])
    rows = evaluate_run(rules, htsr, traps, progress, phases).set_index("rule")
    assert not rows.loc["mean_below_2", "fired"]
    assert rows.loc["mean_below_2.5", "alarm_step"] == STEPS[STEPS >= 20000][0]
    assert rows.loc["l2_growth", "alarm_step"] == STEPS[STEPS > FIT * 1.1 ** 20][0]
    assert not rows.loc["fc1_trap_growth", "fired"]  # fc1 had its one trap already at the fit
    assert rows.loc["both", "alarm_step"] == STEPS[STEPS >= 20000][0]
    assert not rows.loc["smooth_l2_departs", "fired"]  # a power law in step has a constant log slope


def test_exact_binomial_interval_matches_known_values():
    low, high = exact_binomial_interval(0, 5)
    assert low == 0 and high == pytest.approx(1 - 0.025 ** (1 / 5))
    low, high = exact_binomial_interval(5, 5)
    assert high == 1 and low == pytest.approx(0.025 ** (1 / 5))
    low, high = exact_binomial_interval(3, 10)  # Clopper-Pearson, e.g. R binom.test(3, 10)
    assert (low, high) == pytest.approx((0.06673951, 0.65245285), abs=1e-7)
    assert all(math.isnan(v) for v in exact_binomial_interval(0, 0))


def test_summary_counts_in_time_early_and_false_alarms_with_intervals():
    runs = [synthetic_run(True, 15000, seed=0), synthetic_run(True, 15000, seed=1), synthetic_run(True, 2000, seed=2),
            synthetic_run(False, None, seed=3, weight_decay=0.01), synthetic_run(False, 30000, seed=4, weight_decay=0.01)]
    table = pd.concat([evaluate_run([FC1_BELOW_2], *run).assign(experiment="synthetic", weight_decay=run[0]["weight_decay"].iloc[0],
                                                               seed=run[0]["seed"].iloc[0]) for run in runs])
    row = summarize_rules(table).iloc[0]
    assert (row["n_collapsing"], row["n_in_time"], row["n_early"], row["n_not_collapsing"], row["n_fired_not_collapsing"]) == (3, 2, 1, 2, 1)
    assert (row["in_time_ci_low"], row["in_time_ci_high"]) == pytest.approx(exact_binomial_interval(2, 3))
    assert not row["warns_without_false_alarm"]


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "statistic": "alpha", "threshold": 2.0}, "per layer"),
    ({"name": "x", "statistic": "nope", "layers": ["fc1"], "threshold": 2.0}, "unknown statistic"),
    ({"name": "x", "all_of": ["missing", "other"]}, "not rules listed before it"),
    ({"name": "x", "statistic": "alpha", "layers": ["fc1"]}, "finite threshold"),
])
def test_bad_rules_are_refused_with_the_reason(entry, message):
    with pytest.raises(ValueError, match=message):
        rules_from_config([entry])


def test_the_study_config_rules_are_valid():
    with open("configs/detector_study.yaml") as stream:
        rules = rules_from_config(yaml.safe_load(stream)["warning_rules"]["rules"])
    assert {"paper_average_alpha_below_2", "paper_any_trap", "paper_alpha_and_trap", "fc1_alpha_below_2",
            "centered_trap_any", "l2_norm_departure"} <= {rule.name for rule in rules}
