"""Across runs: the paper's tables (seed mean +/- std at the right edge of each phase) and the
early-warning detector table (how early, and how often wrongly, a data-free alarm fires).

Inputs are the per-run files of the contract (htsr.csv, traps.csv, progress.csv, phases.csv);
the run (experiment, weight decay, seed) of a file is read from its path
``.../runs/{experiment}/wd{weight_decay}/seed{seed}/{file}``.

Right edge of a phase in a run: the last checkpoint step (a step present in the metric file)
whose phases.csv label is that phase. A run without the phase is absent from that cell of the
table; ``n_seeds`` counts the runs with a finite value.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from antigrok.phases import PHASES, edges_from_phases

log = logging.getLogger(__name__)

RUN_KEYS = ["experiment", "weight_decay", "seed"]
CELL_KEYS = ["experiment", "weight_decay", "phase", "layer", "metric"]
TIDY_COLUMNS = CELL_KEYS + ["mean", "std", "n_seeds", "edge_step_median"]
AVERAGE_LAYER = "average"
PHASE_HEADERS = {
    "pre-grokking": "Pre-grokking",
    "grokking": "Grokking (max test acc.)",
    "anti-grokking": "Anti-grokking (collapse)",
}
_RUN_PATH = re.compile(r"runs/(?P<experiment>[^/]+)/wd(?P<weight_decay>[^/]+)/seed(?P<seed>\d+)(/|$)")


# ----------------------------------------------------------------------------- loading


def parse_run_dir(path: str | Path) -> tuple[str, float, int]:
    """(experiment, weight decay, seed) of a run file or directory, from its path."""
    match = _RUN_PATH.search(Path(path).as_posix())
    if match is None:
        raise ValueError(f"{path} is not under runs/<experiment>/wd<weight_decay>/seed<seed>/")
    return match["experiment"], float(match["weight_decay"]), int(match["seed"])


def read_run_files(paths) -> pd.DataFrame:
    """Concatenate per-run CSV files, each row tagged with its run's experiment, weight_decay, seed."""
    frames = []
    for path in paths:
        experiment, weight_decay, seed = parse_run_dir(path)
        frame = pd.read_csv(path)
        frame.insert(0, "seed", seed)
        frame.insert(0, "weight_decay", weight_decay)
        frame.insert(0, "experiment", experiment)
        frames.append(frame)
    if not frames:
        raise ValueError("no run files given: the config has no runs")
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- tables


def average_alpha(htsr: pd.DataFrame, average_layers: dict[str, list[str]]) -> pd.DataFrame:
    """Rows layer="average": per (run, step) the mean alpha of ``htsr.average_layers[experiment]``.

    NaN (a failed fit, or a listed layer missing at that step) whenever any listed layer has no
    finite alpha, so an average is always over the same layers.
    """
    rows = []
    for experiment, frame in htsr.groupby("experiment", sort=False):
        if experiment not in average_layers:
            raise ValueError(f"htsr.average_layers has no entry for experiment {experiment!r}: add its layer list")
        layers = list(average_layers[experiment])
        unknown = set(layers) - set(frame["layer"])
        if unknown:
            raise ValueError(
                f"htsr.average_layers[{experiment}] names layers {sorted(unknown)} that htsr.csv does not have "
                f"(it has {sorted(frame['layer'].unique())})"
            )
        selected = frame[frame["layer"].isin(layers)].set_index(RUN_KEYS + ["step", "layer"])["alpha"]
        if not selected.index.is_unique:
            raise ValueError(f"htsr.csv of {experiment} has more than one row for some (run, step, layer)")
        wide = selected.unstack("layer").reindex(columns=layers)
        mean = wide.mean(axis=1, skipna=False)
        rows.append(mean.rename("alpha").reset_index().assign(layer=AVERAGE_LAYER))
    return pd.concat(rows, ignore_index=True)


def right_edge_values(metrics: pd.DataFrame, phases: pd.DataFrame, value_columns: list[str]) -> pd.DataFrame:
    """Per (run, phase, layer): the values at the run's last checkpoint step inside that phase.

    ``metrics`` has RUN_KEYS, step, layer and ``value_columns``; ``phases`` has RUN_KEYS, step, phase.
    Columns of the result: RUN_KEYS, phase, layer, edge_step, ``value_columns``.
    """
    labelled = metrics.merge(phases[RUN_KEYS + ["step", "phase"]], on=RUN_KEYS + ["step"], how="left")
    unlabelled = labelled["phase"].isna()
    if unlabelled.any():
        log.warning(
            "%d metric rows have steps missing from phases.csv (not logged in train_log.csv); ignored",
            int(unlabelled.sum()),
        )
    labelled = labelled[labelled["phase"].isin(PHASES)]
    run_phase = RUN_KEYS + ["phase"]
    edge_step = labelled.groupby(run_phase)["step"].transform("max")
    at_edge = labelled[labelled["step"] == edge_step].rename(columns={"step": "edge_step"})
    return at_edge[run_phase + ["layer", "edge_step"] + value_columns].reset_index(drop=True)


def aggregate_over_seeds(edge_values: pd.DataFrame, value_columns: list[str], cells: pd.DataFrame) -> pd.DataFrame:
    """Tidy table: per cell (experiment, weight_decay, phase, layer, metric) mean, std, n_seeds.

    NaN values are excluded (n_seeds counts finite values); std is the sample std (ddof=1, NaN
    for a single seed). ``cells`` lists every (experiment, weight_decay, phase, layer) to report,
    so a cell no run reaches appears with n_seeds = 0.
    """
    long = edge_values.melt(
        id_vars=RUN_KEYS + ["phase", "layer", "edge_step"], value_vars=value_columns, var_name="metric"
    )
    long = long[np.isfinite(long["value"].astype(float))]
    grouped = long.groupby(CELL_KEYS, sort=False)
    stats = grouped["value"].agg(mean="mean", std=lambda v: v.std(ddof=1), n_seeds="count")
    stats["edge_step_median"] = grouped["edge_step"].median()
    all_cells = cells.merge(pd.DataFrame({"metric": value_columns}), how="cross")
    tidy = all_cells.merge(stats.reset_index(), on=CELL_KEYS, how="left")
    tidy["n_seeds"] = tidy["n_seeds"].fillna(0).astype(int)
    return tidy[TIDY_COLUMNS]


def table_cells(runs: pd.DataFrame, layers_by_experiment: dict[str, list[str]], experiments: list[str]) -> pd.DataFrame:
    """Every (experiment, weight_decay, phase, layer) to report, in the order of the tables."""
    rows = []
    for experiment in experiments:
        weight_decays = sorted(runs.loc[runs["experiment"] == experiment, "weight_decay"].unique())
        for weight_decay in weight_decays:
            for phase in PHASES:
                for layer in layers_by_experiment.get(experiment, []):
                    rows.append((experiment, weight_decay, phase, layer))
    return pd.DataFrame(rows, columns=["experiment", "weight_decay", "phase", "layer"])


def _layers(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Layer names per experiment in the order the data lists them."""
    return {experiment: list(dict.fromkeys(group["layer"])) for experiment, group in frame.groupby("experiment")}


def _experiment_order(experiments: list[str], *frames: pd.DataFrame) -> list[str]:
    present = set().union(*(set(frame["experiment"]) for frame in frames))
    missing = present - set(experiments)
    if missing:
        raise ValueError(f"runs of experiments {sorted(missing)} are not in the config's experiments {experiments}")
    return [name for name in experiments if name in present]


def table1_alpha(htsr, phases, average_layers, experiments) -> pd.DataFrame:
    """Table 1: alpha of every layer and the average alpha, per phase (tidy)."""
    with_average = pd.concat([htsr[RUN_KEYS + ["step", "layer", "alpha"]], average_alpha(htsr, average_layers)])
    layers = {name: names + [AVERAGE_LAYER] for name, names in _layers(htsr).items()}
    cells = table_cells(phases, layers, _experiment_order(experiments, htsr))
    return aggregate_over_seeds(right_edge_values(with_average, phases, ["alpha"]), ["alpha"], cells)


def table2_traps(traps, phases, experiments) -> pd.DataFrame:
    """Table 2: Correlation Traps per layer per phase, every weight decay (tidy)."""
    cells = table_cells(phases, _layers(traps), _experiment_order(experiments, traps))
    return aggregate_over_seeds(right_edge_values(traps, phases, ["num_traps"]), ["num_traps"], cells)


TABLE4_METRICS = ["rand_sigma_mp", "mp_ks_stat", "mp_ks_pvalue", "num_traps"]


def table4_mp_fit(htsr, traps, phases, experiments) -> pd.DataFrame:
    """Table 4: MP fit of W_rand (sigma, KS statistic, p-value) and traps, per layer per phase (tidy)."""
    keys = RUN_KEYS + ["step", "layer"]
    merged = htsr[keys + TABLE4_METRICS[:3]].merge(traps[keys + ["num_traps"]], on=keys, how="outer")
    cells = table_cells(phases, _layers(merged), _experiment_order(experiments, merged))
    return aggregate_over_seeds(right_edge_values(merged, phases, TABLE4_METRICS), TABLE4_METRICS, cells)


# ----------------------------------------------------------------------------- markdown


def format_number(value) -> str:
    """Three significant digits; scientific notation only where needed (p-values)."""
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"


def format_cell(mean, std, n_seeds) -> str:
    """ "mean ± std (n)"; "—" for what is missing."""
    if n_seeds == 0:
        return "— (0)"
    return f"{format_number(mean)} ± {format_number(std)} ({int(n_seeds)})"


def tidy_to_markdown(tidy: pd.DataFrame, title: str, caption: str) -> str:
    """Readable Markdown: one table per experiment, rows (weight decay, layer, metric), columns phases."""
    lines = [f"# {title}", "", caption, ""]
    headers = ["weight decay", "layer", "metric"] + [PHASE_HEADERS[phase] for phase in PHASES]
    for experiment, frame in tidy.groupby("experiment", sort=False):
        lines += [f"## {experiment}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for (weight_decay, layer, metric), row_cells in frame.groupby(["weight_decay", "layer", "metric"], sort=False):
            by_phase = row_cells.set_index("phase")
            cells = [format_cell(*by_phase.loc[phase, ["mean", "std", "n_seeds"]]) for phase in PHASES]
            lines.append("| " + " | ".join([f"{weight_decay:g}", str(layer), str(metric)] + cells) + " |")
        lines.append("")
    return "\n".join(lines)


def frame_to_markdown(frame: pd.DataFrame, title: str, caption: str) -> str:
    """A plain Markdown table of ``frame`` (floats to three significant digits)."""
    lines = [f"# {title}", "", caption, "", "| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    for row in frame.itertuples(index=False):
        cells = [format_number(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_CAPTION = (
    "Mean ± sample std over seeds (n = seeds with a finite value) at the right edge of each phase: "
    "the last checkpoint step of the run inside the phase (phases.csv). Pre-grokking ends where "
    "grokking starts, grokking at the peak of the smoothed test accuracy, anti-grokking at the end of "
    "training. Runs that never reach a phase are absent from its cells."
)


def write_tidy_table(tidy: pd.DataFrame, csv_path, md_path, title: str) -> None:
    for path in (csv_path, md_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tidy.to_csv(csv_path, index=False)
    Path(md_path).write_text(tidy_to_markdown(tidy, title, TABLE_CAPTION))


def write_paper_tables(htsr_paths, traps_paths, phases_paths, outputs: dict, average_layers, experiments) -> None:
    """results/tables/table1_alpha, table2_traps, table4_mp_fit (.csv and .md).

    ``outputs`` maps table1_csv, table1_md, table2_csv, table2_md, table4_csv, table4_md to paths.
    """
    htsr = read_run_files(htsr_paths)
    traps = read_run_files(traps_paths)
    phases = read_run_files(phases_paths)
    experiments = list(experiments)
    tables = {
        "table1": (table1_alpha(htsr, phases, average_layers, experiments), "Table 1: HTSR alpha per phase"),
        "table2": (table2_traps(traps, phases, experiments), "Table 2: Correlation Traps per layer per phase"),
        "table4": (
            table4_mp_fit(htsr, traps, phases, experiments),
            "Table 4: MP fit of the randomized weights and Correlation Traps per phase",
        ),
    }
    for name, (tidy, title) in tables.items():
        write_tidy_table(tidy, outputs[f"{name}_csv"], outputs[f"{name}_md"], title)
        log.info("%s: %d cells, %d with seeds", name, len(tidy), int((tidy["n_seeds"] > 0).sum()))


# ----------------------------------------------------------------------------- detector

DETECTOR_COLUMNS = [
    "experiment",
    "weight_decay",
    "seed",
    "alarm",
    "alarm_kind",
    "fired",
    "alarm_step",
    "fit_step",
    "peak_step",
    "collapse_step",
    "lead_steps",
    "lead_decades",
    "false_alarm",
    "threshold",
]
DETECTOR_SUMMARY_COLUMNS = [
    "experiment",
    "weight_decay",
    "alarm",
    "n_runs",
    "n_fired",
    "n_collapsed",
    "n_true_alarms",
    "n_false_alarms",
    "n_missed",
    "n_early",
    "median_lead_decades",
    "median_lead_steps",
]
DEFAULT_DETECTOR = {
    "arm_at_fit": True,
    "min_consecutive": 1,
    "trap_min": 1,
    "control_measures": ["l2_norm", "activation_sparsity", "abs_weight_entropy", "circuit_complexity"],
    "control_window": 8,
    "control_robust_z": 3.0,
    "control_scale_floor": 1.0e-3,
}
# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_SD = 1.4826


def first_alarm_step(condition: pd.Series, armed_from: int | None, min_consecutive: int = 1) -> int | None:
    """The first step at which ``condition`` (bool, indexed by sorted step) has held for
    ``min_consecutive`` checkpoints in a row, counting only steps >= ``armed_from`` (None: all)."""
    condition = condition.sort_index().fillna(False).astype(bool)
    if armed_from is not None:
        condition = condition[condition.index >= armed_from]
    run_length = 0
    for step, holds in condition.items():
        run_length = run_length + 1 if holds else 0
        if run_length >= min_consecutive:
            return int(step)
    return None


def departure_condition(values: pd.Series, window: int, robust_z: float, scale_floor: float) -> pd.Series:
    """Per checkpoint: does the value depart from the median of the previous ``window`` checkpoints
    by more than ``robust_z`` robust SDs (1.4826 x their MAD, at least ``scale_floor`` x |median|)?

    False while fewer than ``window`` earlier finite values exist. A steady trend stays below
    z = 3 (a straight line gives |z| of about 1.35 for any window), so it fires on a change of the
    trajectory: a jump, a kink, an acceleration.
    """
    values = values.sort_index().dropna().astype(float)
    result = pd.Series(False, index=values.index)
    array = values.to_numpy()
    for position in range(window, len(array)):
        reference = array[position - window : position]
        median = np.median(reference)
        scale = max(MAD_TO_SD * np.median(np.abs(reference - median)), scale_floor * abs(median))
        departure = abs(array[position] - median)
        result.iloc[position] = departure > robust_z * scale if scale > 0 else departure > 0
    return result


def alarm_conditions(htsr, traps, progress, average_layers, alpha_critical, settings) -> dict:
    """Per alarm name: (kind, threshold, boolean Series indexed by checkpoint step) for one run."""
    experiment = htsr["experiment"].iloc[0]
    alpha = average_alpha(htsr, average_layers).set_index("step")["alpha"].sort_index()
    low_alpha = alpha < alpha_critical
    trapped = traps.groupby("step")["num_traps"].max() >= settings["trap_min"]
    both = pd.concat([low_alpha, trapped], axis=1, join="inner").all(axis=1)
    conditions = {
        "alpha_below_critical": ("htsr", alpha_critical, low_alpha),
        "correlation_trap": ("htsr", float(settings["trap_min"]), trapped),
        "alpha_and_trap": ("htsr", alpha_critical, both),
    }
    by_step = progress.set_index("step").sort_index()
    for measure in settings["control_measures"]:
        if measure not in by_step.columns:
            raise ValueError(
                f"detector.control_measures names {measure!r}, which progress.csv of {experiment} lacks "
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


def lead_decades(alarm_step, collapse_step) -> float:
    """log10(collapse_step) - log10(alarm_step); NaN when either is missing or step 0."""
    if alarm_step is None or collapse_step is None or alarm_step <= 0 or collapse_step <= 0:
        return math.nan
    return math.log10(collapse_step) - math.log10(alarm_step)


def alarm_outcome(alarm_step, fit_step, peak_step, collapse_step) -> dict:
    """Columns fired ... false_alarm of one detector row.

    A false alarm fires in a run that never collapses, or before the run's test accuracy peak.
    """
    fired = alarm_step is not None
    collapses = collapse_step is not None
    false_alarm = fired and (not collapses or peak_step is None or alarm_step < peak_step)
    lead = collapse_step - alarm_step if fired and collapses else math.nan
    return {
        "fired": fired,
        "alarm_step": alarm_step,
        "fit_step": fit_step,
        "peak_step": peak_step,
        "collapse_step": collapse_step,
        "lead_steps": lead,
        "lead_decades": lead_decades(alarm_step, collapse_step) if fired else math.nan,
        "false_alarm": bool(false_alarm),
    }


def evaluate_run_alarms(htsr, traps, progress, phases, average_layers, alpha_critical, settings) -> pd.DataFrame:
    """Detector rows of one run (all frames of that run only)."""
    settings = {**DEFAULT_DETECTOR, **settings}
    edges = edges_from_phases(phases)
    armed_from = edges.fit_step if settings["arm_at_fit"] else None
    rows = []
    for alarm, (kind, threshold, condition) in alarm_conditions(
        htsr, traps, progress, average_layers, alpha_critical, settings
    ).items():
        if settings["arm_at_fit"] and edges.fit_step is None:
            alarm_step = None  # never armed: the run never fits its training set
        else:
            alarm_step = first_alarm_step(condition, armed_from, int(settings["min_consecutive"]))
        outcome = alarm_outcome(alarm_step, edges.fit_step, edges.peak_step, edges.collapse_step)
        rows.append({"alarm": alarm, "alarm_kind": kind, "threshold": threshold, **outcome})
    frame = pd.DataFrame(rows)
    for key in RUN_KEYS:
        frame[key] = htsr[key].iloc[0]
    return frame


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
    for column in ("alarm_step", "fit_step", "peak_step", "collapse_step", "lead_steps"):
        table[column] = pd.array(table[column].astype(float), dtype="Int64")
    return table[DETECTOR_COLUMNS]


def detector_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, weight_decay, alarm): counts and median lead of the true alarms.

    true alarm: fired at or after the peak in a run that collapses (late ones included);
    n_missed: collapsed runs without a true alarm; n_early: true alarms strictly before the collapse.
    """
    rows = []
    for (experiment, weight_decay, alarm), runs in table.groupby(["experiment", "weight_decay", "alarm"], sort=False):
        collapsed = runs["collapse_step"].notna()
        true_alarm = runs["fired"] & ~runs["false_alarm"]
        leads = runs.loc[true_alarm, ["lead_decades", "lead_steps"]].astype(float)
        rows.append(
            {
                "experiment": experiment,
                "weight_decay": weight_decay,
                "alarm": alarm,
                "n_runs": len(runs),
                "n_fired": int(runs["fired"].sum()),
                "n_collapsed": int(collapsed.sum()),
                "n_true_alarms": int(true_alarm.sum()),
                "n_false_alarms": int(runs["false_alarm"].sum()),
                "n_missed": int((collapsed & ~true_alarm).sum()),
                "n_early": int((true_alarm & (runs["lead_steps"].astype(float) > 0)).sum()),
                "median_lead_decades": leads["lead_decades"].median(),
                "median_lead_steps": leads["lead_steps"].median(),
            }
        )
    return pd.DataFrame(rows, columns=DETECTOR_SUMMARY_COLUMNS)


DETECTOR_CAPTION = (
    "Per alarm and weight decay over seeds. An alarm fires at the first checkpoint at which its "
    "condition holds (from the step the train set is fitted when detector.arm_at_fit). true alarm: fires "
    "at or after the test-accuracy peak in a run that collapses; false alarm: fires in a run that never "
    "collapses or before the peak; missed: collapsed runs without a true alarm; early: true alarms "
    "strictly before the collapse step. Lead = collapse step − alarm step (median over true alarms; "
    "in decades: log10 of their ratio)."
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
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(outputs["detectors_csv"], index=False)
    summary.to_csv(outputs["summary_csv"], index=False)
    Path(outputs["summary_md"]).write_text(
        frame_to_markdown(summary, "Early-warning detectors of the collapse", DETECTOR_CAPTION)
    )
    log.info("detectors: %d rows over %d runs", len(table), table.groupby(RUN_KEYS).ngroups)
