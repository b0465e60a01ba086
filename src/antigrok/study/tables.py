"""Across runs: the paper's tables (seed mean +/- std at the right edge of each phase), the phase
edges table and the HTML pages of tables for the report (the detector's tables are
antigrok.study.detector's).

Inputs are the per-run files of the contract (htsr.csv, traps.csv, progress.csv, phases.csv);
the run (experiment, weight decay, seed) of a file is read from its path
``.../runs/{experiment}/wd{weight_decay}/seed{seed}/{file}``.

Right edge of a phase in a run: the last checkpoint step (a step present in the metric file)
whose phases.csv label is that phase. A run without the phase is absent from that cell of the
table; ``n_seeds`` counts the runs with a finite value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.runs import RUN_KEYS, parse_run_dir, read_run_files
from antigrok.spectra.primitives import mean_alpha
from antigrok.study.phases import PHASES, edges_from_phases, smoothed_test_acc_at
from antigrok.table_format import format_cell, frame_to_html, frame_to_markdown, markdown_table

log = logging.getLogger(__name__)

CELL_KEYS = ["experiment", "weight_decay", "phase", "layer", "metric"]
TIDY_COLUMNS = CELL_KEYS + ["mean", "std", "n_seeds", "edge_step_median"]
AVERAGE_LAYER = "average"
PHASE_HEADERS = {
    "pre-grokking": "Pre-grokking",
    "grokking": "Grokking (max test acc.)",
    "anti-grokking": "Anti-grokking (collapse)",
}


# ----------------------------------------------------------------------------- tables


def average_alpha_rows(htsr: pd.DataFrame, average_layers: dict[str, list[str]]) -> pd.DataFrame:
    """Rows layer="average": per (run, step) the mean alpha of ``htsr.average_layers[experiment]``.

    NaN (a failed fit, or a listed layer missing at that step) whenever any listed layer has no
    finite alpha, so an average is always over the same layers (:func:`mean_alpha`).
    """
    rows = []
    for run, frame in htsr.groupby(RUN_KEYS, sort=False):
        experiment = run[0]
        if experiment not in average_layers:
            raise ValueError(f"htsr.average_layers has no entry for experiment {experiment!r}: add its layer list")
        mean = mean_alpha(frame, average_layers[experiment], f"htsr.average_layers[{experiment}]")
        rows.append(mean.reset_index().assign(**dict(zip(RUN_KEYS, run)), layer=AVERAGE_LAYER))
    return pd.concat(rows, ignore_index=True)[RUN_KEYS + ["step", "alpha", "layer"]]


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
    with_average = pd.concat([htsr[RUN_KEYS + ["step", "layer", "alpha"]], average_alpha_rows(htsr, average_layers)])
    layers = {name: names + [AVERAGE_LAYER] for name, names in _layers(htsr).items()}
    cells = table_cells(phases, layers, _experiment_order(experiments, htsr))
    return aggregate_over_seeds(right_edge_values(with_average, phases, ["alpha"]), ["alpha"], cells)


def trap_metrics(traps: pd.DataFrame) -> list[str]:
    """WeightWatcher's trap count, and beside it the count with the mean-shift outlier removed
    (traps.csv files written before that column existed have only the first)."""
    return ["num_traps"] + (["num_traps_centered"] if "num_traps_centered" in traps.columns else [])


def table2_traps(traps, phases, experiments) -> pd.DataFrame:
    """Table 2: Correlation Traps per layer per phase, every weight decay (tidy)."""
    metrics = trap_metrics(traps)
    cells = table_cells(phases, _layers(traps), _experiment_order(experiments, traps))
    return aggregate_over_seeds(right_edge_values(traps, phases, metrics), metrics, cells)


TABLE4_METRICS = ["rand_sigma_mp", "mp_ks_stat", "mp_ks_pvalue", "num_traps"]


def table4_mp_fit(htsr, traps, phases, experiments) -> pd.DataFrame:
    """Table 4: MP fit of W_rand (sigma, KS statistic, p-value) and traps, per layer per phase (tidy)."""
    keys = RUN_KEYS + ["step", "layer"]
    metrics = TABLE4_METRICS[:3] + trap_metrics(traps)
    merged = htsr[keys + TABLE4_METRICS[:3]].merge(traps[keys + trap_metrics(traps)], on=keys, how="outer")
    cells = table_cells(phases, _layers(merged), _experiment_order(experiments, merged))
    return aggregate_over_seeds(right_edge_values(merged, phases, metrics), metrics, cells)


# ----------------------------------------------------------------------------- markdown


def tidy_to_markdown(tidy: pd.DataFrame, title: str, caption: str, descriptions: dict | None = None) -> str:
    """Readable Markdown: one table per experiment, rows (weight decay, layer, metric), columns phases.

    ``descriptions`` (experiment -> one line with its lr and steps) heads each experiment's table, so
    a time-rescaled run is never read as the paper's experiment.
    """
    lines = [f"# {title}", "", caption, ""]
    headers = ["weight decay", "layer", "metric"] + [PHASE_HEADERS[phase] for phase in PHASES]
    for experiment, frame in tidy.groupby("experiment", sort=False):
        lines += [f"## {experiment}", ""]
        if descriptions and experiment in descriptions:
            lines += [descriptions[experiment], ""]
        rows = []
        for (weight_decay, layer, metric), row_cells in frame.groupby(["weight_decay", "layer", "metric"], sort=False):
            by_phase = row_cells.set_index("phase")
            cells = [format_cell(*by_phase.loc[phase, ["mean", "std", "n_seeds"]]) for phase in PHASES]
            rows.append([f"{weight_decay:g}", str(layer), str(metric)] + cells)
        lines += markdown_table(headers, rows) + [""]
    return "\n".join(lines)


TABLE_CAPTION = (
    "Mean ± sample std over seeds (n = seeds with a finite value) at the right edge of each phase: "
    "the last checkpoint step of the run inside the phase (phases.csv). Pre-grokking ends where "
    "grokking starts, grokking at the peak of the smoothed test accuracy, anti-grokking at the end of "
    "training. Runs that never reach a phase are absent from its cells."
)


def write_tidy_table(tidy: pd.DataFrame, csv_path, md_path, title: str, descriptions: dict | None = None) -> None:
    """The tidy CSV and its Markdown, each written to a temporary name and renamed into place."""
    write_csv_atomically(tidy, csv_path)
    write_text_atomically(md_path, tidy_to_markdown(tidy, title, TABLE_CAPTION, descriptions))


def write_paper_tables(htsr_paths, traps_paths, phases_paths, outputs: dict, average_layers, experiments,
                       descriptions: dict | None = None) -> None:
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
        write_tidy_table(tidy, outputs[f"{name}_csv"], outputs[f"{name}_md"], title, descriptions)
        log.info("%s: %d cells, %d with seeds", name, len(tidy), int((tidy["n_seeds"] > 0).sum()))


def write_table_html(csv_path: str | Path, html_path: str | Path, title: str) -> None:
    """results/tables/<name>.csv as an HTML page for the report."""
    frame = pd.read_csv(csv_path)
    write_text_atomically(html_path, frame_to_html(frame, title, f"{len(frame)} rows, from {Path(csv_path).name}"))
    log.info("wrote %s (%d rows)", html_path, len(frame))


PHASE_EDGE_COLUMNS = ["fit_step", "grokking_start_step", "peak_step", "anti_grokking_start_step", "collapse_step",
                      "groks", "collapses"]


def phase_edges(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: its phase edges from phases.csv, the peak and the final test accuracy."""
    rows = []
    for path in paths:
        experiment, weight_decay, seed = parse_run_dir(path)
        phases = pd.read_csv(path).sort_values("step")
        edges = edges_from_phases(phases)
        rows.append(
            {
                "experiment": experiment,
                "weight_decay": weight_decay,
                "seed": seed,
                **{column: np.nan if getattr(edges, column) is None else getattr(edges, column)
                   for column in PHASE_EDGE_COLUMNS},
                "peak_test_acc_smoothed": smoothed_test_acc_at(phases, edges.peak_step),
                "final_test_acc": phases["test_acc"].iloc[-1] if "test_acc" in phases else np.nan,
            }
        )
    return pd.DataFrame(rows).sort_values(["experiment", "weight_decay", "seed"], ignore_index=True)


def write_phase_edges(paths: Sequence[str | Path], csv_path: str | Path, html_path: str | Path,
                      md_path: str | Path | None = None) -> None:
    """results/tables/phase_edges.csv, .html (and .md): the phase edges of every run, written atomically."""
    edges = phase_edges(paths)
    note = ("Steps at which each run fits its train set, starts grokking, peaks, starts its decline "
            "(anti-grokking) and crosses peak - phases.collapse_drop (collapse_step); empty: never.")
    texts = {csv_path: edges.to_csv(index=False),
             html_path: frame_to_html(edges.convert_dtypes(), "Phase edges per run", note)}
    if md_path is not None:
        texts[md_path] = frame_to_markdown(edges.astype(object).where(edges.notna(), "—"), "Phase edges per run", note)
    for path, text in texts.items():
        write_text_atomically(path, text)
    log.info("wrote %s (%d runs)", ", ".join(map(str, texts)), len(edges))
