"""The transformer search's outcome definitions (antigrok.study.search_outcome) on synthetic train logs."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest

from antigrok.study.search_outcome import SEARCH_OUTCOMES, classify, outcome_table
from conftest import REPO


def train_log(test_acc: list[float], train_acc: list[float] | float = 1.0, train_loss: list[float] | None = None
              ) -> pd.DataFrame:
    """A train_log.csv frame at log-spaced-like steps 10, 20, ... with the given accuracies."""
    rows = len(test_acc)
    train = [train_acc] * rows if isinstance(train_acc, float) else train_acc
    return pd.DataFrame({
        "step": [10 * (row + 1) for row in range(rows)],
        "train_loss": train_loss or [0.01] * rows,
        "train_acc": train,
        "test_loss": [1.0] * rows,
        "test_acc": test_acc,
    })


RISE = [0.05, 0.1, 0.2, 0.5, 0.8, 0.95, 1.0]  # fitted from the first row, groks at row 5 (step 60)


def test_a_run_that_groks_and_holds_is_grokked():
    outcome = classify(train_log(RISE + [0.99] * 10))
    assert outcome.outcome == "grokked"
    assert (outcome.fit_step, outcome.grok_step, outcome.peak_step) == (10, 60, 70)
    assert outcome.peak_test_acc == 1.0 and outcome.fitted_share_after_peak == 1.0
    assert (outcome.spikes, outcome.long_drops, outcome.open_drop_rows) == (0, 0, 0)


def test_grokking_is_test_accuracy_0_9_or_more():
    assert classify(train_log([0.1, 0.5, 0.89, 0.89])).outcome == "not_grokked"
    assert classify(train_log([0.1, 0.5, 0.9, 0.89])).outcome == "grokked"


def test_last_five_rows_0_2_below_the_peak_with_the_train_set_fitted_is_a_collapse():
    outcome = classify(train_log(RISE + [0.95] * 5 + [0.7] * 5))
    assert outcome.outcome == "collapsed"
    assert outcome.open_drop_rows == 5 and outcome.final_test_acc == 0.7


def test_four_rows_below_at_the_end_are_no_collapse_yet():
    outcome = classify(train_log(RISE + [0.95] * 5 + [0.7] * 4))
    assert outcome.outcome == "grokked"
    assert (outcome.open_drop_rows, outcome.spikes) == (4, 0)  # open: not counted as a spike


def test_a_drop_of_exactly_0_2_counts_and_0_19_does_not():
    assert classify(train_log(RISE + [0.8] * 5)).outcome == "collapsed"
    assert classify(train_log(RISE + [0.81] * 5)).outcome == "grokked"


def test_the_train_condition_splits_collapse_from_breakdown_at_95_percent():
    test = RISE + [0.5] * 20  # 20 rows after the peak, every one 0.5 below it
    one_unfitted = [1.0] * len(RISE) + [0.5] + [1.0] * 19  # 95% fitted
    two_unfitted = [1.0] * len(RISE) + [0.5, 0.5] + [1.0] * 18  # 90% fitted
    assert classify(train_log(test, one_unfitted)).outcome == "collapsed"
    outcome = classify(train_log(test, two_unfitted))
    assert outcome.outcome == "breakdown" and outcome.fitted_share_after_peak == pytest.approx(0.9)


def test_a_grokked_run_that_loses_its_train_set_is_a_breakdown_even_if_test_accuracy_holds():
    train = [1.0] * len(RISE) + [0.9] * 10
    assert classify(train_log(RISE + [0.99] * 10, train)).outcome == "breakdown"


def test_a_run_that_never_groks_breaks_down_when_it_loses_the_fit():
    test = [0.1] * 12
    train = [0.5, 0.995] + [0.5] * 10
    assert classify(train_log(test, train)).outcome == "breakdown"
    assert classify(train_log(test, [0.5, 0.995] + [1.0] * 10)).outcome == "not_grokked"


def test_a_nan_anywhere_is_a_breakdown():
    losses = [0.1] * 16 + [math.nan]
    outcome = classify(train_log(RISE + [0.99] * 10, train_loss=losses))
    assert outcome.outcome == "breakdown" and outcome.nonfinite


def test_a_drop_shorter_than_five_rows_that_recovers_is_a_spike():
    curve = RISE + [0.99] * 3 + [0.3] * 4 + [0.99] * 3 + [0.5] + [0.99] * 3 + [0.2] * 6 + [0.99] * 2
    outcome = classify(train_log(curve))
    assert outcome.outcome == "grokked"
    assert (outcome.spikes, outcome.long_drops, outcome.open_drop_rows) == (2, 1, 0)


def test_drops_are_measured_from_the_peak_so_far_and_only_after_grokking():
    # 0.3 before grokking is no drop; 0.75 after a running peak of 0.95 is one, although the
    # run's overall peak (1.0) comes later
    curve = [0.1, 0.6, 0.3, 0.95, 0.75, 0.95, 1.0, 1.0]
    outcome = classify(train_log(curve))
    assert (outcome.spikes, outcome.grok_step, outcome.peak_step) == (1, 40, 70)


def test_a_run_that_never_fits_is_not_grokked_without_a_fit_step():
    outcome = classify(train_log([0.1] * 6, [0.5] * 6))
    assert outcome.outcome == "not_grokked"
    assert outcome.fit_step is None and outcome.fitted_share_after_peak is None and outcome.peak_step is None


def test_a_log_without_the_train_log_columns_is_refused_by_name():
    with pytest.raises(ValueError, match="lacks test_acc"):
        classify(pd.DataFrame({"step": [0], "train_loss": [1.0], "train_acc": [0.1], "test_loss": [1.0]}))
    with pytest.raises(ValueError, match="has no rows"):
        classify(train_log([]))


def test_outcome_table_has_one_row_per_run(tmp_path):
    paths = {}
    for name, curve in (("holds", RISE + [0.99] * 5), ("collapses", RISE + [0.6] * 5)):
        paths[name] = tmp_path / f"{name}.csv"
        train_log(curve).to_csv(paths[name], index=False)
    table = outcome_table(paths)
    assert table["run"].tolist() == ["holds", "collapses"]
    assert table["outcome"].tolist() == ["grokked", "collapsed"]
    assert set(table["outcome"]) <= set(SEARCH_OUTCOMES)


def test_the_script_lists_every_run_of_a_results_folder(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import search_outcomes  # noqa: E402 (scripts/ is no package)

    for name, curve in (("arm/wd0.0/seed0", RISE + [0.6] * 5), ("arm/wd0.01/seed0", RISE)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        train_log(curve).to_csv(tmp_path / "runs" / name / "train_log.csv", index=False)
    assert search_outcomes.main([str(tmp_path), "--out", str(tmp_path / "outcomes.csv")]) == 0
    table = pd.read_csv(tmp_path / "outcomes.csv")
    assert dict(zip(table["run"], table["outcome"])) == {"arm/wd0.0/seed0": "collapsed", "arm/wd0.01/seed0": "grokked"}
    assert "| arm/wd0.0/seed0 | collapsed |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no runs"):
        search_outcomes.main([str(tmp_path / "empty")])
