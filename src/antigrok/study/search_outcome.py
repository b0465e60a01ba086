"""The outcome of one run of the transformer search (issue 36), from its train_log.csv alone.

The definitions were fixed, and committed with the grid (configs/modadd_search.yaml), before any
run of the search; docs/reference/modadd_search/README.md states them for a reader. They read the
logged rows as they are (no smoothing; rows are log-spaced, ``log.per_decade`` per decade):

    grokked     some row has test accuracy >= 0.9 (GROK_TEST_ACC)
    peak        the row of the highest test accuracy (the first, if repeated)
    drop        a maximal stretch of consecutive rows after the first grokked row whose test accuracy
                is at least 0.2 (DROP) below the highest test accuracy logged up to that row
    collapsed   grokked, the last five rows (COLLAPSE_ROWS) all at least 0.2 below the peak, and
                train accuracy >= 0.99 (TRAIN_FIT) on at least 95% (FITTED_SHARE) of the rows after the peak
    spike       a drop shorter than five rows that ends before the log does (a drop still open at the
                last row is not counted: it may be the start of a collapse; ``open_drop_rows``)
    breakdown   a loss or accuracy that is NaN or infinite, or train accuracy below 0.99 on more than
                5% of the rows after the peak (after the first fitted row in a run that never grokked)

A run's outcome is the first of breakdown, collapsed, grokked, not_grokked that holds (collapsed and
breakdown exclude each other by the train condition). Spikes are counted in every run, whatever
its outcome. The train rule stops a run whose train loss becomes non-finite without writing a
train_log.csv (antigrok.training.train.NonFiniteLossError): such a run is a breakdown by the failed job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GROK_TEST_ACC = 0.9
DROP = 0.2
COLLAPSE_ROWS = 5
TRAIN_FIT = 0.99
FITTED_SHARE = 0.95
SEARCH_OUTCOMES = ("breakdown", "collapsed", "grokked", "not_grokked")
REQUIRED_COLUMNS = ("step", "train_loss", "train_acc", "test_loss", "test_acc")


@dataclass(frozen=True)
class RunOutcome:
    """A run's outcome and the numbers it was read from (steps are logged steps; None: never)."""

    outcome: str
    fit_step: int | None
    grok_step: int | None
    peak_step: int | None
    peak_test_acc: float
    final_step: int
    final_train_acc: float
    final_test_acc: float
    fitted_share_after_peak: float | None
    spikes: int
    long_drops: int
    open_drop_rows: int
    nonfinite: bool


def drops(test_acc: np.ndarray, start: int) -> list[tuple[int, int]]:
    """The drops from row ``start`` on, as (first row, rows) pairs: stretches of consecutive rows at
    least DROP below the running maximum of the test accuracy (the maximum over every earlier row)."""
    running_peak = np.maximum.accumulate(test_acc)
    below = test_acc <= running_peak - DROP + 1e-12  # "at least 0.2 below", robust to rounding of 0.2
    stretches, first = [], None
    for row in range(start, len(test_acc)):
        if below[row] and first is None:
            first = row
        elif not below[row] and first is not None:
            stretches.append((first, row - first))
            first = None
    if first is not None:
        stretches.append((first, len(test_acc) - first))
    return stretches


def fitted_share(train_acc: np.ndarray, after: int) -> float | None:
    """Share of the rows after row ``after`` with train accuracy >= TRAIN_FIT; None if there are none."""
    later = train_acc[after + 1:]
    return float(np.mean(later >= TRAIN_FIT)) if len(later) else None


def classify(train_log: pd.DataFrame) -> RunOutcome:
    """The outcome of the run whose train_log.csv rows are ``train_log`` (in step order)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in train_log.columns]
    if missing or train_log.empty:
        raise ValueError(f"a train log needs rows with the columns {', '.join(REQUIRED_COLUMNS)}; "
                         f"this one {'has no rows' if train_log.empty else 'lacks ' + ', '.join(missing)}")
    steps = train_log["step"].to_numpy()
    train_acc = train_log["train_acc"].to_numpy(dtype=float)
    test_acc = train_log["test_acc"].to_numpy(dtype=float)
    values = train_log[["train_loss", "train_acc", "test_loss", "test_acc"]].to_numpy(dtype=float)
    nonfinite = not np.all(np.isfinite(values))

    def step_at(row: int | None) -> int | None:
        return None if row is None else int(steps[row])

    fitted_rows = np.flatnonzero(train_acc >= TRAIN_FIT)
    fit_row = int(fitted_rows[0]) if len(fitted_rows) else None
    finite_test = np.where(np.isfinite(test_acc), test_acc, -math.inf)
    grok_rows = np.flatnonzero(finite_test >= GROK_TEST_ACC)
    grok_row = int(grok_rows[0]) if len(grok_rows) else None
    peak_row = int(np.argmax(finite_test))

    stretches = drops(finite_test, grok_row) if grok_row is not None else []
    closed = [rows for first, rows in stretches if first + rows < len(test_acc)]
    open_drop_rows = next((rows for first, rows in stretches if first + rows == len(test_acc)), 0)

    after = peak_row if grok_row is not None else fit_row
    share = fitted_share(train_acc, after) if after is not None else None
    broken = nonfinite or (share is not None and share < FITTED_SHARE)
    last_rows_dropped = len(test_acc) >= COLLAPSE_ROWS and bool(
        np.all(finite_test[-COLLAPSE_ROWS:] <= finite_test[peak_row] - DROP + 1e-12))
    collapsed = grok_row is not None and last_rows_dropped and share is not None and share >= FITTED_SHARE
    if broken:
        outcome = "breakdown"
    elif collapsed:
        outcome = "collapsed"
    elif grok_row is not None:
        outcome = "grokked"
    else:
        outcome = "not_grokked"
    return RunOutcome(
        outcome=outcome, fit_step=step_at(fit_row), grok_step=step_at(grok_row),
        peak_step=step_at(peak_row) if grok_row is not None else None, peak_test_acc=float(np.nanmax(test_acc)),
        final_step=int(steps[-1]), final_train_acc=float(train_acc[-1]), final_test_acc=float(test_acc[-1]),
        fitted_share_after_peak=share if grok_row is not None else None,
        spikes=sum(rows < COLLAPSE_ROWS for rows in closed), long_drops=sum(rows >= COLLAPSE_ROWS for rows in closed),
        open_drop_rows=open_drop_rows, nonfinite=nonfinite,
    )


def outcome_table(train_logs: dict[str, str | Path]) -> pd.DataFrame:
    """One row per run (``{run name: train_log.csv path}``): its name and its RunOutcome's fields."""
    rows = [{"run": name, **asdict(classify(pd.read_csv(path)))} for name, path in train_logs.items()]
    return pd.DataFrame(rows, columns=["run", *RunOutcome.__dataclass_fields__])
