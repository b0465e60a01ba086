"""The three phases of a run (pre-grokking, grokking, anti-grokking) from its accuracy curves alone.

The paper's Fig. 1 shows them as bands on the step axis. Here they are edges found in
train_log.csv with explicit thresholds (``phases.*`` in the config), applied to the test accuracy
after a centred moving median over ``smoothing_window`` logged rows (the log is log-spaced, so the
window spans a fixed fraction of a decade):

    fit_step             first step with train_acc >= train_fit
    peak_step            step of the maximum smoothed test accuracy at or after fit_step
                         (the first such step when the maximum is repeated)
    grokking_start_step  in a run that groks (smoothed test accuracy rises by >= grok_rise from
                         fit_step to the peak): the first step of the final climb to the peak, i.e.
                         the step after the last one before the peak at which the smoothed test
                         accuracy is still <= level(fit) + grok_onset * rise
    collapse_step        the collapse crossing: first step after the peak at which the smoothed
                         test accuracy is >= collapse_drop below its peak value while train_acc
                         >= train_fit (the run is still fitted: a drop with the train set lost is
                         not anti-grokking)
    anti_grokking_start_step
                         in a run that collapses, where the decline starts, as a person reading
                         Fig. 1 places the left edge of the green band: the step after the last one
                         between the peak and the crossing at which the smoothed test accuracy is
                         still >= peak - collapse_onset * drop, with drop the peak minus the lowest
                         smoothed value after the peak (grok_onset's rule, mirrored)

Labels of the logged steps:

    pre-grokking   fit_step <= step < grokking_start_step   (runs that grok)
    grokking       grokking_start_step <= step <= peak_step (runs that grok)
    anti-grokking  step >= anti_grokking_start_step         (runs that collapse)
    none           everything else: before the train set is fitted, on the plateau between the
                   peak and the start of the decline, after the peak of a run that holds, and
                   after fit_step in a run that never groks (unless it collapses)

The crossing is a threshold of the data (collapse_drop); the start of the decline is the phase
edge. Between them lies the decline itself: on the lr 5e-3 reference runs the crossing comes
a fraction of a decade after the decline starts (docs/reference/cpu/README.md).

A run that never fits the train set, never groks or never collapses is said so (NaN edges,
``groks``/``collapses`` false); it is not forced into a phase.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically
from antigrok.schema import section_defaults

log = logging.getLogger(__name__)

PHASES = ("pre-grokking", "grokking", "anti-grokking")
NO_PHASE = "none"
PHASES_COLUMNS = [
    "step",
    "train_acc",
    "test_acc",
    "test_acc_smoothed",
    "phase",
    "fit_step",
    "peak_step",
    "collapse_step",
    "groks",
    "collapses",
    "grokking_start_step",
    "anti_grokking_start_step",
]
# Accuracies are ratios of counts; compare thresholds with a tolerance so 0.9 - 0.8 counts as 0.1.
_TOLERANCE = 1e-9
_DEFAULTS = section_defaults("phases")


@dataclass(frozen=True)
class PhaseThresholds:
    """The ``phases.*`` config keys (accuracies as fractions in [0, 1]); defaults from the schema."""

    train_fit: float = _DEFAULTS["train_fit"]
    collapse_drop: float = _DEFAULTS["collapse_drop"]
    smoothing_window: int = _DEFAULTS["smoothing_window"]
    grok_rise: float = _DEFAULTS["grok_rise"]
    grok_onset: float = _DEFAULTS["grok_onset"]
    collapse_onset: float = _DEFAULTS["collapse_onset"]

    def __post_init__(self):
        if not 0 < self.train_fit <= 1:
            raise ValueError(f"phases.train_fit must be in (0, 1], got {self.train_fit}")
        if not 0 < self.collapse_drop <= 1:
            raise ValueError(f"phases.collapse_drop must be in (0, 1], got {self.collapse_drop}")
        if int(self.smoothing_window) < 1 or int(self.smoothing_window) % 2 == 0:
            raise ValueError(
                f"phases.smoothing_window must be an odd number of logged rows >= 1 (a centred window), "
                f"got {self.smoothing_window}"
            )
        if not 0 <= self.grok_rise <= 1:
            raise ValueError(f"phases.grok_rise must be in [0, 1], got {self.grok_rise}")
        if not 0 <= self.grok_onset <= 1:
            raise ValueError(f"phases.grok_onset must be in [0, 1], got {self.grok_onset}")
        if not 0 <= self.collapse_onset <= 1:
            raise ValueError(f"phases.collapse_onset must be in [0, 1], got {self.collapse_onset}")


@dataclass(frozen=True)
class PhaseEdges:
    """The edges of one run; None where the run has no such event."""

    fit_step: int | None
    peak_step: int | None
    grokking_start_step: int | None
    collapse_step: int | None
    anti_grokking_start_step: int | None = None

    @property
    def groks(self) -> bool:
        return self.grokking_start_step is not None

    @property
    def collapses(self) -> bool:
        return self.collapse_step is not None


def smooth_accuracy(values: pd.Series, window: int) -> pd.Series:
    """Centred moving median over ``window`` rows, shrinking at the ends (window 1: unchanged)."""
    return values.rolling(int(window), center=True, min_periods=1).median()


def _first_index(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def find_edges(steps, train_acc, test_acc_smoothed, thresholds: PhaseThresholds) -> PhaseEdges:
    """The phase edges of one run from its (sorted) steps, train accuracy and smoothed test accuracy."""
    steps = np.asarray(steps)
    train_acc = np.asarray(train_acc, dtype=float)
    smoothed = np.asarray(test_acc_smoothed, dtype=float)
    fitted = train_acc >= thresholds.train_fit - _TOLERANCE

    fit = _first_index(fitted)
    if fit is None:
        return PhaseEdges(None, None, None, None)
    if not np.isfinite(smoothed[fit:]).any():
        raise ValueError(
            f"test accuracy is missing (NaN) at every logged step from fit_step {int(steps[fit])} on: "
            "the train_log has no test evaluation to find the phases in"
        )
    peak = fit + int(np.nanargmax(smoothed[fit:]))
    peak_value = smoothed[peak]

    grokking_start = None
    rise = peak_value - smoothed[fit]
    if rise >= thresholds.grok_rise - _TOLERANCE and peak > fit:
        still_low = smoothed[fit:peak] <= smoothed[fit] + thresholds.grok_onset * rise + _TOLERANCE
        grokking_start = fit + int(np.flatnonzero(still_low)[-1]) + 1

    after_peak = np.arange(len(steps)) > peak
    dropped = smoothed <= peak_value - thresholds.collapse_drop + _TOLERANCE
    collapse = _first_index(after_peak & dropped & fitted)
    decline_start = None
    if collapse is not None:
        drop = peak_value - np.nanmin(smoothed[peak + 1:])
        still_high = smoothed[peak:collapse] >= peak_value - thresholds.collapse_onset * drop - _TOLERANCE
        decline_start = peak + int(np.flatnonzero(still_high)[-1]) + 1

    def step_at(index):
        return None if index is None else int(steps[index])

    return PhaseEdges(step_at(fit), step_at(peak), step_at(grokking_start), step_at(collapse),
                      step_at(decline_start))


def label_steps(steps, edges: PhaseEdges) -> np.ndarray:
    """The phase label of every step (see the module docstring)."""
    steps = np.asarray(steps)
    labels = np.full(len(steps), NO_PHASE, dtype=object)
    if edges.groks:
        labels[(steps >= edges.fit_step) & (steps < edges.grokking_start_step)] = "pre-grokking"
        labels[(steps >= edges.grokking_start_step) & (steps <= edges.peak_step)] = "grokking"
    if edges.collapses:
        labels[steps >= edges.anti_grokking_start_step] = "anti-grokking"
    return labels


def segment_phases(train_log: pd.DataFrame, thresholds: PhaseThresholds) -> pd.DataFrame:
    """phases.csv of one run: one row per logged step, labels and the run's edges (PHASES_COLUMNS)."""
    missing = {"step", "train_acc", "test_acc"} - set(train_log.columns)
    if missing:
        raise ValueError(f"train_log lacks columns {sorted(missing)}; it must come from antigrok.training.train")
    if train_log.empty:
        raise ValueError("train_log has no rows: the run logged nothing, so it has no phases")
    frame = train_log[["step", "train_acc", "test_acc"]].sort_values("step").reset_index(drop=True)
    frame["test_acc_smoothed"] = smooth_accuracy(frame["test_acc"], thresholds.smoothing_window)
    edges = find_edges(frame["step"], frame["train_acc"], frame["test_acc_smoothed"], thresholds)
    frame["phase"] = label_steps(frame["step"], edges)
    for column in ("fit_step", "peak_step", "collapse_step"):
        frame[column] = pd.array([getattr(edges, column)] * len(frame), dtype="Int64")
    frame["groks"] = edges.groks
    frame["collapses"] = edges.collapses
    for column in ("grokking_start_step", "anti_grokking_start_step"):
        frame[column] = pd.array([getattr(edges, column)] * len(frame), dtype="Int64")
    return frame[PHASES_COLUMNS]


def edges_from_phases(phases: pd.DataFrame) -> PhaseEdges:
    """The edges stored in a phases.csv frame (read back with pandas: NaN where none)."""
    if phases.empty:
        raise ValueError("phases frame has no rows")
    first = phases.iloc[0]

    def edge(column):
        value = first.get(column)
        return None if value is None or pd.isna(value) else int(value)

    return PhaseEdges(edge("fit_step"), edge("peak_step"), edge("grokking_start_step"), edge("collapse_step"),
                      edge("anti_grokking_start_step"))


def smoothed_test_acc_at(phases: pd.DataFrame, step) -> float:
    """The smoothed test accuracy of phases.csv at ``step`` (e.g. peak_step); NaN when ``step`` is
    missing (None or NaN) or not a row (test_acc where the frame has no smoothed column)."""
    if step is None or pd.isna(step):
        return np.nan
    column = "test_acc_smoothed" if "test_acc_smoothed" in phases else "test_acc"
    at_step = phases.loc[phases["step"] == step, column]
    return float(at_step.iloc[0]) if len(at_step) else np.nan


def write_phases(train_log_path: str | Path, output_path: str | Path, thresholds: PhaseThresholds) -> pd.DataFrame:
    """Read a run's train_log.csv, segment it, write phases.csv; returns the frame."""
    frame = segment_phases(pd.read_csv(train_log_path), thresholds)
    first = frame.iloc[0]
    log.info(
        "%s: fit_step=%s grokking_start_step=%s peak_step=%s anti_grokking_start_step=%s collapse_step=%s "
        "groks=%s collapses=%s (%s)",
        train_log_path,
        first.fit_step,
        first.grokking_start_step,
        first.peak_step,
        first.anti_grokking_start_step,
        first.collapse_step,
        first.groks,
        first.collapses,
        thresholds,
    )
    write_csv_atomically(frame, output_path)  # a killed job leaves no phases.csv that looks complete
    return frame
