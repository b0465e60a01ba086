"""Candidate early-warning rules, declared in the configuration and scored run by run (issue 24).

A rule is a data-free condition on one statistic of the weights (or a progress measure) at each
checkpoint, e.g. "fc1's alpha below 2 for 2 checkpoints in a row". It is armed from the run's
fit_step (train accuracy only) and fires when its condition has held ``persist`` checkpoints in a
row (antigrok.study.tables.firing_steps, the detector's own firing logic). Test accuracy never enters a
rule; it only scores it: each run is scored by its own outcome (phases.csv: does it collapse?), not
by its weight decay, since a weight-decay-0.01 run may decline too.

Rules are frozen in a commit before the runs that test them are analysed
(configs/detector_study.yaml, docs/reference/detector_study/README.md).

A rule (one entry of ``warning_rules.rules``):

    name        identifier, unique
    statistic   one of STATISTICS (a column of htsr.csv, traps.csv or progress.csv, or a derived one)
    layers      the layers it reads (layer statistics); absent for model-wide progress measures
    combine     mean (the condition is on the layers' mean, NaN if any is missing) | any | all
    compare     below | above | at_least (the threshold) | departs (the progress-measure control: the slope
                against log step leaves the median of its last ``window`` slopes by more than
                ``threshold`` robust SDs, antigrok.study.detector.departure_condition)
    threshold   number
    baseline    none | ratio | difference: compare the value / or - its value at the arming checkpoint
    persist     checkpoints in a row the condition must hold before the rule fires (>= 1)
    all_of      instead of a statistic: fires where every named rule's condition holds
    origin      paper | issue | discovery | post_hoc: where the rule came from
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.runs import RUN_KEYS, read_run_files
from antigrok.study.detector import (
    DEFAULT_DETECTOR,
    accuracy_at,
    accuracy_curve,
    classify_outcome,
    departure_condition,
    firing_steps,
    lead_decades,
)
from antigrok.study.phases import edges_from_phases

# statistic -> (file it comes from, column or derivation, per layer?)
STATISTICS = {
    "alpha": ("htsr", True),
    "stable_rank": ("htsr", True),
    "mp_ks_stat": ("htsr", True),
    "rand_edge_ratio": ("htsr", True),  # max_rand_eval / rand_lambda_plus: top shuffled eigenvalue over the MP edge
    "num_traps": ("traps", True),
    "num_traps_centered": ("traps", True),
    "l2_norm": ("progress", False),
    "activation_sparsity": ("progress", False),
    "abs_weight_entropy": ("progress", False),
    "circuit_complexity": ("progress", False),
}
COMBINES = ("mean", "any", "all")
COMPARES = ("below", "above", "at_least", "departs")
BASELINES = ("none", "ratio", "difference")
ORIGINS = ("paper", "issue", "discovery", "post_hoc")
MODEL = "model"  # the "layer" of a model-wide statistic

RULE_RUN_COLUMNS = [
    "experiment", "weight_decay", "seed", "rule", "origin", "statistic", "layers", "armed_from", "fired",
    "alarm_step", "num_firings", "firing_steps", "fit_step", "peak_step", "decline_start_step",
    "collapse_step", "collapses", "outcome", "in_time", "lead_decades_vs_peak",
    "lead_decades_vs_decline_start", "lead_decades_vs_collapse", "test_acc_at_alarm", "peak_test_acc",
    "final_test_acc", "cost_of_stopping",
]
RULE_SUMMARY_COLUMNS = [
    "scope", "rule", "origin", "n_runs", "n_collapsing", "n_in_time", "in_time_rate", "in_time_ci_low",
    "in_time_ci_high", "n_early", "n_late", "n_missed", "n_not_collapsing", "n_fired_not_collapsing",
    "false_alarm_rate", "false_alarm_ci_low", "false_alarm_ci_high", "median_lead_decades_vs_decline_start",
    "median_lead_decades_vs_collapse", "median_cost_of_stopping_early", "median_cost_of_stopping",
    "warns_without_false_alarm",
]


@dataclass(frozen=True)
class WarningRule:
    name: str
    statistic: str | None = None
    layers: tuple[str, ...] = ()
    combine: str = "any"
    compare: str = "below"
    threshold: float = math.nan
    baseline: str = "none"
    persist: int = 1
    window: int = DEFAULT_DETECTOR["control_window"]
    scale_floor: float = DEFAULT_DETECTOR["control_scale_floor"]
    all_of: tuple[str, ...] = ()
    origin: str = "issue"
    description: str = field(default="", compare=False)

    @classmethod
    def from_config(cls, entry: Mapping) -> "WarningRule":
        entry = dict(entry)
        for key in ("layers", "all_of"):
            entry[key] = tuple(entry.get(key, ()))
        rule = cls(**entry)
        rule.check()
        return rule

    def check(self) -> None:
        where = f"warning_rules rule {self.name!r}"
        if self.all_of:
            if self.statistic is not None:
                raise ValueError(f"{where}: give either statistic or all_of, not both")
        elif self.statistic not in STATISTICS:
            raise ValueError(f"{where}: unknown statistic {self.statistic!r}; known: {', '.join(STATISTICS)}")
        elif STATISTICS[self.statistic][1] and not self.layers:
            raise ValueError(f"{where}: statistic {self.statistic} is per layer: name its layers")
        for value, allowed, key in ((self.combine, COMBINES, "combine"), (self.compare, COMPARES, "compare"),
                                    (self.baseline, BASELINES, "baseline"), (self.origin, ORIGINS, "origin")):
            if value not in allowed:
                raise ValueError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")
        if self.persist < 1:
            raise ValueError(f"{where}: persist must be >= 1, got {self.persist}")
        if not self.all_of and not math.isfinite(self.threshold):
            raise ValueError(f"{where}: needs a finite threshold")

    def describe(self) -> str:
        """The condition in words, e.g. "mean alpha of fc1, fc2 below 2" or "l2_norm / its value at
        arming above 1.3, 2 checkpoints in a row"."""
        if self.all_of:
            condition = "all of " + ", ".join(self.all_of)
        else:
            subject = self.statistic
            if self.layers:
                several = len(self.layers) > 1
                which = {"mean": "", "any": "any of " if several else "", "all": "each of " if several else ""}
                subject = ("mean " if self.combine == "mean" and several else "") + \
                    f"{self.statistic} of {which[self.combine]}{', '.join(self.layers)}"
            subject += {"none": "", "ratio": " / its value at arming", "difference": " - its value at arming"}[
                self.baseline]
            if self.compare == "departs":
                condition = (f"{subject}: slope against log step more than {self.threshold:g} robust SDs from "
                             f"the median of its last {self.window} slopes")
            else:
                condition = f"{subject} {self.compare.replace('_', ' ')} {self.threshold:g}"
        return condition + (f", {self.persist} checkpoints in a row" if self.persist > 1 else "")

    def definition(self, rules_by_name: Mapping[str, "WarningRule"]) -> tuple:
        """What the rule computes, its name, origin and description aside: two rules with the same
        definition fire at the same steps of every run. ``rules_by_name`` resolves all_of parts."""
        if self.all_of:
            parts = sorted((rules_by_name[name].definition(rules_by_name) for name in self.all_of), key=repr)
            return ("all_of", tuple(parts), self.persist)
        # over one layer (or a model-wide statistic) mean, any and all agree
        combine = self.combine if len(self.layers) > 1 else "any"
        departs = self.compare == "departs"
        return (self.statistic, tuple(sorted(self.layers)), combine, self.compare, float(self.threshold), self.baseline,
                self.persist, self.window if departs else None, self.scale_floor if departs else None)


def rules_from_config(entries: Iterable[Mapping]) -> list[WarningRule]:
    """The rules of ``warning_rules.rules``, checked: names unique, all_of naming earlier rules."""
    rules, names = [], set()
    for entry in entries:
        rule = WarningRule.from_config(entry)
        if rule.name in names:
            raise ValueError(f"warning_rules: rule name {rule.name!r} is used twice")
        missing = [name for name in rule.all_of if name not in names]
        if missing:
            raise ValueError(f"warning_rules rule {rule.name!r}: all_of names {missing}, which are not rules "
                             "listed before it")
        names.add(rule.name)
        rules.append(rule)
    return rules


# ----------------------------------------------------------------------------- statistics


def statistic_table(statistic: str, htsr: pd.DataFrame, traps: pd.DataFrame, progress: pd.DataFrame) -> pd.DataFrame:
    """One run's ``statistic`` per checkpoint: a frame indexed by step, one column per layer
    (a single column ``model`` for a progress measure)."""
    source, per_layer = STATISTICS[statistic]
    if not per_layer:
        if statistic not in progress.columns:
            raise ValueError(f"progress.csv has no column {statistic!r}")
        return progress.set_index("step")[[statistic]].rename(columns={statistic: MODEL}).astype(float).sort_index()
    frame = htsr if source == "htsr" else traps
    if statistic == "rand_edge_ratio":
        values = frame["max_rand_eval"].astype(float) / frame["rand_lambda_plus"].astype(float)
    else:
        if statistic not in frame.columns:
            raise ValueError(f"{source}.csv has no column {statistic!r}; rerun its rule with this antigrok version")
        values = frame[statistic].astype("Float64").astype(float)
    long = pd.DataFrame({"step": frame["step"].to_numpy(), "layer": frame["layer"].to_numpy(), "value": values.to_numpy()})
    return long.pivot(index="step", columns="layer", values="value").sort_index()


def value_at_arming(series: pd.Series, armed_from: int | None) -> float:
    """The value at the first checkpoint at or after ``armed_from`` (NaN if none)."""
    after = series[series.index >= (armed_from if armed_from is not None else series.index.min())]
    return float(after.iloc[0]) if len(after) else math.nan


def relative_to_baseline(series: pd.Series, baseline: str, armed_from: int | None) -> pd.Series:
    if baseline == "none":
        return series
    base = value_at_arming(series, armed_from)
    return series / base if baseline == "ratio" else series - base


def compare_condition(series: pd.Series, rule: WarningRule) -> pd.Series:
    """Bool per step: the rule's comparison; a missing value does not hold."""
    if rule.compare == "departs":
        return departure_condition(series, rule.window, rule.threshold, rule.scale_floor).astype(bool)
    if rule.compare == "below":
        holds = series < rule.threshold
    else:
        holds = series > rule.threshold if rule.compare == "above" else series >= rule.threshold
    return holds & series.notna()


def rule_condition(rule: WarningRule, htsr, traps, progress, armed_from, conditions: Mapping | None = None) -> pd.Series:
    """Bool per checkpoint step of one run: where ``rule``'s condition holds."""
    if rule.all_of:
        parts = [conditions[name] for name in rule.all_of]
        return pd.concat(parts, axis=1, join="inner").all(axis=1)
    table = statistic_table(rule.statistic, htsr, traps, progress)
    layers = list(rule.layers) or [MODEL]
    unknown = [layer for layer in layers if layer not in table.columns]
    if unknown:
        raise ValueError(f"warning rule {rule.name!r} names layers {unknown}; the run has {list(table.columns)}")
    columns = {layer: relative_to_baseline(table[layer], rule.baseline, armed_from) for layer in layers}
    if rule.combine == "mean":
        return compare_condition(pd.DataFrame(columns).mean(axis=1, skipna=False), rule)
    held = pd.DataFrame({layer: compare_condition(series, rule) for layer, series in columns.items()})
    return held.all(axis=1) if rule.combine == "all" else held.any(axis=1)


# ----------------------------------------------------------------------------- scoring


def run_outcome(alarm_step, edges) -> dict:
    """The scoring columns of one rule in one run from its first firing and the run's edges."""
    outcome = classify_outcome(alarm_step, edges.peak_step, edges.collapse_step)
    return {
        "outcome": outcome,
        "in_time": outcome == "after_peak_before_collapse",
        "lead_decades_vs_peak": lead_decades(alarm_step, edges.peak_step),
        "lead_decades_vs_decline_start": lead_decades(alarm_step, edges.anti_grokking_start_step),
        "lead_decades_vs_collapse": lead_decades(alarm_step, edges.collapse_step),
    }


def rule_firings(rules: list[WarningRule], htsr, traps, progress, armed_from: int | None) -> dict[str, list[int]]:
    """Every firing step of each rule over one run's checkpoints (frames of that run only), armed
    from ``armed_from``; no firing while it is None (not armed). ``rules`` lists an all_of rule's
    parts before it, as rules_from_config checks."""
    conditions, firings = {}, {}
    for rule in rules:
        conditions[rule.name] = rule_condition(rule, htsr, traps, progress, armed_from, conditions)
        armed = armed_from is not None
        firings[rule.name] = firing_steps(conditions[rule.name], armed_from, rule.persist) if armed else []
    return firings


def evaluate_run(rules: list[WarningRule], htsr, traps, progress, phases) -> pd.DataFrame:
    """One row per rule for one run (frames of that run only): firings, outcome, leads, cost."""
    edges = edges_from_phases(phases)
    curve = accuracy_curve(phases)
    firings_of = rule_firings(rules, htsr, traps, progress, edges.fit_step)
    rows = []
    for rule in rules:
        firings = firings_of[rule.name]
        alarm_step = firings[0] if firings else None
        at_alarm, at_peak = accuracy_at(curve, alarm_step), accuracy_at(curve, edges.peak_step)
        rows.append({
            "rule": rule.name,
            "origin": rule.origin,
            "statistic": rule.statistic or "+".join(rule.all_of),
            "layers": ";".join(rule.layers),
            "armed_from": edges.fit_step,
            "fired": alarm_step is not None,
            "alarm_step": alarm_step,
            "num_firings": len(firings),
            "firing_steps": ";".join(map(str, firings)),
            "fit_step": edges.fit_step,
            "peak_step": edges.peak_step,
            "decline_start_step": edges.anti_grokking_start_step,
            "collapse_step": edges.collapse_step,
            "collapses": edges.collapse_step is not None,
            **run_outcome(alarm_step, edges),
            "test_acc_at_alarm": at_alarm,
            "peak_test_acc": at_peak,
            "final_test_acc": float(curve.iloc[-1]) if len(curve) else math.nan,
            "cost_of_stopping": at_peak - at_alarm,
        })
    return pd.DataFrame(rows)


def exact_binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion; (NaN, NaN) for no trials."""
    if trials == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def _median(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def summarize_rule(rows: pd.DataFrame) -> dict:
    """Counts with exact 95% intervals, leads and costs of one rule over a set of runs."""
    collapsing, holding = rows[rows["collapses"]], rows[~rows["collapses"]]
    in_time = collapsing[collapsing["in_time"]]
    fired_holding = int(holding["fired"].sum())
    early = collapsing[collapsing["outcome"] == "before_peak"]
    n_in_time = len(in_time)
    in_low, in_high = exact_binomial_interval(n_in_time, len(collapsing))
    fa_low, fa_high = exact_binomial_interval(fired_holding, len(holding))
    return {
        "n_runs": len(rows),
        "n_collapsing": len(collapsing),
        "n_in_time": n_in_time,
        "in_time_rate": n_in_time / len(collapsing) if len(collapsing) else math.nan,
        "in_time_ci_low": in_low,
        "in_time_ci_high": in_high,
        "n_early": len(early),
        "n_late": int((collapsing["outcome"] == "late").sum()),
        "n_missed": int((collapsing["outcome"] == "missed").sum()),
        "n_not_collapsing": len(holding),
        "n_fired_not_collapsing": fired_holding,
        "false_alarm_rate": fired_holding / len(holding) if len(holding) else math.nan,
        "false_alarm_ci_low": fa_low,
        "false_alarm_ci_high": fa_high,
        "median_lead_decades_vs_decline_start": _median(in_time["lead_decades_vs_decline_start"]),
        "median_lead_decades_vs_collapse": _median(in_time["lead_decades_vs_collapse"]),
        "median_cost_of_stopping_early": _median(early["cost_of_stopping"]),
        "median_cost_of_stopping": _median(rows.loc[rows["fired"], "cost_of_stopping"]),
        "warns_without_false_alarm": bool(n_in_time > 0 and fired_holding == 0 and len(early) == 0),
    }


def summarize_rules(table: pd.DataFrame) -> pd.DataFrame:
    """Per experiment and over all runs (scope ``all``), one row per rule: RULE_SUMMARY_COLUMNS."""
    records = []
    scopes = [(name, group) for name, group in table.groupby("experiment", sort=False)]
    if len(scopes) > 1:
        scopes.append(("all", table))
    for scope, group in scopes:
        for rule, rows in group.groupby("rule", sort=False):
            records.append({"scope": scope, "rule": rule, "origin": rows["origin"].iloc[0], **summarize_rule(rows)})
    return pd.DataFrame(records, columns=RULE_SUMMARY_COLUMNS)


# ----------------------------------------------------------------------------- files


def evaluate_runs(rules: list[WarningRule], htsr: pd.DataFrame, traps: pd.DataFrame, progress: pd.DataFrame,
                  phases: pd.DataFrame) -> pd.DataFrame:
    """RULE_RUN_COLUMNS for every run of the frames (tagged by read_run_files), one row per rule."""
    frames = []
    for run, run_htsr in htsr.groupby(RUN_KEYS, sort=True):
        def of_run(frame):
            mask = np.logical_and.reduce([frame[key] == value for key, value in zip(RUN_KEYS, run)])
            return frame[mask]
        rows = evaluate_run(rules, run_htsr, of_run(traps), of_run(progress), of_run(phases))
        for key, value in zip(RUN_KEYS, run):
            rows[key] = value
        frames.append(rows)
    table = pd.concat(frames, ignore_index=True)[RULE_RUN_COLUMNS]
    for column in ("armed_from", "alarm_step", "fit_step", "peak_step", "decline_start_step", "collapse_step"):
        table[column] = table[column].astype("Int64")
    return table


RULES_CAPTION = (
    "Each run is scored by its own outcome (phases.csv: a collapse = smoothed test accuracy at least "
    "phases.collapse_drop below its peak while train accuracy stays fitted), whatever its weight decay. "
    "A rule is armed from fit_step and fires when its condition has held `persist` checkpoints in a row. "
    "in time = first firing at or after the test-accuracy peak and before the collapse crossing; early = "
    "before the peak of a collapsing run (cost: peak minus test accuracy at the alarm); false alarm = any "
    "firing in a run that does not collapse. Rates with exact (Clopper-Pearson) 95% intervals. Leads in "
    "decades of steps (log10 of the ratio, > 0 = the alarm came first), medians over in-time warnings. "
    "warns_without_false_alarm: in time at least once, never early, never on a non-collapsing run."
)


def summary_markdown(summary: pd.DataFrame, title: str, descriptions: Mapping[str, str] | None = None) -> str:
    """The summary as Markdown: one table per scope, counts as k/n [interval]."""
    def rate(k, n, low, high):
        return "—" if n == 0 else f"{k}/{n} [{low:.2f}, {high:.2f}]"

    def number(value):
        return "—" if value is None or not np.isfinite(value) else f"{value:.2f}"

    lines = [f"# {title}", "", RULES_CAPTION, ""]
    for scope, rows in summary.groupby("scope", sort=False):
        lines += [f"## {scope}", ""]
        if descriptions and scope in descriptions:
            lines += [descriptions[scope], ""]
        lines += ["| rule | origin | in time | early | late | missed | fires on non-collapsing | lead vs decline start (dec) "
                  "| lead vs crossing (dec) | cost of early stop | no false alarm |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows.itertuples(index=False):
            lines.append("| " + " | ".join([
                row.rule, row.origin,
                rate(row.n_in_time, row.n_collapsing, row.in_time_ci_low, row.in_time_ci_high),
                str(row.n_early), str(row.n_late), str(row.n_missed),
                rate(row.n_fired_not_collapsing, row.n_not_collapsing, row.false_alarm_ci_low, row.false_alarm_ci_high),
                number(row.median_lead_decades_vs_decline_start), number(row.median_lead_decades_vs_collapse),
                number(row.median_cost_of_stopping_early), "yes" if row.warns_without_false_alarm else "no",
            ]) + " |")
        lines.append("")
    return "\n".join(lines)


def write_rule_tables(htsr_paths, traps_paths, progress_paths, phases_paths, outputs: Mapping, rule_entries,
                      descriptions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The rule ``warning_rules``: warning_rules.csv (run x rule) and warning_rules_summary.csv/.md
    (``outputs`` keys: runs_csv, summary_csv, summary_md)."""
    rules = rules_from_config(rule_entries)
    table = evaluate_runs(rules, read_run_files(htsr_paths), read_run_files(traps_paths),
                          read_run_files(progress_paths), read_run_files(phases_paths))
    summary = summarize_rules(table)
    write_csv_atomically(table, outputs["runs_csv"])
    write_csv_atomically(summary, outputs["summary_csv"])
    write_text_atomically(outputs["summary_md"], summary_markdown(summary, "Warning rules, scored run by run",
                                                                  descriptions))
    return summary
