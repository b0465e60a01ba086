import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import dry_run_jobs, snakemake

from antigrok.runs import parse_run_dir
from antigrok.study.detector import (
    DETECTOR_COLUMNS,
    DETECTOR_SUMMARY_COLUMNS,
    alarm_conditions,
    alarm_outcome,
    departure_condition,
    detector_summary,
    detector_table,
    first_alarm_step,
    firing_steps,
    spectral_conditions,
    write_detector_tables,
)
from antigrok.study.tables import TIDY_COLUMNS, average_alpha_rows, table1_alpha, table2_traps, write_paper_tables

CHECKPOINTS = [0, 10, 100, 1000, 10000]
LABELS = {  # per seed of (exp, wd 0.0): the phase of each logged step (5000 is logged, not a checkpoint)
    0: {0: "none", 10: "pre-grokking", 100: "grokking", 1000: "none", 5000: "anti-grokking", 10000: "anti-grokking"},
    1: {0: "none", 10: "pre-grokking", 100: "pre-grokking", 1000: "grokking", 5000: "grokking", 10000: "none"},
    2: {
        0: "pre-grokking",
        10: "grokking",
        100: "none",
        1000: "anti-grokking",
        5000: "anti-grokking",
        10000: "anti-grokking",
    },
}


def hand_made_phases():
    rows = [("exp", 0.0, seed, step, phase) for seed, labels in LABELS.items() for step, phase in labels.items()]
    rows += [("exp", 0.01, 0, step, "none") for step in CHECKPOINTS]  # a run that never groks
    return pd.DataFrame(rows, columns=["experiment", "weight_decay", "seed", "step", "phase"])


def fc1_alpha(seed, step):
    return 10.0 * seed + CHECKPOINTS.index(step)


def hand_made_htsr():
    rows = []
    for weight_decay, seeds in [(0.0, [0, 1, 2]), (0.01, [0])]:
        for seed in seeds:
            for step in CHECKPOINTS:
                alpha = fc1_alpha(seed, step)
                if (weight_decay, seed, step) == (0.0, 2, 10000):
                    alpha = math.nan  # a failed fit
                rows.append(("exp", weight_decay, seed, step, "fc1", alpha))
                rows.append(("exp", weight_decay, seed, step, "fc2", fc1_alpha(seed, step) + 0.5))
    return pd.DataFrame(rows, columns=["experiment", "weight_decay", "seed", "step", "layer", "alpha"])


def cell(tidy, weight_decay, phase, layer):
    selected = tidy[(tidy.weight_decay == weight_decay) & (tidy.phase == phase) & (tidy.layer == layer)]
    assert len(selected) == 1
    return selected.iloc[0]


def test_average_alpha_is_nan_when_a_listed_layer_failed():
    average = average_alpha_rows(hand_made_htsr(), {"exp": ["fc1", "fc2"]})
    at = average.set_index(["weight_decay", "seed", "step"])["alpha"]
    assert at[(0.0, 1, 100)] == pytest.approx(fc1_alpha(1, 100) + 0.25)
    assert math.isnan(at[(0.0, 2, 10000)])


def test_average_alpha_names_a_missing_layer():
    with pytest.raises(ValueError, match=r"average_layers\[exp\].*fc9"):
        average_alpha_rows(hand_made_htsr(), {"exp": ["fc1", "fc9"]})


def test_table1_mean_std_n_seeds_at_the_right_edge_of_each_phase():
    tidy = table1_alpha(hand_made_htsr(), hand_made_phases(), {"exp": ["fc1", "fc2"]}, ["exp"])
    assert tidy.columns.tolist() == TIDY_COLUMNS
    # pre-grokking right edges: seed 0 at 10, seed 1 at 100, seed 2 at 0
    values = [fc1_alpha(0, 10), fc1_alpha(1, 100), fc1_alpha(2, 0)]
    pre = cell(tidy, 0.0, "pre-grokking", "fc1")
    assert (pre["mean"], pre["std"], pre["n_seeds"]) == pytest.approx((np.mean(values), np.std(values, ddof=1), 3))
    assert pre["edge_step_median"] == 10
    # grokking: seed 1's last logged grokking step (5000) is no checkpoint, so its edge is 1000
    grok = cell(tidy, 0.0, "grokking", "fc2")
    assert grok["mean"] == pytest.approx(np.mean([fc1_alpha(0, 100), fc1_alpha(1, 1000), fc1_alpha(2, 10)]) + 0.5)
    # anti-grokking: seed 1 never collapses (absent); seed 2's fc1 fit failed (NaN, excluded)
    anti_fc1 = cell(tidy, 0.0, "anti-grokking", "fc1")
    assert (anti_fc1["mean"], anti_fc1["n_seeds"]) == (fc1_alpha(0, 10000), 1) and math.isnan(anti_fc1["std"])
    anti_fc2 = cell(tidy, 0.0, "anti-grokking", "fc2")
    assert anti_fc2["n_seeds"] == 2
    assert anti_fc2["mean"] == pytest.approx(np.mean([fc1_alpha(0, 10000), fc1_alpha(2, 10000)]) + 0.5)
    assert cell(tidy, 0.0, "anti-grokking", "average")["n_seeds"] == 1
    # the run that never groks is in no phase: every cell of wd 0.01 is there, with n_seeds 0
    never = tidy[tidy.weight_decay == 0.01]
    assert len(never) == 3 * 3 and (never.n_seeds == 0).all() and never["mean"].isna().all()


def test_table2_counts_traps_per_layer():
    traps = hand_made_htsr().rename(columns={"alpha": "num_traps"}).fillna(0)
    traps["num_traps"] = (traps["step"] >= 1000).astype(int) * (1 + traps["seed"])
    tidy = table2_traps(traps, hand_made_phases(), ["exp"])
    anti = cell(tidy, 0.0, "anti-grokking", "fc1")
    assert (anti["mean"], anti["n_seeds"]) == (pytest.approx(2.0), 2)  # seeds 0 (1 trap) and 2 (3 traps)
    assert anti["std"] == pytest.approx(np.std([1, 3], ddof=1))
    assert cell(tidy, 0.0, "pre-grokking", "fc2")["mean"] == 0


# ----------------------------------------------------------------------------- files end to end


def write_run(root, experiment, weight_decay, seed, frames):
    run_dir = root / "runs" / experiment / f"wd{weight_decay}" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    for name, frame in frames.items():
        frame.to_csv(run_dir / name, index=False)
    return run_dir


def test_parse_run_dir():
    assert parse_run_dir("results/runs/mnist_mlp/wd0.01/seed3/htsr.csv") == ("mnist_mlp", 0.01, 3)
    with pytest.raises(ValueError, match="runs/<experiment>"):
        parse_run_dir("results/htsr.csv")


def test_write_paper_tables_from_run_files(tmp_path):
    htsr, phases = hand_made_htsr(), hand_made_phases()
    paths = {"htsr": [], "traps": [], "phases": []}
    for (weight_decay, seed), run_htsr in htsr.groupby(["weight_decay", "seed"]):
        run_phases = phases[(phases.weight_decay == weight_decay) & (phases.seed == seed)]
        frames = {
            "htsr.csv": run_htsr.drop(columns=["experiment", "weight_decay", "seed"]).assign(
                rand_sigma_mp=1.0, mp_ks_stat=0.01, mp_ks_pvalue=0.9
            ),
            "traps.csv": run_htsr[["step", "layer"]].assign(num_traps=seed),
            "phases.csv": run_phases.drop(columns=["experiment", "weight_decay", "seed"]),
        }
        run_dir = write_run(tmp_path, "exp", weight_decay, seed, frames)
        for kind, kind_paths in paths.items():
            kind_paths.append(run_dir / f"{kind}.csv")
    outputs = {
        f"{t}_{ext}": tmp_path / "tables" / f"{t}.{ext}"
        for t in ("table1", "table2", "table4")
        for ext in ("csv", "md")
    }
    write_paper_tables(paths["htsr"], paths["traps"], paths["phases"], outputs, {"exp": ["fc1", "fc2"]}, ["exp"])
    table4 = pd.read_csv(outputs["table4_csv"])
    assert set(table4.metric) == {"rand_sigma_mp", "mp_ks_stat", "mp_ks_pvalue", "num_traps"}
    traps_pre = table4[(table4.metric == "num_traps") & (table4.phase == "pre-grokking") & (table4.layer == "fc1")]
    assert traps_pre[["mean", "n_seeds"]].iloc[0].tolist() == [1.0, 3]  # seeds 0, 1, 2 -> mean 1
    markdown = outputs["table1_md"].read_text()
    assert "## exp" in markdown and "| 0 | average | alpha |" in markdown
    assert re.search(r"\d ± [\d.]+ \(3\)", markdown) and "— (0)" in markdown


# ----------------------------------------------------------------------------- detector


def test_firing_steps_rearm_after_the_condition_clears():
    condition = pd.Series([True, False, True, True, False, True], index=[0, 1, 10, 100, 1000, 10000])
    assert firing_steps(condition, armed_from=None) == [0, 10, 10000]
    assert firing_steps(condition, armed_from=5) == [10, 10000]
    assert firing_steps(condition, armed_from=5, min_consecutive=2) == [100]
    assert firing_steps(condition, armed_from=5, min_consecutive=3) == []
    assert first_alarm_step(condition, armed_from=5) == 10
    assert first_alarm_step(condition, armed_from=5, min_consecutive=3) is None


def test_firing_steps_treat_a_missing_value_as_not_holding():
    condition = pd.Series([True, None, True], index=[10, 100, 1000], dtype="object")
    assert firing_steps(condition, armed_from=None, min_consecutive=1) == [10, 1000]
    assert firing_steps(condition, armed_from=None, min_consecutive=2) == []


# Log-spaced checkpoints as the workflow saves them (integer steps, 8 per decade).
LOG_STEPS = np.unique(np.rint(np.geomspace(100, 1e7, 41)).astype(int))
RATIO = LOG_STEPS[1] / LOG_STEPS[0]


def power_law(exponent, start=3.0):
    return start * (LOG_STEPS / LOG_STEPS[0]) ** exponent


def departures(values, window=8):
    return departure_condition(pd.Series(values, index=LOG_STEPS), window=window, robust_z=3.0, scale_floor=1e-3)


def test_a_power_law_growing_126x_per_checkpoint_does_not_fire():
    l2 = power_law(math.log(1.26) / math.log(RATIO))
    assert l2[1:] / l2[:-1] == pytest.approx(1.26, rel=0.01)
    assert not departures(l2).any()
    # compared with the median of its last 8 values, as the rule used to, the same curve departs by z = 2.9
    median = np.median(l2[:8])
    assert (l2[8] - median) / (1.4826 * np.median(np.abs(l2[:8] - median))) == pytest.approx(2.9, abs=0.1)


@pytest.mark.parametrize(
    "curve",
    [
        power_law(-0.3),  # a decaying power law
        1.0 + 0.2 * np.log(LOG_STEPS),  # linear in log(step)
        -1.0 + 0.1 * np.log(LOG_STEPS),  # the same through zero: slopes of the values themselves
        1.0 / (1.0 + np.exp(-(np.log10(LOG_STEPS) - 4.5))),  # a slow sigmoid in log(step)
    ],
    ids=["decaying_power_law", "log_linear", "log_linear_through_zero", "slow_sigmoid"],
)
def test_smooth_monotone_trends_do_not_fire(curve):
    assert not departures(curve).any()


def test_a_jump_fires_once_at_the_jump():
    l2 = power_law(0.1)
    l2[25:] *= 1.5
    fired = departures(l2)
    assert firing_steps(fired, armed_from=None) == [LOG_STEPS[25]]


def test_a_jump_through_zero_fires_at_the_jump():
    curve = -1.0 + 0.1 * np.log(LOG_STEPS)
    curve[25:] += 0.5
    assert firing_steps(departures(curve), armed_from=None) == [LOG_STEPS[25]]


def test_a_change_of_slope_fires_where_it_happens_then_clears():
    log_l2 = np.log(power_law(0.1))
    kink = 24
    log_l2[kink + 1 :] = log_l2[kink] + 0.3 * (np.log(LOG_STEPS[kink + 1 :]) - np.log(LOG_STEPS[kink]))
    fired = departures(np.exp(log_l2))
    assert firing_steps(fired, armed_from=None) == [LOG_STEPS[kink + 1]]
    assert not fired.iloc[-5:].any(), "once the window has learned the new slope the alarm clears"


def test_departure_needs_a_full_window_and_ignores_step_zero():
    values = pd.Series([1.0, 50.0, 1.0, 1.0], index=[0, 10, 100, 1000])
    assert not departure_condition(values, window=2, robust_z=3.0, scale_floor=1e-3).any()
    assert 0 not in departure_condition(values, window=2, robust_z=3.0, scale_floor=1e-3).index


@pytest.mark.parametrize(
    "alarm_step, collapse_step, outcome, false_alarm",
    [
        (10_000, 1_000_000, "before_peak", True),
        (100_000, 1_000_000, "after_peak_before_collapse", False),  # at the peak
        (300_000, 1_000_000, "after_peak_before_collapse", False),
        (1_000_000, 1_000_000, "late", False),  # at the crossing
        (2_000_000, 1_000_000, "late", False),
        (300_000, None, "false_alarm", True),
        (None, 1_000_000, "missed", False),
        (None, None, "quiet", False),
    ],
)
def test_alarm_outcome(alarm_step, collapse_step, outcome, false_alarm):
    firings = [] if alarm_step is None else [alarm_step]
    row = alarm_outcome(firings, 1000, 100_000, collapse_step)
    assert (row["outcome"], row["false_alarm"], row["fired"]) == (outcome, false_alarm, alarm_step is not None)
    assert row["collapses"] is (collapse_step is not None)
    if alarm_step is None:
        assert math.isnan(row["lead_steps_vs_peak"]) and math.isnan(row["lead_decades_vs_collapse"])
    else:
        assert row["lead_steps_vs_peak"] == 100_000 - alarm_step
        assert row["lead_decades_vs_peak"] == pytest.approx(5 - math.log10(alarm_step))
    if alarm_step is not None and collapse_step is not None:
        assert row["lead_steps_vs_collapse"] == collapse_step - alarm_step
        assert row["lead_decades_vs_collapse"] == pytest.approx(math.log10(collapse_step / alarm_step))


def test_a_false_alarm_before_the_peak_does_not_hide_a_later_firing():
    row = alarm_outcome([5_000, 300_000], 1000, 100_000, 1_000_000)
    assert (row["outcome"], row["alarm_step"], row["num_firings"]) == ("before_peak", 5_000, 2)
    assert (row["first_firing_after_peak"], row["firing_steps"]) == (300_000, "5000;300000")


# Synthetic runs on log-spaced checkpoints: 3 per decade from 10 to 1e6, and step 0.
STEPS = [0] + np.rint(np.geomspace(10, 1e6, 16)).astype(int).tolist()
FIT, PEAK, COLLAPSE = 100, 10_000, 215_443  # all checkpoint steps


def at(values_by_step, default):
    """A value per step of STEPS: ``default`` except where ``values_by_step`` (step -> value) says."""
    return [values_by_step.get(step, default) for step in STEPS]


def synthetic_test_accuracy(collapse):
    """Smoothed test accuracy: 0.5 at step 10, 0.95 at the peak, then 0.95 (holds) or down to 0.6."""
    points = [(1, 0.5), (math.log10(PEAK), 0.95)]
    points += [(math.log10(COLLAPSE), 0.80), (6, 0.60)] if collapse else [(6, 0.95)]
    x, y = zip(*points)
    return np.interp(np.log10(np.maximum(STEPS, 1)), x, y)


def synthetic_run(seed, weight_decay, alpha, traps, fit, peak, collapse, l2=None):
    """Per-run frames of the contract for one run: fc1 and fc2 share ``alpha``; traps in fc2."""
    key = {"experiment": "exp", "weight_decay": weight_decay, "seed": seed}
    htsr = pd.DataFrame(
        [{**key, "step": s, "layer": layer, "alpha": a} for s, a in zip(STEPS, alpha) for layer in ("fc1", "fc2")]
    )
    trap_rows = pd.DataFrame(
        [
            {**key, "step": s, "layer": layer, "num_traps": t if layer == "fc2" else 0}
            for s, t in zip(STEPS, traps)
            for layer in ("fc1", "fc2")
        ]
    )
    l2 = l2 if l2 is not None else 2.0 * (np.maximum(STEPS, 1) / 10.0) ** 0.1  # a power law: never departs
    progress = pd.DataFrame({**key, "step": STEPS, "l2_norm": l2})
    phases = pd.DataFrame(
        {
            **key,
            "step": STEPS,
            "test_acc_smoothed": synthetic_test_accuracy(not pd.isna(collapse)),
            "phase": "none",
            "fit_step": fit,
            "peak_step": peak,
            "collapse_step": collapse,
            "grokking_start_step": math.nan,
        }
    )
    return htsr, trap_rows, progress, phases


SETTINGS = {"control_measures": ["l2_norm"], "control_window": 4, "control_robust_z": 3.0}


def synthetic_runs():
    jumped_l2 = 2.0 * (np.maximum(STEPS, 1) / 10.0) ** 0.1
    jumped_l2[STEPS.index(4642) :] *= 2.0
    return [
        # collapses: alpha < 2 twice before the peak (464, 1000), again from 21544 on; traps from 46416
        synthetic_run(
            0,
            0.0,
            at({464: 1.9, 1000: 1.8, 21544: 1.9, 46416: 1.7, 100000: 1.6, 215443: 1.5, 464159: 1.4, 1000000: 1.3}, 3.0),
            at({46416: 1, 100000: 2, 215443: 3, 464159: 3, 1000000: 4}, 0),
            fit=FIT,
            peak=PEAK,
            collapse=COLLAPSE,
        ),
        # holds (never collapses): alpha stays above 2, a trap at the last checkpoint only
        synthetic_run(1, 0.01, at({}, 3.0), at({1000000: 1}, 0), fit=FIT, peak=PEAK, collapse=math.nan),
        # collapses; alpha < 2 only before it fits (not armed until 1000) and at the very end; l2 jumps at 4642
        synthetic_run(
            2,
            0.0,
            at({10: 1.5, 22: 1.5, 46: 1.5, 100: 1.5, 215: 1.5, 464: 1.5, 1000000: 1.9}, 3.0),
            at({}, 0),
            fit=1000,
            peak=PEAK,
            collapse=COLLAPSE,
            l2=jumped_l2,
        ),
    ]


def detector_for(runs):
    frames = [pd.concat(parts, ignore_index=True) for parts in zip(*runs)]
    return detector_table(*frames, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)


def test_detector_rows_on_synthetic_runs():
    table = detector_for(synthetic_runs())
    assert table.columns.tolist() == DETECTOR_COLUMNS
    row = table.set_index(["seed", "alarm"])

    alpha = row.loc[(0, "alpha_below_critical")]
    assert (alpha.alarm_step, alpha.num_firings, alpha.firing_steps) == (464, 2, "464;21544")
    assert (alpha.outcome, bool(alpha.false_alarm), alpha.first_firing_after_peak) == ("before_peak", True, 21544)
    assert (alpha.armed_from, alpha.fit_step, alpha.peak_step, alpha.collapse_step) == (FIT, FIT, PEAK, COLLAPSE)
    assert (alpha.lead_steps_vs_peak, alpha.lead_steps_vs_collapse) == (PEAK - 464, COLLAPSE - 464)
    assert alpha.lead_decades_vs_peak == pytest.approx(math.log10(PEAK / 464))
    accuracy = dict(zip(STEPS, synthetic_test_accuracy(True)))
    assert alpha.test_acc_at_alarm == pytest.approx(accuracy[464])
    assert (alpha.peak_test_acc, alpha.final_test_acc) == (pytest.approx(0.95), pytest.approx(0.60))
    assert alpha.cost_of_stopping == pytest.approx(0.95 - accuracy[464])

    trap = row.loc[(0, "correlation_trap")]
    assert (trap.alarm_step, trap.outcome, trap.num_firings) == (46416, "after_peak_before_collapse", 1)
    assert trap.lead_decades_vs_collapse == pytest.approx(math.log10(COLLAPSE / 46416))
    assert trap.lead_steps_vs_peak == PEAK - 46416 < 0  # after the peak: negative lead
    assert trap.cost_of_stopping == pytest.approx(0.95 - accuracy[46416])
    both = row.loc[(0, "alpha_and_trap")]
    assert (both.alarm_step, both.threshold, both.outcome) == (46416, 2.0, "after_peak_before_collapse")

    assert row.loc[(1, "alpha_below_critical")].outcome == "quiet"
    holds = row.loc[(1, "correlation_trap")]
    assert (holds.outcome, bool(holds.false_alarm), bool(holds.collapses)) == ("false_alarm", True, False)
    assert pd.isna(holds.lead_steps_vs_collapse) and holds.cost_of_stopping == pytest.approx(0.0)

    late = row.loc[(2, "alpha_below_critical")]  # below 2 from step 10 on, but armed only at fit (1000)
    assert (late.armed_from, late.alarm_step, late.outcome) == (1000, 1_000_000, "late")
    assert late.lead_steps_vs_collapse < 0
    assert row.loc[(2, "correlation_trap")].outcome == "missed"
    l2 = row.loc[(2, "l2_norm_departure")]
    assert (l2.alarm_step, l2.outcome, l2.alarm_kind, l2.num_firings) == (4642, "before_peak", "control", 1)
    for seed in (0, 1):
        assert not row.loc[(seed, "l2_norm_departure")].fired  # a power law never fires


def test_detector_summary_counts_outcomes_and_both_kinds_of_false_alarm():
    summary = detector_summary(detector_for(synthetic_runs())).set_index(["weight_decay", "alarm"])
    assert summary.columns.tolist() == DETECTOR_SUMMARY_COLUMNS[:1] + DETECTOR_SUMMARY_COLUMNS[3:]
    alpha = summary.loc[(0.0, "alpha_below_critical")]
    assert (alpha.n_runs, alpha.n_collapsed, alpha.n_fired) == (2, 2, 2)
    assert (alpha.n_before_peak, alpha.n_late, alpha.n_false_alarms, alpha.n_fired_after_peak) == (1, 1, 1, 2)
    assert alpha.median_lead_steps_vs_collapse == np.median([COLLAPSE - 464, COLLAPSE - 1_000_000])
    assert alpha.median_lead_decades_vs_peak == pytest.approx(np.median([math.log10(PEAK / 464), -2.0]))
    accuracy = dict(zip(STEPS, synthetic_test_accuracy(True)))
    assert alpha.median_cost_of_stopping == pytest.approx(np.median([0.95 - accuracy[464], 0.95 - 0.60]))
    trap = summary.loc[(0.0, "correlation_trap")]
    assert (trap.n_after_peak_before_collapse, trap.n_missed, trap.n_false_alarms) == (1, 1, 0)
    held = summary.loc[(0.01, "correlation_trap")]
    assert (held.n_runs, held.n_collapsed, held.n_false_alarm_no_collapse, held.n_false_alarms) == (1, 0, 1, 1)
    assert math.isnan(held.median_lead_steps_vs_collapse)
    assert summary.loc[(0.01, "alpha_below_critical")].n_quiet == 1


def test_alarms_on_a_growing_history_match_the_full_run():
    """What a monitor sees step by step is what the workflow sees at the end, for the steps both have."""
    htsr, traps, progress, phases = synthetic_runs()[2]
    full = alarm_conditions(htsr, traps, progress, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
    for last in STEPS[1:]:
        seen = [frame[frame.step <= last] for frame in (htsr, traps, progress)]
        partial = alarm_conditions(*seen, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
        for alarm, (_, _, condition) in partial.items():
            expected = firing_steps(full[alarm][2], 1000, 2)
            assert firing_steps(condition, 1000, 2) == [step for step in expected if step <= last], (alarm, last)


def test_spectral_conditions_work_without_run_columns():
    htsr, traps, *_ = synthetic_runs()[0]
    conditions = spectral_conditions(htsr[["step", "layer", "alpha"]], traps[["step", "layer", "num_traps"]],
                                     ["fc1", "fc2"], alpha_critical=2.0, trap_min=2)
    assert set(conditions) == {"alpha_below_critical", "correlation_trap", "alpha_and_trap"}
    assert firing_steps(conditions["correlation_trap"][2], None) == [100000]
    with pytest.raises(ValueError, match="fc9"):
        spectral_conditions(htsr, traps, ["fc1", "fc9"], alpha_critical=2.0, trap_min=1)


def test_write_detector_tables_from_run_files(tmp_path):
    run = synthetic_runs()[0]
    names = ["htsr.csv", "traps.csv", "progress.csv", "phases.csv"]
    frames = {name: frame.drop(columns=["experiment", "weight_decay", "seed"]) for name, frame in zip(names, run)}
    run_dir = write_run(tmp_path, "exp", 0.0, 0, frames)
    outputs = {"detectors_csv": tmp_path / "d.csv", "summary_csv": tmp_path / "s.csv", "summary_md": tmp_path / "s.md"}
    write_detector_tables(*[[run_dir / name] for name in names], outputs, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
    written = pd.read_csv(outputs["detectors_csv"])
    alpha = written[written.alarm == "alpha_below_critical"].iloc[0]
    assert (alpha.alarm_step, alpha.firing_steps, alpha.outcome) == (464, "464;21544", "before_peak")
    assert "alpha_below_critical" in outputs["summary_md"].read_text()


def test_detector_falls_back_to_raw_test_accuracy():
    htsr, traps, progress, phases = synthetic_runs()[0]
    phases = phases.rename(columns={"test_acc_smoothed": "test_acc"})
    table = detector_table(htsr, traps, progress, phases, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
    assert table.peak_test_acc.iloc[0] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="test_acc"):
        detector_table(htsr, traps, progress, phases.drop(columns="test_acc"), {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)


def test_detector_never_arms_a_run_that_never_fits():
    htsr, traps, progress, phases = synthetic_run(0, 0.0, at({}, 1.0), at({}, 5), fit=math.nan, peak=math.nan,
                                                  collapse=math.nan)
    table = detector_table(htsr, traps, progress, phases, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
    assert not table.fired.any() and table.armed_from.isna().all() and (table.outcome == "quiet").all()


def test_detector_names_a_missing_progress_measure():
    run = synthetic_run(0, 0.0, at({}, 3.0), at({}, 0), fit=10, peak=100, collapse=math.nan)
    with pytest.raises(ValueError, match="circuit_complexity"):
        detector_table(*run, {"exp": ["fc1", "fc2"]}, 2.0, {"control_measures": ["circuit_complexity"]})


# ----------------------------------------------------------------------------- workflow


@pytest.mark.slow
def test_changing_a_phase_threshold_reruns_only_phases_and_what_follows(smoke_workdir):
    result = snakemake(smoke_workdir, "-n", overrides={"phases": {"collapse_drop": 0.2}})
    jobs = dry_run_jobs(result.stdout)
    num_runs = len(list((smoke_workdir / "results" / "runs").glob("*/*/seed*")))
    assert jobs.get("phases") == num_runs and jobs.get("tables") == 1 and jobs.get("detectors") == 1
    upstream = {"prepare_data", "train", "train_batched", "spectra", "traps", "progress"}
    assert not upstream & set(jobs), f"a phases threshold reran upstream rules: {jobs}"
    for name in ("table1_alpha", "table2_traps", "table4_mp_fit", "detector_summary"):
        assert (smoke_workdir / "results" / "tables" / f"{name}.md").stat().st_size > 0
    detectors = pd.read_csv(smoke_workdir / "results" / "tables" / "detectors.csv")
    assert detectors.columns.tolist() == DETECTOR_COLUMNS and len(detectors) == num_runs * 7


def test_markdown_tables_say_which_lr_and_steps_made_them():
    from antigrok.study.tables import tidy_to_markdown

    tidy = pd.DataFrame([{"experiment": "mnist_lr5e-3", "weight_decay": 0.0, "phase": phase, "layer": "fc1",
                          "metric": "alpha", "mean": 3.0, "std": 0.1, "n_seeds": 2, "edge_step_median": 10.0}
                         for phase in ("pre-grokking", "grokking", "anti-grokking")])
    text = tidy_to_markdown(tidy, "Table 1", "caption", {"mnist_lr5e-3": "mnist_lr5e-3: mlp, adamw lr 0.005, 200000 steps"})
    assert "## mnist_lr5e-3\n\nmnist_lr5e-3: mlp, adamw lr 0.005, 200000 steps\n" in text
