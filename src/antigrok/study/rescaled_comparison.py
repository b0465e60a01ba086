"""The long runs beside the time-rescaled runs, at equal lr x step.

AdamW moves each weight by about lr per step and decays it by lr x weight_decay per step, so a run
at lr 5e-3 should be, at step s, about where the paper's lr 5e-4 is at step 10 s. The time-scale
study (docs/reference/timescale) found that true of grokking only roughly: the fit does not rescale
and the peak comes later than lr x step predicts at the smaller lr. This module lays each long run
(the paper's own lr and horizon, configs/paper_cpu.yaml) beside the rescaled runs of the same weight
decay at equal lr x step, so that what the rescaling changed can be read with numbers:

    run_series(run)           one row per analysed checkpoint: test and train accuracy, alpha, raw and
                              centred Correlation Traps per layer, the l2 norm
    same_time_table(...)      tidy, one row per (long run, rescaled run, anchor, quantity): both runs'
                              values at the anchor's lr x step; the anchors are each run's phase edges
                              and its last analysed step
    same_time_summary(...)    per (rescaled lr, weight decay, anchor, quantity): the rescaled runs'
                              median and range over seeds (n) beside the long run's value
    plot_same_time(...)       test accuracy, fc1 and fc2 alpha and the trap counts against lr x step
    plot_traps_over_time(...) raw and centred traps per layer over the steps, one panel per run

Everything is read from the runs' committed CSVs; nothing is trained or fitted here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from antigrok.runs import (
    HTSR_CSV,
    PHASES_CSV,
    PROGRESS_CSV,
    RUN_FOLDERS,
    TRAIN_LOG,
    TRAPS_CSV,
    nearest_checkpoint_step,
    parse_run_dir,
)
from antigrok.table_format import format_number, markdown_table

# The files of a run folder read here.
RUN_FILES = (TRAIN_LOG, PHASES_CSV, HTSR_CSV, TRAPS_CSV, PROGRESS_CSV)
# phases.csv's edge columns, by the name the tables give them ("end" is the last analysed step).
ANCHOR_COLUMNS = {
    "fit": "fit_step",
    "grokking start": "grokking_start_step",
    "peak": "peak_step",
    "decline start": "anti_grokking_start_step",
    "collapse crossing": "collapse_step",
}
ANCHORS = [*ANCHOR_COLUMNS, "end"]
SAME_TIME_COLUMNS = [
    "long_run", "long_lr", "rescaled_run", "rescaled_lr", "weight_decay", "anchor_of", "anchor", "lr_step",
    "long_step", "rescaled_step", "quantity", "long_value", "rescaled_value",
]
SUMMARY_COLUMNS = [
    "rescaled_lr", "weight_decay", "anchor", "quantity", "n_rescaled_runs", "rescaled_median", "rescaled_min",
    "rescaled_max", "long_median", "long_min", "long_max", "n_long_reached",
]


@dataclass(frozen=True)
class RunRows:
    """One run's committed rows and the AdamW learning rate it was trained with."""

    name: str  # experiment/wd{weight_decay}/seed{seed}
    weight_decay: float
    lr: float
    series: pd.DataFrame  # run_series(): one row per analysed step
    anchors: dict[str, float]  # anchor name -> step (NaN where the run has no such edge)

    @property
    def last_step(self) -> int:
        return int(self.series.index.max())


def run_series(train_log: pd.DataFrame, htsr: pd.DataFrame, traps: pd.DataFrame,
               progress: pd.DataFrame) -> pd.DataFrame:
    """One row per analysed step (htsr.csv's steps), indexed by step: ``test_acc``, ``train_acc``
    (the train log's row at that step, or the nearest earlier one), ``alpha_{layer}``,
    ``traps_{layer}`` (raw, WeightWatcher's count), ``traps_centered_{layer}`` (the mean-shift
    outlier removed; NaN where the run predates that column), ``traps``/``traps_centered`` summed
    over the layers, and ``l2_norm``."""
    alpha = htsr.pivot_table(index="step", columns="layer", values="alpha", aggfunc="first")
    series = alpha.add_prefix("alpha_")
    raw = traps.pivot_table(index="step", columns="layer", values="num_traps", aggfunc="first")
    series = series.join(raw.add_prefix("traps_"))
    series["traps"] = raw.sum(axis=1, min_count=1)
    if "num_traps_centered" in traps.columns:
        centred = traps.pivot_table(index="step", columns="layer", values="num_traps_centered", aggfunc="first")
        series = series.join(centred.add_prefix("traps_centered_"))
        series["traps_centered"] = centred.sum(axis=1, min_count=1)
    else:
        for layer in raw.columns:
            series[f"traps_centered_{layer}"] = np.nan
        series["traps_centered"] = np.nan
    series = series.join(progress.set_index("step")[["l2_norm"]])
    logged = train_log.sort_values("step")[["step", "test_acc", "train_acc"]]
    accuracy = pd.merge_asof(pd.DataFrame({"step": series.index.astype(logged["step"].dtype)}), logged, on="step")
    series.insert(0, "train_acc", accuracy["train_acc"].to_numpy())
    series.insert(0, "test_acc", accuracy["test_acc"].to_numpy())
    series.index.name = "step"
    series.columns.name = None
    return series.sort_index()


def phase_anchors(phases: pd.DataFrame, series: pd.DataFrame) -> dict[str, float]:
    """The run's phase edges (phases.csv, the same on every row) and its last analysed step."""
    first = phases.iloc[0] if len(phases) else pd.Series(dtype=float)
    anchors = {name: float(first.get(column, np.nan)) for name, column in ANCHOR_COLUMNS.items()}
    anchors["end"] = float(series.index.max())
    return anchors


def read_run_rows(run_dir: str | Path, lr: float) -> RunRows:
    """A run folder's rows (RUN_FILES must all be there)."""
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}: the comparison reads a run's analysed rows")
    experiment, weight_decay, seed = parse_run_dir(run_dir)
    frames = {name: pd.read_csv(run_dir / name) for name in RUN_FILES}
    series = run_series(frames[TRAIN_LOG], frames[HTSR_CSV], frames[TRAPS_CSV], frames[PROGRESS_CSV])
    if series.empty:
        raise ValueError(f"{run_dir}/{HTSR_CSV} has no rows: nothing analysed yet")
    return RunRows(f"{experiment}/wd{run_dir.parent.name[2:]}/seed{seed}", weight_decay, float(lr), series,
                   phase_anchors(frames[PHASES_CSV], series))


def runs_of_folder(folder: str | Path, experiments: dict) -> list[RunRows]:
    """Every run under FOLDER/runs/ whose experiment the config lists, with that experiment's lr;
    runs of experiments the config does not list are not read (their lr is unknown)."""
    runs = []
    for run_dir in sorted((Path(folder) / "runs").glob(RUN_FOLDERS)):
        experiment = run_dir.parent.parent.name
        if run_dir.is_dir() and experiment in experiments:
            runs.append(read_run_rows(run_dir, experiments[experiment]["optimizer"]["lr"]))
    return runs


def values_at(series: pd.DataFrame, step: float) -> tuple[float, pd.Series | None]:
    """The analysed row nearest ``step`` in log10, and its step; (NaN, None) where the run has not
    been analysed that far (``step`` beyond its last analysed step) or ``step`` is not finite."""
    if not math.isfinite(step) or step > series.index.max():
        return math.nan, None
    nearest = nearest_checkpoint_step(list(series.index), int(round(step)))
    return float(nearest), series.loc[nearest]


def quantities(long: RunRows, rescaled: RunRows) -> list[str]:
    """The columns both runs' series have, in the long run's order."""
    return [column for column in long.series.columns if column in rescaled.series.columns]


def same_time_rows(long: RunRows, rescaled: RunRows) -> pd.DataFrame:
    """Both runs' values at each anchor of either run, matched by lr x step."""
    rows = []
    names = quantities(long, rescaled)
    for anchor_of, run in (("rescaled", rescaled), ("long", long)):
        for anchor in ANCHORS:
            step = run.anchors.get(anchor, math.nan)
            if not math.isfinite(step):
                continue
            lr_step = run.lr * step
            long_step, long_values = values_at(long.series, lr_step / long.lr)
            rescaled_step, rescaled_values = values_at(rescaled.series, lr_step / rescaled.lr)
            for name in names:
                rows.append({
                    "long_run": long.name, "long_lr": long.lr, "rescaled_run": rescaled.name,
                    "rescaled_lr": rescaled.lr, "weight_decay": long.weight_decay, "anchor_of": anchor_of,
                    "anchor": anchor, "lr_step": lr_step, "long_step": long_step, "rescaled_step": rescaled_step,
                    "quantity": name,
                    "long_value": math.nan if long_values is None else float(long_values[name]),
                    "rescaled_value": math.nan if rescaled_values is None else float(rescaled_values[name]),
                })
    return pd.DataFrame(rows, columns=SAME_TIME_COLUMNS)


def same_time_table(long_runs: Sequence[RunRows], rescaled_runs: Sequence[RunRows]) -> pd.DataFrame:
    """same_time_rows for every (long run, rescaled run) pair of the same weight decay."""
    frames = [same_time_rows(long, rescaled) for long in long_runs for rescaled in rescaled_runs
              if rescaled.weight_decay == long.weight_decay]
    if not frames:
        return pd.DataFrame(columns=SAME_TIME_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def same_time_summary(table: pd.DataFrame) -> pd.DataFrame:
    """At the rescaled runs' anchors: per (rescaled lr, weight decay, anchor, quantity) the rescaled
    runs' median, min and max over the runs that have the anchor (n), and the long run's values at
    the matched steps (n_long_reached: how many of those steps it has been analysed to)."""
    at_rescaled = table[table["anchor_of"] == "rescaled"]
    rows = []
    keys = ["rescaled_lr", "weight_decay", "anchor", "quantity"]
    for key, frame in at_rescaled.groupby(keys, sort=False):
        rescaled = frame["rescaled_value"].dropna()
        long = frame["long_value"].dropna()
        rows.append(dict(zip(keys, key)) | {
            "n_rescaled_runs": int(frame["rescaled_run"].nunique()),
            "rescaled_median": rescaled.median(), "rescaled_min": rescaled.min(), "rescaled_max": rescaled.max(),
            "long_median": long.median(), "long_min": long.min(), "long_max": long.max(),
            "n_long_reached": int(long.size),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _cell(median: float, low: float, high: float) -> str:
    if not math.isfinite(median) or low == high:
        return format_number(median)
    return f"{format_number(median)} [{format_number(low)}, {format_number(high)}]"


def summary_markdown(summary: pd.DataFrame, quantity_names: Sequence[str]) -> str:
    """One Markdown table per weight decay: a row per (rescaled lr, anchor), for each quantity the
    rescaled median [min, max] (n runs) and the long run's value at the same lr x step."""
    lines = []
    for weight_decay, by_wd in summary.groupby("weight_decay", sort=True):
        lines += [f"### weight decay {weight_decay:g}", ""]
        header = ["rescaled lr", "anchor", "n"]
        for name in quantity_names:
            header += [f"{name} rescaled", f"{name} long"]
        rows = []
        order = by_wd.assign(anchor_order=by_wd["anchor"].map(ANCHORS.index))
        order = order.sort_values(["rescaled_lr", "anchor_order"], ascending=[False, True], kind="stable")
        for (lr, anchor), frame in order.groupby(["rescaled_lr", "anchor"], sort=False):
            cells = [f"{lr:g}", anchor, str(int(frame["n_rescaled_runs"].max()))]
            for name in quantity_names:
                row = frame[frame["quantity"] == name]
                if row.empty:
                    cells += ["—", "—"]
                    continue
                row = row.iloc[0]
                reached = "" if row["n_long_reached"] == row["n_rescaled_runs"] or row["n_long_reached"] == 0 \
                    else f" ({int(row['n_long_reached'])} reached)"
                cells += [_cell(row["rescaled_median"], row["rescaled_min"], row["rescaled_max"]),
                          _cell(row["long_median"], row["long_min"], row["long_max"]) + reached]
            rows.append(cells)
        lines += [*markdown_table(header, rows), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ figures

SAME_TIME_PANELS = [
    ("test_acc", "test accuracy"),
    ("alpha_fc1", "fc1 alpha"),
    ("alpha_fc2", "fc2 alpha"),
    ("traps_centered", "centred traps (all layers)"),
]


def plot_same_time(long_runs: Sequence[RunRows], rescaled_runs: Sequence[RunRows], title: str) -> Figure:
    """One row of panels per weight decay, against lr x step: each long run in black, the rescaled
    runs coloured by lr (one thin line per seed)."""
    weight_decays = sorted({run.weight_decay for run in long_runs})
    figure = Figure(figsize=(4.0 * len(SAME_TIME_PANELS), 3.2 * len(weight_decays)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(weight_decays), len(SAME_TIME_PANELS), squeeze=False))
    lrs = sorted({run.lr for run in rescaled_runs})
    colors = dict(zip(lrs, ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]))
    for row, weight_decay in enumerate(weight_decays):
        for column, (quantity, label) in enumerate(SAME_TIME_PANELS):
            ax = axes[row, column]
            labelled = set()
            for run in rescaled_runs:
                if run.weight_decay != weight_decay or quantity not in run.series:
                    continue
                values = run.series[quantity].dropna()
                values = values[values.index > 0]
                legend = f"lr {run.lr:g}" if run.lr not in labelled else None
                labelled.add(run.lr)
                ax.plot(values.index * run.lr, values.to_numpy(), color=colors[run.lr], lw=0.8, alpha=0.7,
                        label=legend)
            for run in long_runs:
                if run.weight_decay != weight_decay:
                    continue
                values = run.series[quantity].dropna()
                values = values[values.index > 0]
                ax.plot(values.index * run.lr, values.to_numpy(), color="black", lw=2.0, label=f"lr {run.lr:g} (long run)")
            ax.set_xscale("log")
            ax.set_xlabel("lr x step")
            ax.set_title(f"{label}, wd {weight_decay:g}", fontsize=9)
            ax.grid(alpha=0.3)
            if column == 0:
                ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_traps_over_time(long_runs: Sequence[RunRows], title: str) -> Figure:
    """Raw (solid) and centred (dashed) Correlation Traps over the steps: a row of panels per run,
    a column per layer; the step axis starts a decade before the first trap of any run."""
    layers = [column.removeprefix("traps_") for column in long_runs[0].series.columns
              if column.startswith("traps_") and not column.startswith("traps_centered")]
    figure = Figure(figsize=(3.6 * len(layers), 2.6 * len(long_runs)), layout="constrained")
    axes = figure.subplots(len(long_runs), len(layers), squeeze=False, sharex=True)
    first_trap = [run.series.index[(run.series["traps"] > 0).to_numpy()].min() for run in long_runs]
    first_trap = [step for step in first_trap if isinstance(step, (int, np.integer)) and step > 0]
    for row, run in enumerate(long_runs):
        for column, layer in enumerate(layers):
            ax = axes[row, column]
            for name, style, label in (("traps", "-", "raw"), ("traps_centered", "--", "centred")):
                values = run.series[f"{name}_{layer}"].dropna()
                values = values[values.index > 0]
                ax.step(values.index, values.to_numpy(), where="post", ls=style, color="black" if style == "-"
                        else "tab:red", label=label)
            ax.set_xscale("log")
            ax.set_title(f"{run.name} (lr {run.lr:g}), {layer}", fontsize=8)
            ax.grid(alpha=0.3)
            if column == 0:
                ax.set_ylabel("Correlation Traps")
                ax.legend(fontsize=7)
            if row == len(long_runs) - 1:
                ax.set_xlabel("step")
    if first_trap:
        axes[0, 0].set_xlim(left=min(first_trap) / 10)
    figure.suptitle(title, fontsize=10)
    return figure
