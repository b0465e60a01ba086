"""One figure per statistic that a warning rule reads: weight decays side by side across seeds.

For an experiment, each panel (a layer, or the model for a progress measure) shows the statistic
against log step for every weight decay: the median over seeds as a line and the range (min-max)
as a band, with each run's collapse crossing marked, so a reader sees whether the statistic
separates the runs that collapse from those that do not before the test accuracy does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from antigrok.report.figures import DPI, save_figure, set_step_axis
from antigrok.runs import read_run_files
from antigrok.study.warning_rules import MODEL, STATISTICS, statistic_table

LABELS = {
    "alpha": "HTSR alpha",
    "stable_rank": "stable rank",
    "mp_ks_stat": "KS distance of the shuffled ESD from its MP fit",
    "rand_edge_ratio": "largest shuffled eigenvalue / MP bulk edge",
    "num_traps": "Correlation Traps (WeightWatcher's count)",
    "num_traps_centered": "Correlation Traps, mean-shift outlier removed",
    "l2_norm": "l2 norm of the weights",
    "activation_sparsity": "activation sparsity",
    "abs_weight_entropy": "absolute weight entropy",
    "circuit_complexity": "circuit complexity (KL after pruning)",
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def statistic_long(statistic: str, htsr: pd.DataFrame, traps: pd.DataFrame, progress: pd.DataFrame) -> pd.DataFrame:
    """(weight_decay, seed, step, layer, value) of ``statistic`` for every run of the frames."""
    frames = []
    for (weight_decay, seed), run_htsr in htsr.groupby(["weight_decay", "seed"]):
        of_run = lambda frame: frame[(frame["weight_decay"] == weight_decay) & (frame["seed"] == seed)]  # noqa: E731
        wide = statistic_table(statistic, run_htsr, of_run(traps), of_run(progress))
        long = wide.reset_index().melt(id_vars="step", var_name="layer", value_name="value")
        frames.append(long.assign(weight_decay=weight_decay, seed=seed))
    return pd.concat(frames, ignore_index=True)


def plot_statistic(values: pd.DataFrame, collapse_steps: Mapping[float, Sequence[int]], statistic: str,
                   title: str) -> Figure:
    """Panels per layer; per weight decay the median over seeds and its min-max band."""
    layers = list(dict.fromkeys(values["layer"]))
    fig = Figure(figsize=(9.0, 1.4 + 2.4 * len(layers)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(layers), 1, sharex=True, squeeze=False)[:, 0]
    weight_decays = sorted(values["weight_decay"].unique())
    for ax, layer in zip(axes, layers):
        for color, weight_decay in zip(COLORS, weight_decays):
            subset = values[(values["layer"] == layer) & (values["weight_decay"] == weight_decay)]
            grouped = subset.groupby("step")["value"]
            steps = np.array(sorted(subset["step"].unique()), dtype=float)
            seeds = subset["seed"].nunique()
            ax.plot(steps, grouped.median().reindex(steps).to_numpy(), color=color, lw=1.5,
                    label=f"weight decay {weight_decay:g}: median of {seeds} seeds, band = range")
            ax.fill_between(steps, grouped.min().reindex(steps).to_numpy(), grouped.max().reindex(steps).to_numpy(),
                            color=color, alpha=0.2, lw=0)
            for step in collapse_steps.get(weight_decay, []):
                ax.axvline(step, color=color, ls=":", lw=1.0)
        if statistic == "alpha":
            ax.axhline(2.0, color="0.3", ls="--", lw=0.8)
        ax.set_ylabel(LABELS[statistic] if layer == MODEL else f"{layer}")
        set_step_axis(ax, label=ax is axes[-1])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\n{LABELS[statistic]}; dotted: each run's collapse crossing", fontsize=9)
    return fig


def write_statistic_figures(htsr_paths, traps_paths, progress_paths, phases_paths, experiment: str,
                            statistics: Sequence[str], outputs: Sequence[str | Path], description: str) -> None:
    """The rule ``figure_statistics``: one PNG per statistic (``outputs`` in the order of ``statistics``)."""
    htsr, traps = read_run_files(htsr_paths), read_run_files(traps_paths)
    progress, phases = read_run_files(progress_paths), read_run_files(phases_paths)
    edges = phases.groupby(["weight_decay", "seed"])["collapse_step"].first().dropna()
    collapse_steps = {wd: [int(step) for step in steps] for wd, steps in edges.groupby(level="weight_decay")}
    for statistic, output in zip(statistics, outputs):
        if statistic not in STATISTICS:
            raise ValueError(f"figure_statistics: unknown statistic {statistic!r}")
        values = statistic_long(statistic, htsr, traps, progress)
        save_figure(plot_statistic(values, collapse_steps, statistic, description), [output])
