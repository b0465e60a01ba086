"""The early-warning detector: how early, and how often wrongly, a data-free alarm fires before
the collapse; detectors.csv and its summary. One implementation of the alarms, shared by the
workflow (after the fact) and antigrok.monitor (during training)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.runs import RUN_KEYS, read_run_files
from antigrok.schema import section_defaults
from antigrok.spectra.primitives import mean_alpha
from antigrok.study.phases import edges_from_phases
from antigrok.table_format import frame_to_markdown

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- detector
#
# One implementation of the alarms, shared by the workflow (detectors.csv, after the fact) and
# antigrok.monitor (during training): every function below works on the checkpoints seen so far
# (frames with a ``step`` column), so a growing history gives the same answers as the full one
# for the steps they share.

DETECTOR_COLUMNS = [
    "experiment",
    "weight_decay",
    "seed",
    "alarm",
    "alarm_kind",
    "threshold",
    "armed_from",
    "fired",
    "alarm_step",
    "num_firings",
    "firing_steps",
    "first_firing_after_peak",
    "fit_step",
    "peak_step",
    "collapse_step",
    "collapses",
    "lead_steps_vs_peak",
    "lead_decades_vs_peak",
    "lead_steps_vs_collapse",
    "lead_decades_vs_collapse",
    "test_acc_at_alarm",
    "peak_test_acc",
    "final_test_acc",
    "cost_of_stopping",
    "false_alarm",
    "outcome",
]
DETECTOR_SUMMARY_COLUMNS = [
    "experiment",
    "weight_decay",
    "alarm",
    "n_runs",
    "n_collapsed",
    "n_fired",
    "n_before_peak",
    "n_after_peak_before_collapse",
    "n_late",
    "n_missed",
    "n_false_alarm_no_collapse",
    "n_quiet",
    "n_false_alarms",
    "n_fired_after_peak",
    "median_lead_steps_vs_peak",
    "median_lead_decades_vs_peak",
    "median_lead_steps_vs_collapse",
    "median_lead_decades_vs_collapse",
    "median_cost_of_stopping",
]
# outcome of an alarm's first firing in one run (detectors.csv "outcome")
OUTCOMES = {
    "before_peak": "fired first before the test-accuracy peak of a run that collapses (a false alarm: stopping "
    "there forgoes the rest of the rise)",
    "after_peak_before_collapse": "fired first at or after the peak and before the collapse crossing (a true, "
    "early warning)",
    "late": "fired first at or after the collapse crossing (true but late)",
    "false_alarm": "fired in a run that never collapses",
    "missed": "never fired in a run that collapses",
    "quiet": "never fired in a run that never collapses (correct)",
}
FALSE_ALARM_OUTCOMES = ("before_peak", "false_alarm")
DEFAULT_DETECTOR = section_defaults("detector")  # the detector section of the config, as the schema fills it
SPECTRAL_ALARMS = ("alpha_below_critical", "correlation_trap", "alpha_and_trap")
# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_SD = 1.4826


def firing_steps(condition: pd.Series, armed_from: int | None, min_consecutive: int = 1) -> list[int]:
    """Every step at which the alarm fires: ``condition`` (bool, indexed by step) has held for
    ``min_consecutive`` checkpoints in a row, counting only steps >= ``armed_from`` (None: all).

    After a firing the alarm stays fired while the condition holds; once it clears, the alarm
    re-arms and fires again when the condition has held ``min_consecutive`` checkpoints anew.
    A NaN condition (no value at that checkpoint) counts as not holding.
    """
    condition = condition.sort_index().astype("boolean").fillna(False).astype(bool)
    if armed_from is not None:
        condition = condition[condition.index >= armed_from]
    steps, run_length = [], 0
    for step, holds in condition.items():
        run_length = run_length + 1 if holds else 0
        if run_length == min_consecutive:
            steps.append(int(step))
    return steps


def first_alarm_step(condition: pd.Series, armed_from: int | None, min_consecutive: int = 1) -> int | None:
    """The first firing step of :func:`firing_steps`; None when the alarm never fires."""
    steps = firing_steps(condition, armed_from, min_consecutive)
    return steps[0] if steps else None


def spectral_conditions(
    htsr: pd.DataFrame, traps: pd.DataFrame, layers: list[str], alpha_critical: float, trap_min: int
) -> dict:
    """The data-free alarms of one run, level rules per checkpoint: alpha averaged over ``layers``
    below ``alpha_critical``; at least ``trap_min`` Correlation Traps in any layer; both.

    Returns {alarm: (kind, threshold, bool Series indexed by step)}.
    """
    low_alpha = mean_alpha(htsr, layers) < alpha_critical  # NaN (a failed fit) does not hold
    # a missing count (failed MP fit in every layer) does not hold, also inside "both"
    trapped = (traps.groupby("step")["num_traps"].max().sort_index() >= trap_min).astype("boolean").fillna(False)
    trapped = trapped.astype(bool)
    both = pd.concat([low_alpha, trapped], axis=1, join="inner").all(axis=1)
    return {
        "alpha_below_critical": ("htsr", float(alpha_critical), low_alpha),
        "correlation_trap": ("htsr", float(trap_min), trapped),
        "alpha_and_trap": ("htsr", float(alpha_critical), both),
    }


def local_log_slopes(values: np.ndarray, steps: np.ndarray, scale_floor: float) -> tuple[np.ndarray, float]:
    """Slopes between consecutive checkpoints against log(step), and the smallest robust scale
    to compare them with.

    Positive values are taken in log too: a power law in step is a straight line, whatever the
    spacing of the checkpoints, and ``scale_floor`` is then a relative change per unit log(step).
    A window that holds a value <= 0 uses the values as they are, and a floor of ``scale_floor``
    x the median |value|.
    """
    if (values > 0).all():
        return np.diff(np.log(values)) / np.diff(np.log(steps)), scale_floor
    return np.diff(values) / np.diff(np.log(steps)), scale_floor * float(np.median(np.abs(values)))


def departure_condition(values: pd.Series, window: int, robust_z: float, scale_floor: float) -> pd.Series:
    """Per checkpoint: does the measure leave its own recent trend?

    The trend is the local slope against log(step) (of log(value) where the values are positive,
    see :func:`local_log_slopes`). The condition holds when the slope into this checkpoint departs
    from the median of the ``window`` slopes before it by more than ``robust_z`` robust SDs
    (1.4826 x their MAD, at least the floor). Compared with its own trend, a smooth power law
    never fires (its slopes are constant), nor does a slope that drifts steadily (|z| of about
    1.35 for a linear drift, any window); a jump, a kink or a change of exponent does. Comparing
    the values with their median instead fires on any steady growth over log-spaced checkpoints:
    a measure growing 1.26x per checkpoint gives z = 2.9 against a window of 8.

    False at step <= 0 (no log) and while fewer than ``window`` earlier slopes exist.
    """
    values = values.sort_index().dropna().astype(float)
    values = values[values.index > 0]
    result = pd.Series(False, index=values.index)
    array, steps = values.to_numpy(), values.index.to_numpy(dtype=float)
    for position in range(window + 1, len(array)):
        segment = slice(position - window - 1, position + 1)  # window + 1 slopes: window earlier, the current
        slopes, floor = local_log_slopes(array[segment], steps[segment], scale_floor)
        reference, current = slopes[:-1], slopes[-1]
        median = np.median(reference)
        scale = max(MAD_TO_SD * np.median(np.abs(reference - median)), floor)
        departure = abs(current - median)
        result.iloc[position] = departure > robust_z * scale if scale > 0 else departure > 0
    return result


def control_conditions(progress: pd.DataFrame, settings: dict, context: str = "progress.csv") -> dict:
    """The control alarms of one run: a departure (:func:`departure_condition`) of each of
    ``settings["control_measures"]`` (columns of ``progress``, one row per step)."""
    by_step = progress.set_index("step").sort_index()
    conditions = {}
    for measure in settings["control_measures"]:
        if measure not in by_step.columns:
            raise ValueError(
                f"detector.control_measures names {measure!r}, which {context} lacks "
                f"(it has {sorted(by_step.columns)})"
            )
        condition = departure_condition(
            by_step[measure],
            int(settings["control_window"]),
            float(settings["control_robust_z"]),
            float(settings["control_scale_floor"]),
        )
        conditions[f"{measure}_departure"] = ("control", float(settings["control_robust_z"]), condition)
    return conditions


def alarm_conditions(htsr, traps, progress, average_layers, alpha_critical, settings) -> dict:
    """Per alarm name: (kind, threshold, boolean Series indexed by checkpoint step) for one run:
    the spectral alarms (:func:`spectral_conditions`) and the controls (:func:`control_conditions`;
    none when ``progress`` is None)."""
    settings = {**DEFAULT_DETECTOR, **settings}
    experiment = htsr["experiment"].iloc[0] if "experiment" in htsr else None
    if isinstance(average_layers, dict):
        if experiment not in average_layers:
            raise ValueError(f"htsr.average_layers has no entry for experiment {experiment!r}: add its layer list")
        average_layers = average_layers[experiment]
    conditions = spectral_conditions(htsr, traps, average_layers, alpha_critical, int(settings["trap_min"]))
    if progress is not None:
        conditions.update(control_conditions(progress, settings, f"progress.csv of {experiment}"))
    return conditions


def lead(reference_step, alarm_step) -> tuple[float, float]:
    """(steps, decades) by which an alarm precedes a reference step: reference - alarm and
    log10(reference) - log10(alarm); positive = the alarm came first. NaN where either is
    missing (decades also where either is step 0)."""
    if alarm_step is None or reference_step is None:
        return math.nan, math.nan
    steps = float(reference_step - alarm_step)
    return steps, lead_decades(alarm_step, reference_step)


def lead_decades(alarm_step, reference_step) -> float:
    """log10(reference_step) - log10(alarm_step); NaN when either is missing or step 0."""
    if alarm_step is None or reference_step is None or alarm_step <= 0 or reference_step <= 0:
        return math.nan
    return math.log10(reference_step) - math.log10(alarm_step)


def classify_outcome(alarm_step, peak_step, collapse_step) -> str:
    """The OUTCOMES key of an alarm's first firing (``alarm_step``, None if it never fired)."""
    if collapse_step is None:
        return "quiet" if alarm_step is None else "false_alarm"
    if alarm_step is None:
        return "missed"
    if peak_step is None or alarm_step < peak_step:
        return "before_peak"
    return "after_peak_before_collapse" if alarm_step < collapse_step else "late"


def alarm_outcome(firings: list[int], fit_step, peak_step, collapse_step) -> dict:
    """The firing, edge and lead columns of one detector row (alarm_step = the first firing)."""
    alarm_step = firings[0] if firings else None
    after_peak = [step for step in firings if peak_step is not None and step >= peak_step]
    outcome = classify_outcome(alarm_step, peak_step, collapse_step)
    lead_steps_vs_peak, lead_decades_vs_peak = lead(peak_step, alarm_step)
    lead_steps_vs_collapse, lead_decades_vs_collapse = lead(collapse_step, alarm_step)
    return {
        "fired": alarm_step is not None,
        "alarm_step": alarm_step,
        "num_firings": len(firings),
        "firing_steps": ";".join(str(step) for step in firings),
        "first_firing_after_peak": after_peak[0] if after_peak else None,
        "fit_step": fit_step,
        "peak_step": peak_step,
        "collapse_step": collapse_step,
        "collapses": collapse_step is not None,
        "lead_steps_vs_peak": lead_steps_vs_peak,
        "lead_decades_vs_peak": lead_decades_vs_peak,
        "lead_steps_vs_collapse": lead_steps_vs_collapse,
        "lead_decades_vs_collapse": lead_decades_vs_collapse,
        "false_alarm": outcome in FALSE_ALARM_OUTCOMES,
        "outcome": outcome,
    }


def accuracy_curve(phases: pd.DataFrame) -> pd.Series:
    """A run's test accuracy per logged step: phases.csv's smoothed curve (the one the phase edges
    are read on), its raw test_acc where it has no smoothed column."""
    column = next((name for name in ("test_acc_smoothed", "test_acc") if name in phases.columns), None)
    if column is None:
        raise ValueError(f"phases.csv has neither test_acc_smoothed nor test_acc (it has {sorted(phases.columns)})")
    return phases.set_index("step")[column].astype(float).sort_index()


def accuracy_at(curve: pd.Series, step) -> float:
    """The test accuracy at ``step``: the last logged step at or before it (checkpoints are logged)."""
    if step is None or curve.empty or step < curve.index[0]:
        return math.nan
    return float(curve.loc[:step].iloc[-1])


def stopping_cost(curve: pd.Series, alarm_step, peak_step) -> dict:
    """What stopping at the alarm would have given: test accuracy there, at the peak, at the end."""
    at_alarm, at_peak = accuracy_at(curve, alarm_step), accuracy_at(curve, peak_step)
    return {
        "test_acc_at_alarm": at_alarm,
        "peak_test_acc": at_peak,
        "final_test_acc": float(curve.iloc[-1]) if not curve.empty else math.nan,
        "cost_of_stopping": at_peak - at_alarm,
    }


def armed_from_step(conditions: dict, fit_step, arm_at_fit: bool) -> tuple[bool, int | None]:
    """(armed at all, first step counted): from fit_step when ``arm_at_fit`` (never armed in a run
    that never fits its train set), else from the first checkpoint."""
    if arm_at_fit:
        return fit_step is not None, fit_step
    steps = [int(condition.index.min()) for _, _, condition in conditions.values() if len(condition)]
    return True, min(steps) if steps else None


def evaluate_run_alarms(htsr, traps, progress, phases, average_layers, alpha_critical, settings) -> pd.DataFrame:
    """Detector rows of one run (all frames of that run only)."""
    settings = {**DEFAULT_DETECTOR, **settings}
    edges = edges_from_phases(phases)
    curve = accuracy_curve(phases)
    conditions = alarm_conditions(htsr, traps, progress, average_layers, alpha_critical, settings)
    armed, armed_from = armed_from_step(conditions, edges.fit_step, bool(settings["arm_at_fit"]))
    rows = []
    for alarm, (kind, threshold, condition) in conditions.items():
        firings = firing_steps(condition, armed_from, int(settings["min_consecutive"])) if armed else []
        outcome = alarm_outcome(firings, edges.fit_step, edges.peak_step, edges.collapse_step)
        rows.append(
            {
                "alarm": alarm,
                "alarm_kind": kind,
                "threshold": threshold,
                "armed_from": armed_from if armed else None,
                **outcome,
                **stopping_cost(curve, outcome["alarm_step"], edges.peak_step),
            }
        )
    frame = pd.DataFrame(rows)
    for key in RUN_KEYS:
        frame[key] = htsr[key].iloc[0]
    return frame


INTEGER_COLUMNS = (
    "armed_from",
    "alarm_step",
    "first_firing_after_peak",
    "fit_step",
    "peak_step",
    "collapse_step",
    "lead_steps_vs_peak",
    "lead_steps_vs_collapse",
)


def detector_table(htsr, traps, progress, phases, average_layers, alpha_critical, settings) -> pd.DataFrame:
    """detectors.csv: one row per (experiment, weight_decay, seed, alarm)."""
    by_run = {
        name: dict(list(frame.groupby(RUN_KEYS, sort=True)))
        for name, frame in [("htsr.csv", htsr), ("traps.csv", traps), ("progress.csv", progress)]
    }
    frames = []
    for run, run_phases in phases.groupby(RUN_KEYS, sort=True):
        missing = [name for name, runs in by_run.items() if run not in runs]
        if missing:
            raise ValueError(f"run {dict(zip(RUN_KEYS, run))} has phases.csv but no {missing}")
        run_htsr, run_traps, run_progress = (by_run[name][run] for name in by_run)
        frames.append(
            evaluate_run_alarms(run_htsr, run_traps, run_progress, run_phases, average_layers, alpha_critical, settings)
        )
    table = pd.concat(frames, ignore_index=True)
    for column in INTEGER_COLUMNS:
        table[column] = pd.array(table[column].astype(float), dtype="Int64")
    return table[DETECTOR_COLUMNS]


def _median(values: pd.Series) -> float:
    values = values.astype(float)
    return float(values.median()) if values.notna().any() else math.nan


def detector_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, weight_decay, alarm): outcome counts over the runs, median leads over the
    collapsing runs in which the alarm fired, median cost of stopping over every run it fired in.

    n_false_alarms = n_before_peak + n_false_alarm_no_collapse; n_fired_after_peak: collapsing
    runs with any firing at or after the peak (a re-armed alarm's later firing counts here even
    when its first one came before the peak).
    """
    rows = []
    for (experiment, weight_decay, alarm), runs in table.groupby(["experiment", "weight_decay", "alarm"], sort=False):
        collapsed = runs["collapse_step"].notna()
        fired = runs["fired"].astype(bool)
        counts = runs["outcome"].value_counts()
        warned = runs.loc[collapsed & fired]
        rows.append(
            {
                "experiment": experiment,
                "weight_decay": weight_decay,
                "alarm": alarm,
                "n_runs": len(runs),
                "n_collapsed": int(collapsed.sum()),
                "n_fired": int(fired.sum()),
                "n_before_peak": int(counts.get("before_peak", 0)),
                "n_after_peak_before_collapse": int(counts.get("after_peak_before_collapse", 0)),
                "n_late": int(counts.get("late", 0)),
                "n_missed": int(counts.get("missed", 0)),
                "n_false_alarm_no_collapse": int(counts.get("false_alarm", 0)),
                "n_quiet": int(counts.get("quiet", 0)),
                "n_false_alarms": int(runs["outcome"].isin(FALSE_ALARM_OUTCOMES).sum()),
                "n_fired_after_peak": int((collapsed & runs["first_firing_after_peak"].notna()).sum()),
                "median_lead_steps_vs_peak": _median(warned["lead_steps_vs_peak"]),
                "median_lead_decades_vs_peak": _median(warned["lead_decades_vs_peak"]),
                "median_lead_steps_vs_collapse": _median(warned["lead_steps_vs_collapse"]),
                "median_lead_decades_vs_collapse": _median(warned["lead_decades_vs_collapse"]),
                "median_cost_of_stopping": _median(runs.loc[fired, "cost_of_stopping"]),
            }
        )
    return pd.DataFrame(rows, columns=DETECTOR_SUMMARY_COLUMNS)


DETECTOR_CAPTION = (
    "Per alarm and weight decay over seeds. An alarm fires when its condition has held for "
    "detector.min_consecutive checkpoints in a row, counting from fit_step when detector.arm_at_fit; "
    "once the condition clears it re-arms (detectors.csv lists every firing). Outcome of the first "
    "firing: before_peak (a false alarm: before the test-accuracy peak of a run that collapses), "
    "after_peak_before_collapse (a true early warning), late (at or after the collapse crossing), "
    "false_alarm (a run that never collapses), missed / quiet (never fired, in a run that does / does "
    "not collapse). n_false_alarms = before_peak + false_alarm; n_fired_after_peak: collapsing runs "
    "with any firing at or after the peak. Lead vs X = X step − alarm step (decades: log10 of their "
    "ratio; > 0 = the alarm came first), median over collapsing runs that fired. Cost of stopping = "
    "smoothed test accuracy at the peak − at the alarm (phases.csv), median over the runs it fired in."
)


def write_detector_tables(
    htsr_paths, traps_paths, progress_paths, phases_paths, outputs: dict, average_layers, alpha_critical, settings
) -> None:
    """results/tables/detectors.csv and detector_summary.csv/.md (``outputs`` keys: detectors_csv,
    summary_csv, summary_md)."""
    table = detector_table(
        read_run_files(htsr_paths),
        read_run_files(traps_paths),
        read_run_files(progress_paths),
        read_run_files(phases_paths),
        average_layers,
        alpha_critical,
        dict(settings),
    )
    summary = detector_summary(table)
    write_csv_atomically(table, outputs["detectors_csv"])
    write_csv_atomically(summary, outputs["summary_csv"])
    write_text_atomically(outputs["summary_md"],
                          frame_to_markdown(summary, "Early-warning detectors of the collapse", DETECTOR_CAPTION))
    log.info("detectors: %d rows over %d runs", len(table), table.groupby(RUN_KEYS).ngroups)
