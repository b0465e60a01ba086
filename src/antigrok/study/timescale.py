"""How the AdamW learning rate rescales the time course of grokking and anti-grokking.

AdamW moves every weight by about lr per step, so a larger lr should reach the same weights in
fewer steps. The time-scale study (configs/timescale.yaml) trains one experiment per lr and
compares their phase edges here:

    timescale.csv        one row per run: the lr, its phase edges (phases.csv), the first step at
                         which the average alpha (htsr.average_layers) is below alpha_critical, the
                         first step with a Correlation Trap in any layer, peak and final accuracies
    timescale_slope.csv  the least-squares slope of log10(peak_step) against log10(lr) over the
                         runs whose peak lies inside the run (a peak at the last logged step is not
                         a peak yet: the run was too short); -1 would be exact lr x step rescaling
    timescale figure     test and train accuracy against step and against lr x step, one line per lr

Everything is read from the per-run files of the other rules; nothing is trained or fitted here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from antigrok.files import write_atomically
from antigrok.runs import RUN_KEYS, read_run_files
from antigrok.study.phases import smoothed_test_acc_at
from antigrok.study.tables import average_alpha_rows
from antigrok.table_format import format_number, markdown_table

TIMESCALE_COLUMNS = [
    "experiment", "lr", "weight_decay", "seed", "steps",
    "fit_step", "grokking_start_step", "peak_step", "peak_test_acc", "peak_inside_run",
    "first_alpha_below_critical_step", "first_trap_step",
    "anti_grokking_start_step", "collapse_step", "final_test_acc", "final_train_acc", "min_train_acc_after_fit",
]
SLOPE_COLUMNS = ["weight_decay", "n_runs", "lrs", "slope", "intercept", "peak_step_ratio_per_lr_decade"]


def _first_step(steps: pd.Series, condition: pd.Series) -> float:
    hits = steps[condition.to_numpy()]
    return float(hits.min()) if len(hits) else math.nan


def _edge(phases: pd.DataFrame, column: str) -> float:
    value = phases[column].iloc[0] if column in phases else math.nan
    return math.nan if pd.isna(value) else float(value)


def run_row(train_log, phases, htsr_average, traps, lr: float, alpha_critical: float) -> dict:
    """The timescale.csv row of one run from its frames (one run each; htsr_average: its average alpha)."""
    train_log = train_log.sort_values("step")
    fit_step, peak_step = _edge(phases, "fit_step"), _edge(phases, "peak_step")
    last_step = float(train_log["step"].max())
    peak_test_acc = smoothed_test_acc_at(phases, peak_step)
    after_fit = train_log[train_log["step"] >= fit_step] if not math.isnan(fit_step) else train_log.iloc[0:0]
    trap_steps = traps.groupby("step")["num_traps"].max()
    return {
        "lr": lr,
        "steps": int(last_step),
        "fit_step": fit_step,
        "grokking_start_step": _edge(phases, "grokking_start_step"),
        "peak_step": peak_step,
        "peak_test_acc": peak_test_acc,
        # the smoothed maximum at the last logged step may still be rising: not a peak
        "peak_inside_run": bool(not math.isnan(peak_step) and peak_step < last_step),
        "first_alpha_below_critical_step": _first_step(htsr_average["step"], htsr_average["alpha"] < alpha_critical),
        "first_trap_step": _first_step(pd.Series(trap_steps.index), pd.Series(trap_steps.to_numpy() >= 1)),
        "anti_grokking_start_step": _edge(phases, "anti_grokking_start_step"),
        "collapse_step": _edge(phases, "collapse_step"),
        "final_test_acc": float(train_log["test_acc"].iloc[-1]),
        "final_train_acc": float(train_log["train_acc"].iloc[-1]),
        "min_train_acc_after_fit": float(after_fit["train_acc"].min()) if len(after_fit) else math.nan,
    }


def timescale_table(train_logs, phases, htsr, traps, learning_rates: dict[str, float],
                    average_layers: dict[str, list[str]], alpha_critical: float) -> pd.DataFrame:
    """timescale.csv from the concatenated run frames (read_run_files), ordered by lr."""
    averages = average_alpha_rows(htsr, average_layers)
    rows = []
    for run, log in train_logs.groupby(RUN_KEYS, sort=False):
        experiment = run[0]
        if experiment not in learning_rates:
            raise ValueError(f"experiment {experiment!r} has runs but no learning rate in timescale.experiments")

        def of_run(frame):
            return frame[(frame[RUN_KEYS] == pd.Series(run, index=RUN_KEYS)).all(axis=1)]

        row = run_row(log, of_run(phases), of_run(averages), of_run(traps), learning_rates[experiment], alpha_critical)
        rows.append(dict(zip(RUN_KEYS, run)) | row)
    table = pd.DataFrame(rows, columns=TIMESCALE_COLUMNS)
    return table.sort_values(["weight_decay", "lr", "seed"]).reset_index(drop=True)


def peak_step_slope(table: pd.DataFrame) -> pd.DataFrame:
    """Per weight decay: slope of log10(peak_step) vs log10(lr) over runs with a peak inside the run."""
    rows = []
    for weight_decay, group in table.groupby("weight_decay"):
        usable = group[group["peak_inside_run"] & (group["peak_step"] > 0)]
        slope = intercept = math.nan
        if usable["lr"].nunique() >= 2:
            slope, intercept = np.polyfit(np.log10(usable["lr"]), np.log10(usable["peak_step"]), 1)
        rows.append({
            "weight_decay": weight_decay,
            "n_runs": len(usable),
            "lrs": " ".join(f"{lr:g}" for lr in sorted(usable["lr"].unique())),
            "slope": slope,
            "intercept": intercept,
            # how many times fewer steps to the peak per 10x lr (10 for exact lr x step rescaling)
            "peak_step_ratio_per_lr_decade": 10 ** -slope if np.isfinite(slope) else math.nan,
        })
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if np.isfinite(value) and value >= 100 and float(value).is_integer() else format_number(value)
    return str(value)


def _experiments(table: pd.DataFrame) -> str:
    """The experiments of the study as the config names them, in lr order."""
    return ", ".join(dict.fromkeys(table.sort_values("lr", kind="stable")["experiment"]))


def timescale_markdown(table: pd.DataFrame, slope: pd.DataFrame) -> str:
    """Both tables as Markdown, with what each column means."""
    shown = [c for c in TIMESCALE_COLUMNS if c not in ("experiment",)]
    lines = [
        "# Time-scale study: phase edges per learning rate",
        "",
        f"One row per run (experiments {_experiments(table)}, each at the lr shown; `steps` is the run's "
        "length: these are time-rescaled runs, to be read with their lr and steps). Steps of "
        "phases.csv (smoothed test accuracy); `first_alpha_below_critical_step`: first checkpoint with the "
        "average alpha of htsr.average_layers below htsr.alpha_critical; `first_trap_step`: first checkpoint "
        "with a Correlation Trap in any layer; `peak_inside_run`: no if the smoothed maximum is at the last "
        "logged step (the run ended before its peak). — = the run has no such event.",
        "",
        *markdown_table(shown, ([_format(row._asdict()[c]) for c in shown] for row in table.itertuples(index=False))),
        "",
        "## Slope of log10(peak_step) against log10(lr)",
        "",
        "Least squares over the runs whose peak lies inside the run. Exact lr x step rescaling gives "
        "slope -1 (10x fewer steps to the peak per 10x lr); a steeper slope compresses more than linearly.",
        "",
        *markdown_table(SLOPE_COLUMNS, ([_format(v) for v in row] for row in slope.itertuples(index=False))),
    ]
    return "\n".join(lines) + "\n"


def plot_timescale(train_logs: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Test (solid) and train (dashed) accuracy against step and against lr x step, one colour per lr."""
    fig = Figure(figsize=(13.0, 5.0), dpi=150, layout="constrained")
    by_step, by_lr_step = fig.subplots(1, 2, sharey=True)
    lrs = table[["experiment", "lr"]].drop_duplicates().sort_values("lr")
    colors = {row.experiment: f"C{i}" for i, row in enumerate(lrs.itertuples())}
    for run, log in train_logs.groupby(RUN_KEYS, sort=False):
        experiment, weight_decay, seed = run
        log = log[log["step"] > 0].sort_values("step")
        lr = float(lrs.loc[lrs["experiment"] == experiment, "lr"].iloc[0])
        label = f"lr {lr:g} (wd {weight_decay:g}, seed {seed}, {int(log['step'].max()):.0e} steps)"
        for ax, x in ((by_step, log["step"]), (by_lr_step, log["step"] * lr)):
            ax.plot(x, log["test_acc"], color=colors[experiment], lw=1.4, label=label)
            ax.plot(x, log["train_acc"], color=colors[experiment], lw=0.9, ls="--")
    for ax, xlabel in ((by_step, "training step"), (by_lr_step, "lr x step (AdamW's total displacement scale)")):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    by_step.set_ylabel("accuracy (solid: test, dashed: train)")
    by_step.set_title("against step", fontsize=10, loc="left")
    by_lr_step.set_title("against lr x step: curves coincide if the lr only rescales time", fontsize=10, loc="left")
    by_step.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{_experiments(table)}: one experiment per AdamW learning rate, time-rescaled runs", fontsize=11)
    return fig


def write_timescale(train_log_paths, phases_paths, htsr_paths, traps_paths, learning_rates, average_layers,
                    alpha_critical, outputs: dict) -> pd.DataFrame:
    """The rule's outputs: table_csv, table_md, slope_csv, figure_png, figure_pdf (each written atomically)."""
    train_logs = read_run_files(train_log_paths)
    table = timescale_table(train_logs, read_run_files(phases_paths), read_run_files(htsr_paths),
                            read_run_files(traps_paths), learning_rates, average_layers, alpha_critical)
    slope = peak_step_slope(table)
    fig = plot_timescale(train_logs, table)
    writers = {
        "table_csv": lambda path: table.to_csv(path, index=False),
        "slope_csv": lambda path: slope.to_csv(path, index=False),
        "table_md": lambda path: path.write_text(timescale_markdown(table, slope), encoding="utf-8"),
        "figure_png": lambda path: fig.savefig(path, format="png"),
        "figure_pdf": lambda path: fig.savefig(path, format="pdf"),
    }
    for key, write in writers.items():
        write_atomically(outputs[key], write)
    return table
