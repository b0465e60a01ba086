"""Outcomes as a continuum beside the binary collapse label (issue 33; post hoc).

The detector studies score each run by one line: a collapse is the smoothed test accuracy falling
0.1 below its peak by the last step. The runs so labelled "healthy" were still declining at the
end, so that label is "not yet", not "never". Here, per run (phases.csv only):

- ``decline_at_end``: the smoothed test accuracy at the peak minus at the last logged step;
- ``largest_decline``: the peak minus the lowest smoothed test accuracy after it;
- ``slope_last_decade``: the least-squares slope of the smoothed test accuracy against log10(step)
  over the last decade of steps (accuracy per decade);
- ``censored``: that slope below ``-CENSOR_SLOPE``, a run still declining when training stopped, so
  its decline is a lower bound. The threshold is a choice made here, after the runs were seen.

Then, for each frozen rule's statistic (antigrok.study.warning_rules: the statistic the rule reads, after
its baseline, combined over its layers the way the rule combines them), its value at fixed points
of a run (the last checkpoint at or before the peak, and at or before twice the peak step) and its
Spearman correlation with the decline across runs, with a bootstrap interval over runs. The outcome
is new and the statistics are the frozen ones; every correlation here is post hoc.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from antigrok.study.phases import edges_from_phases
from antigrok.study.warning_rules import MODEL, WarningRule, relative_to_baseline, statistic_table

CENSOR_SLOPE = 0.01  # accuracy per decade
TIMES = {"peak": 1.0, "twice_peak": 2.0}  # multiples of the peak step at which a statistic is read
BOOTSTRAP_RESAMPLES = 10_000


def run_decline(phases: pd.DataFrame) -> dict:
    """The continuous outcome of one run from its phases.csv."""
    edges = edges_from_phases(phases)
    curve = phases.set_index("step")["test_acc_smoothed"].astype(float).sort_index()
    last = int(curve.index.max())
    peak = float(curve.loc[edges.peak_step])
    after_peak = curve[curve.index >= edges.peak_step]
    decade = curve[curve.index >= last / 10]
    slope = float(np.polyfit(np.log10(decade.index.to_numpy(dtype=float)), decade.to_numpy(), 1)[0])
    return {
        "peak_step": int(edges.peak_step), "peak_test_acc": peak, "last_step": last,
        "last_test_acc": float(curve.iloc[-1]), "decline_at_end": peak - float(curve.iloc[-1]),
        "largest_decline": peak - float(after_peak.min()), "slope_last_decade": slope,
        "censored": slope < -CENSOR_SLOPE, "collapses": edges.collapse_step is not None,
        "collapse_step": edges.collapse_step,
    }


def combine_layers(columns: pd.DataFrame, rule: WarningRule) -> pd.Series:
    """The one value per checkpoint whose comparison with the threshold is the rule's condition: the
    layers' mean for ``mean``; for ``any`` the layer nearest to firing (min below, max above), for
    ``all`` the one farthest from it."""
    if rule.combine == "mean" or columns.shape[1] == 1:
        return columns.mean(axis=1, skipna=False)
    toward_firing = rule.compare == "below"
    lowest = toward_firing if rule.combine == "any" else not toward_firing
    return columns.min(axis=1) if lowest else columns.max(axis=1)


def rule_statistic(rule: WarningRule, htsr, traps, progress, armed_from: int | None) -> pd.Series:
    """The statistic the rule reads, per checkpoint step, as one series."""
    table = statistic_table(rule.statistic, htsr, traps, progress)
    layers = list(rule.layers) or [MODEL]
    columns = pd.DataFrame({layer: relative_to_baseline(table[layer], rule.baseline, armed_from) for layer in layers})
    return combine_layers(columns, rule)


def value_at_or_before(series: pd.Series, step: float) -> float:
    """The value at the last checkpoint at or before ``step`` (what a rule could have seen then)."""
    before = series[series.index <= step].dropna()
    return float(before.iloc[-1]) if len(before) else math.nan


def statistic_key(rule: WarningRule) -> tuple:
    """Rules that read the same series (e.g. one threshold at two persistences) share one key."""
    return (rule.statistic, rule.layers, rule.combine if len(rule.layers) > 1 else "", rule.baseline,
            rule.compare == "below")


def run_statistics(rules: Sequence[WarningRule], htsr, traps, progress, phases) -> list[dict]:
    """One row per distinct rule statistic and time point of one run."""
    edges = edges_from_phases(phases)
    rows, seen = [], {}
    for rule in rules:
        if rule.all_of:
            continue  # a conjunction of other rules: no statistic of its own
        seen.setdefault(statistic_key(rule), []).append(rule)
    for group in seen.values():
        rule = group[0]
        series = rule_statistic(rule, htsr, traps, progress, edges.fit_step)
        for time, multiple in TIMES.items():
            step = multiple * edges.peak_step
            rows.append({"rules": ";".join(r.name for r in group), "statistic": rule.statistic,
                         "layers": ";".join(rule.layers), "combine": rule.combine, "baseline": rule.baseline,
                         "time": time, "read_at_step": step, "value": value_at_or_before(series, step)})
    return rows


def spearman_with_bootstrap(x: Sequence[float], y: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = 0, level: float = 0.95) -> dict:
    """Spearman's rho with a percentile bootstrap interval over the pairs (resampled with
    replacement); resamples in which either variable is constant have no rho and are left out,
    and how many were kept is returned."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(len(x)), "rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "resamples_used": 0}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["rho"] = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(resamples, len(x)))
    xs, ys = x[draws], y[draws]
    usable = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    values = rank_correlations(xs[usable], ys[usable])
    if len(values):
        tail = (1 - level) / 2
        out.update(ci_low=float(np.quantile(values, tail)), ci_high=float(np.quantile(values, 1 - tail)),
                   resamples_used=int(len(values)))
    return out


def rank_correlations(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (average ranks for ties), as scipy.stats.spearmanr per row."""
    def centred_ranks(values: np.ndarray) -> np.ndarray:
        ranks = stats.rankdata(values, axis=1)
        return ranks - ranks.mean(axis=1, keepdims=True)

    rx, ry = centred_ranks(xs), centred_ranks(ys)
    return np.sum(rx * ry, axis=1) / np.sqrt(np.sum(rx**2, axis=1) * np.sum(ry**2, axis=1))


def correlation_table(statistics: pd.DataFrame, outcomes: pd.DataFrame, scopes: Mapping[str, pd.Series],
                      outcome: str = "decline_at_end") -> pd.DataFrame:
    """Per rule statistic, time point and scope (a boolean mask over ``outcomes``' runs): Spearman's
    rho of the statistic with ``outcome``, and its bootstrap interval."""
    keys = ["experiment", "weight_decay", "seed"]
    merged = statistics.merge(outcomes[keys + [outcome]], on=keys)
    rows = []
    for scope, mask in scopes.items():
        runs = outcomes.loc[mask, keys]
        part = merged.merge(runs, on=keys)
        for (rules, time), group in part.groupby(["rules", "time"], sort=False):
            rows.append({"scope": scope, "rules": rules, "statistic": group["statistic"].iloc[0],
                         "layers": group["layers"].iloc[0], "time": time, "outcome": outcome,
                         **spearman_with_bootstrap(group["value"], group[outcome])})
    return pd.DataFrame(rows)
