"""Phases on real curves: the committed CPU reference runs (docs/reference/cpu/) are segmented where a
person reading their accuracy figure would put the edges; and every committed reference run's phases.csv
(all of docs/reference/) is what the workflow's segmentation gives from its train log.

What "a person" sees is modelled by a heavier smoothing than the workflow's: a centred moving median
over a quarter of a decade (15 of the 60 logged rows per decade). The tolerances below are that
reader's precision, not the workflow's: the peak of these runs is a plateau flat to within the
late-training noise (about +/- 0.005 between neighbouring logged rows) over about 0.3 decades, so
nobody can place it better than +/- 0.25 decades; a decline is "visible" once the curve is 0.03
below its top, three times that noise.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from antigrok.study.phases import PhaseThresholds, edges_from_phases, segment_phases
from conftest import REPO

REFERENCE = REPO / "docs" / "reference" / "cpu"
READER_WINDOW = 15  # logged rows: a quarter of a decade at log.per_decade = 60
PEAK_TOLERANCE_DECADES = 0.25
VISIBLE_DROP = 0.03


def reference_runs() -> list[Path]:
    return sorted(path.parent for path in REFERENCE.glob("runs/*/wd*/seed*/train_log.csv"))


def every_reference_run() -> list[Path]:
    """The runs of every folder of docs/reference/ (cpu, timescale, modadd_cpu, ...)."""
    return sorted(path.parent for path in REFERENCE.parent.glob("*/runs/*/wd*/seed*/phases.csv"))


def reader_curve(train_log: pd.DataFrame) -> pd.Series:
    return train_log["test_acc"].rolling(READER_WINDOW, center=True, min_periods=1).median()


def test_the_reference_holds_both_weight_decays_and_two_seeds():
    runs = reference_runs()
    assert len(runs) >= 4, f"expected the 4 runs of configs/cpu.yaml under {REFERENCE}"
    assert {run.parent.name for run in runs} == {"wd0.0", "wd0.01"}


@pytest.mark.parametrize("run", every_reference_run(), ids=lambda run: "/".join(run.parts[-5:]).replace("reference/", ""))
def test_committed_phases_are_what_the_segmentation_gives(run):
    committed = pd.read_csv(run / "phases.csv")
    recomputed = segment_phases(pd.read_csv(run / "train_log.csv"), PhaseThresholds())
    assert committed["phase"].tolist() == recomputed["phase"].tolist()
    assert edges_from_phases(committed) == edges_from_phases(recomputed)


@pytest.mark.parametrize("run", reference_runs(), ids=lambda run: "/".join(run.parts[-3:]))
def test_edges_sit_where_a_reader_of_the_figure_puts_them(run):
    train_log = pd.read_csv(run / "train_log.csv").sort_values("step").reset_index(drop=True)
    edges = edges_from_phases(segment_phases(train_log, PhaseThresholds()))
    steps = train_log["step"].to_numpy()
    curve = reader_curve(train_log).to_numpy()

    assert edges.fit_step == steps[np.flatnonzero(train_log["train_acc"].to_numpy() >= 0.99)[0]]

    after_fit = steps >= edges.fit_step
    reader_peak = np.flatnonzero(after_fit)[0] + int(np.argmax(curve[after_fit]))
    assert abs(np.log10(edges.peak_step) - np.log10(steps[reader_peak])) <= PEAK_TOLERANCE_DECADES
    assert edges.groks, "every reference run climbs from its fit level by more than grok_rise"
    assert edges.fit_step <= edges.grokking_start_step < edges.peak_step

    if run.parent.name == "wd0.0":
        assert edges.collapses, "the weight-decay-0 reference runs collapse (issue 12)"
    if not edges.collapses:
        return
    # the band starts on the decline: not before the peak, and no later than where the decline shows
    visible = np.flatnonzero((steps > steps[reader_peak]) & (curve <= curve[reader_peak] - VISIBLE_DROP))
    assert edges.peak_step < edges.anti_grokking_start_step <= steps[visible[0]]
    assert edges.anti_grokking_start_step <= edges.collapse_step
    # and everything after the crossing is below the peak by a visible margin: the crossing is no blip
    late = steps >= edges.collapse_step
    assert (curve[late] <= curve[reader_peak] - VISIBLE_DROP).all()
