import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import dry_run_jobs, snakemake

from antigrok.summary import (
    DETECTOR_COLUMNS,
    TIDY_COLUMNS,
    alarm_outcome,
    average_alpha,
    departure_condition,
    detector_summary,
    detector_table,
    first_alarm_step,
    parse_run_dir,
    table1_alpha,
    table2_traps,
    write_detector_tables,
    write_paper_tables,
)

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
    average = average_alpha(hand_made_htsr(), {"exp": ["fc1", "fc2"]})
    at = average.set_index(["weight_decay", "seed", "step"])["alpha"]
    assert at[(0.0, 1, 100)] == pytest.approx(fc1_alpha(1, 100) + 0.25)
    assert math.isnan(at[(0.0, 2, 10000)])


def test_average_alpha_names_a_missing_layer():
    with pytest.raises(ValueError, match=r"average_layers\[exp\].*fc9"):
        average_alpha(hand_made_htsr(), {"exp": ["fc1", "fc9"]})


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


def test_first_alarm_step_respects_arming_and_persistence():
    condition = pd.Series([True, False, True, True, False, True], index=[0, 1, 10, 100, 1000, 10000])
    assert first_alarm_step(condition, armed_from=None) == 0
    assert first_alarm_step(condition, armed_from=5) == 10
    assert first_alarm_step(condition, armed_from=5, min_consecutive=2) == 100
    assert first_alarm_step(condition, armed_from=5, min_consecutive=3) is None


def test_departure_ignores_a_steady_trend_and_fires_on_a_jump():
    steps = np.arange(40)
    line = pd.Series(5.0 + 0.1 * steps, index=steps)
    assert not departure_condition(line, window=8, robust_z=3.0, scale_floor=1e-3).any()
    jumped = line.copy()
    jumped.iloc[25:] += 3.0
    fired = departure_condition(jumped, window=8, robust_z=3.0, scale_floor=1e-3)
    assert fired.idxmax() == 25 and fired.iloc[:25].sum() == 0
    flat = pd.Series(1.0, index=steps)
    assert not departure_condition(flat, window=8, robust_z=3.0, scale_floor=1e-3).any()


@pytest.mark.parametrize(
    "alarm_step, peak_step, collapse_step, false_alarm, lead_steps, lead_decades",
    [
        (300_000, 100_000, 1_000_000, False, 700_000, math.log10(1e6 / 3e5)),  # true, early
        (2_000_000, 100_000, 1_000_000, False, -1_000_000, -math.log10(2)),  # true but late
        (10_000, 100_000, 1_000_000, True, 990_000, 2.0),  # before the peak
        (300_000, 100_000, None, True, math.nan, math.nan),  # the run never collapses
        (None, 100_000, 1_000_000, False, math.nan, math.nan),  # silent (a miss, not a false alarm)
    ],
)
def test_alarm_outcome(alarm_step, peak_step, collapse_step, false_alarm, lead_steps, lead_decades):
    outcome = alarm_outcome(alarm_step, 1000, peak_step, collapse_step)
    assert outcome["fired"] is (alarm_step is not None)
    assert outcome["false_alarm"] is false_alarm
    assert outcome["lead_steps"] == pytest.approx(lead_steps, nan_ok=True)
    assert outcome["lead_decades"] == pytest.approx(lead_decades, nan_ok=True)


STEPS = [0, 10, 100, 1000, 10_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000]


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
    l2 = l2 if l2 is not None else [1.0 + 0.1 * i for i in range(len(STEPS))]
    progress = pd.DataFrame({**key, "step": STEPS, "l2_norm": l2})
    phases = pd.DataFrame(
        {
            **key,
            "step": STEPS,
            "phase": "none",
            "fit_step": fit,
            "peak_step": peak,
            "collapse_step": collapse,
            "grokking_start_step": math.nan,
        }
    )
    return htsr, trap_rows, progress, phases


SETTINGS = {"control_measures": ["l2_norm"], "control_window": 3, "control_robust_z": 3.0}


def detector_for(runs):
    frames = [pd.concat(parts, ignore_index=True) for parts in zip(*runs)]
    return detector_table(*frames, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)


def test_detector_rows_on_synthetic_runs():
    high = [6, 5, 4, 3, 3, 2.5]
    runs = [
        # collapses at 3e6 after a peak at 1e5; alpha < 2 from 3e5, a trap from 1e6
        synthetic_run(
            0, 0.0, high + [1.5, 1.2, 1.0, 0.9], [0] * 7 + [1, 2, 3], fit=10, peak=100_000, collapse=3_000_000
        ),
        # holds (never collapses): alpha dips below 2 at 1e6 anyway, never a trap
        synthetic_run(1, 0.0, high + [2.2, 1.9, 2.1, 2.1], [0] * 10, fit=10, peak=100_000, collapse=math.nan),
        # alpha < 2 at step 0, before the run fits: not armed until 1000
        synthetic_run(
            2,
            0.0,
            [1.5, 6, 5, 4, 3, 2.5, 2.4, 2.3, 1.8, 1.5],
            [0] * 10,
            fit=1000,
            peak=100_000,
            collapse=10_000_000,
            l2=[1, 1.1, 1.2, 1.3, 1.4, 1.5, 9.0, 9.1, 9.2, 9.3],
        ),
    ]
    table = detector_for(runs)
    assert table.columns.tolist() == DETECTOR_COLUMNS
    row = table.set_index(["seed", "alarm"])
    r = row.loc[(0, "alpha_below_critical")]
    assert (r.alarm_step, r.lead_steps, bool(r.false_alarm)) == (300_000, 2_700_000, False)
    assert r.lead_decades == pytest.approx(1.0)
    both = row.loc[(0, "alpha_and_trap")]
    assert (both.alarm_step, both.threshold) == (1_000_000, 2.0)
    assert row.loc[(1, "alpha_below_critical")].false_alarm  # fires, but the run never collapses
    assert not row.loc[(1, "correlation_trap")].fired and not row.loc[(1, "correlation_trap")].false_alarm
    assert row.loc[(2, "alpha_below_critical")].alarm_step == 3_000_000  # step 0 is before fit: not armed
    l2 = row.loc[(2, "l2_norm_departure")]
    assert (l2.alarm_step, bool(l2.false_alarm), l2.alarm_kind) == (300_000, False, "control")
    assert not row.loc[(0, "l2_norm_departure")].fired  # a steady trend never fires

    summary = detector_summary(table).set_index("alarm")
    alpha = summary.loc["alpha_below_critical"]
    assert (alpha.n_runs, alpha.n_fired, alpha.n_collapsed, alpha.n_true_alarms, alpha.n_false_alarms) == (
        3,
        3,
        2,
        2,
        1,
    )
    assert (alpha.n_missed, alpha.n_early) == (0, 2)
    assert alpha.median_lead_decades == pytest.approx(np.median([1.0, math.log10(1e7 / 3e6)]))
    trap = summary.loc["correlation_trap"]
    assert (trap.n_fired, trap.n_true_alarms, trap.n_missed) == (1, 1, 1)


def test_write_detector_tables_from_run_files(tmp_path):
    run = synthetic_run(
        0, 0.0, [6, 5, 4, 3, 3, 2.5, 1.5, 1.2, 1.0, 0.9], [0] * 7 + [1, 2, 3], fit=10, peak=100_000, collapse=3_000_000
    )
    names = ["htsr.csv", "traps.csv", "progress.csv", "phases.csv"]
    frames = {name: frame.drop(columns=["experiment", "weight_decay", "seed"]) for name, frame in zip(names, run)}
    run_dir = write_run(tmp_path, "exp", 0.0, 0, frames)
    outputs = {"detectors_csv": tmp_path / "d.csv", "summary_csv": tmp_path / "s.csv", "summary_md": tmp_path / "s.md"}
    write_detector_tables(*[[run_dir / name] for name in names], outputs, {"exp": ["fc1", "fc2"]}, 2.0, SETTINGS)
    written = pd.read_csv(outputs["detectors_csv"])
    assert written.loc[written.alarm == "alpha_below_critical", "alarm_step"].item() == 300_000
    assert "alpha_below_critical" in outputs["summary_md"].read_text()


def test_detector_names_a_missing_progress_measure():
    run = synthetic_run(0, 0.0, [3] * 10, [0] * 10, fit=10, peak=100, collapse=math.nan)
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
