import numpy as np
import pandas as pd
import pytest

from antigrok.study.phases import (
    PHASES_COLUMNS,
    PhaseThresholds,
    edges_from_phases,
    segment_phases,
    write_phases,
)

# 60 log-spaced steps per decade up to 1e7, as train_log.csv logs them.
STEPS = np.unique(np.rint(np.logspace(0, 7, 7 * 60 + 1)).astype(int))
STEPS = np.concatenate([[0], STEPS])
LOG_STEP = np.log10(np.maximum(STEPS, 1))


def ramp(center_decade, width_decades=0.3):
    """0 -> 1 logistic in log10(step) around ``center_decade``."""
    return 1.0 / (1.0 + np.exp(-(LOG_STEP - center_decade) / width_decades * 4))


def train_log(test_acc, train_acc=None):
    train_acc = ramp(2.5) * 0.9 + 0.1 if train_acc is None else train_acc
    train_acc = np.where(LOG_STEP >= 3.5, 1.0, train_acc)  # >= 0.99 from ~700 steps, 1.0 from 3e3
    return pd.DataFrame({"step": STEPS, "train_acc": train_acc, "test_acc": test_acc})


def curve(grok=True, collapse=True):
    """Test accuracy: 0.2 until ~1e5, grokking to 0.9 around 3e5, collapse to 0.5 around 3e6."""
    test = 0.2 + (0.7 * ramp(5.5) if grok else 0.0)
    if collapse:
        test = test - 0.4 * ramp(6.6)
    return test


def label_runs(phases):
    """The sequence of distinct consecutive labels."""
    labels = phases["phase"].tolist()
    return [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]


def edges(phases):
    return edges_from_phases(phases)


def test_groks_then_collapses():
    phases = segment_phases(train_log(curve()), PhaseThresholds())
    assert label_runs(phases) == ["none", "pre-grokking", "grokking", "none", "anti-grokking"]
    e = edges(phases)
    assert e.groks and e.collapses
    log = train_log(curve())
    assert e.fit_step == log.step[log.train_acc >= 0.99].iloc[0] and 500 < e.fit_step < 1000
    assert 1e5 < e.grokking_start_step < 3e5  # start of the climb, before its midpoint 10^5.5
    assert e.peak_step < e.collapse_step
    assert 5e5 < e.peak_step < 3e6
    # collapse: the first step 0.10 below the peak, in the decline that centres at 10^6.6
    peak_value = phases.loc[phases.step == e.peak_step, "test_acc_smoothed"].item()
    at_collapse = phases.loc[phases.step == e.collapse_step, "test_acc_smoothed"].item()
    before = phases.loc[phases.step < e.collapse_step, "test_acc_smoothed"].iloc[-1]
    assert at_collapse <= peak_value - 0.10 < before
    # phases follow the edges exactly
    assert (phases.loc[phases.step < e.fit_step, "phase"] == "none").all()
    assert (phases.loc[phases.step >= e.collapse_step, "phase"] == "anti-grokking").all()
    grokking = phases[phases.phase == "grokking"]
    assert grokking.step.min() == e.grokking_start_step and grokking.step.max() == e.peak_step


def test_groks_and_holds_has_no_anti_grokking():
    phases = segment_phases(train_log(curve(collapse=False) - 0.03 * ramp(6.5)), PhaseThresholds())
    e = edges(phases)
    assert e.groks and not e.collapses and e.collapse_step is None
    assert "anti-grokking" not in set(phases.phase)
    assert (phases.loc[phases.step > e.peak_step, "phase"] == "none").all()
    assert phases["collapse_step"].isna().all() and not phases["collapses"].any()


def test_never_groks_is_not_forced_into_a_phase():
    phases = segment_phases(train_log(curve(grok=False, collapse=False) + 0.05 * ramp(5)), PhaseThresholds())
    e = edges(phases)
    assert e.fit_step is not None and not e.groks and not e.collapses
    assert set(phases.phase) == {"none"}
    assert phases["grokking_start_step"].isna().all()


def test_never_fits_has_no_edges():
    log = train_log(curve())
    log["train_acc"] = 0.9
    phases = segment_phases(log, PhaseThresholds())
    assert set(phases.phase) == {"none"}
    assert phases[["fit_step", "peak_step", "collapse_step"]].isna().all().all()


def test_noisy_curve_median_smoothing_ignores_single_outliers():
    rng = np.random.default_rng(0)
    test = curve(collapse=False) + rng.normal(0, 0.01, len(STEPS))
    late = np.flatnonzero(STEPS > 3e6)
    test[late[::10]] -= 0.3  # isolated bad evaluations on the plateau, never two in a row
    smoothed = segment_phases(train_log(test), PhaseThresholds(smoothing_window=5))
    assert edges(smoothed).groks and not edges(smoothed).collapses
    raw = segment_phases(train_log(test), PhaseThresholds(smoothing_window=1))
    assert edges(raw).collapses  # without smoothing one bad evaluation is a "collapse"


def test_noisy_collapse_is_found_near_the_clean_one():
    rng = np.random.default_rng(1)
    clean = edges(segment_phases(train_log(curve()), PhaseThresholds()))
    noisy = edges(segment_phases(train_log(curve() + rng.normal(0, 0.02, len(STEPS))), PhaseThresholds()))
    assert noisy.groks and noisy.collapses
    assert abs(np.log10(noisy.collapse_step) - np.log10(clean.collapse_step)) < 0.2


def test_exact_edges_on_a_hand_made_log():
    log = pd.DataFrame(
        {
            "step": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "train_acc": [0.1, 0.5, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            "test_acc": [0.1, 0.2, 0.2, 0.25, 0.5, 0.9, 0.85, 0.8, 0.7, 0.6],
        }
    )
    phases = segment_phases(log, PhaseThresholds(smoothing_window=1))
    e = edges(phases)
    # rise 0.7 from 0.2 at fit; onset level 0.2 + 0.07: step 3 (0.25) is still low
    assert (e.fit_step, e.grokking_start_step, e.peak_step, e.collapse_step) == (2, 4, 5, 7)
    # drop after the peak 0.9 - 0.6 = 0.3; onset level 0.9 - 0.03: step 6 (0.85) already declines
    assert e.anti_grokking_start_step == 6
    assert (
        phases.phase.tolist()
        == ["none", "none"] + ["pre-grokking"] * 2 + ["grokking"] * 2 + ["anti-grokking"] * 4
    )


def test_anti_grokking_starts_where_the_decline_leaves_the_plateau():
    log = pd.DataFrame(
        {
            "step": [0, 1, 2, 3, 4, 5, 6, 7, 8],
            "train_acc": [1.0] * 9,
            "test_acc": [0.2, 0.9, 0.895, 0.9, 0.89, 0.86, 0.8, 0.75, 0.7],
        }
    )
    e = edges(segment_phases(log, PhaseThresholds(smoothing_window=1, grok_rise=0.0)))
    # peak 0.9 (first at step 1); drop 0.2; plateau level 0.9 - 0.02: steps 1-4 sit on it
    # crossing: first step at or below 0.9 - collapse_drop = 0.8, step 6
    assert (e.peak_step, e.anti_grokking_start_step, e.collapse_step) == (1, 5, 6)


def test_phase_finder_names_missing_test_accuracy():
    log = pd.DataFrame({"step": [0, 1, 2], "train_acc": [0.5, 1.0, 1.0], "test_acc": [0.1, np.nan, np.nan]})
    with pytest.raises(ValueError, match="test accuracy is missing"):
        segment_phases(log, PhaseThresholds(smoothing_window=1))


def test_collapse_needs_the_train_set_still_fitted():
    log = pd.DataFrame(
        {
            "step": [0, 1, 2, 3, 4, 5],
            "train_acc": [1.0, 1.0, 1.0, 0.5, 1.0, 1.0],
            "test_acc": [0.1, 0.9, 0.9, 0.5, 0.85, 0.7],
        }
    )
    e = edges(segment_phases(log, PhaseThresholds(smoothing_window=1)))
    assert e.collapse_step == 5  # not 3, where training itself had broken down


def test_phases_csv_columns_and_empty_edges(tmp_path):
    log = train_log(curve(collapse=False))
    log.to_csv(tmp_path / "train_log.csv", index=False)
    write_phases(tmp_path / "train_log.csv", tmp_path / "phases.csv", PhaseThresholds())
    written = pd.read_csv(tmp_path / "phases.csv")
    assert written.columns.tolist() == PHASES_COLUMNS
    assert len(written) == len(STEPS)
    assert written["collapse_step"].isna().all()  # empty, not 0 or -1
    assert written["groks"].all() and not written["collapses"].any()
    assert edges_from_phases(written).peak_step == int(written["peak_step"].iloc[0])


@pytest.mark.parametrize(
    "bad", [{"train_fit": 0}, {"collapse_drop": 1.5}, {"smoothing_window": 0}, {"smoothing_window": 4},
            {"collapse_onset": -0.1}]
)
def test_thresholds_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match="phases."):
        PhaseThresholds(**bad)
