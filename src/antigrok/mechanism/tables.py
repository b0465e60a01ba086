"""The mechanism's tables across runs (results/tables/mechanism_*.csv and one HTML page).

- mechanism_prototypes.csv: per experiment, weight decay, phase edge, layer and component, the
  |corr| of the prototype image with the best class-mean image, over seeds.
- mechanism_bound.csv: per experiment, weight decay, layer and phase, how often a trap and an entry
  above the theorem's bound come together, alone, or neither, over (checkpoint, seed) rows.
- mechanism_removal.csv: per experiment, weight decay, edge, scope and condition, accuracy and output
  divergence after the change, and the change of test accuracy against the unmodified checkpoint.
- mechanism_confusion.csv: per run and edge, test accuracy on plain and pixel-shuffled images and the
  share of the most-predicted class.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.mechanism.confusion import top_class_share
from antigrok.runs import RUN_KEYS, read_run_files

log = logging.getLogger(__name__)


def prototype_summary(prototypes: pd.DataFrame) -> pd.DataFrame:
    frame = prototypes.copy()
    frame["component"] = np.where(frame["kind"] == "top_row", "top_rows", "sv" + frame["index"].astype(str))
    keys = ["experiment", "weight_decay", "edge", "layer", "component"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped.agg(
        n_seeds=("seed", "nunique"), median_step=("step", "median"),
        corr_mean=("corr", "mean"), corr_min=("corr", "min"), corr_max=("corr", "max"),
        corr_centered_mean=("corr_centered", "mean"), corr_centered_min=("corr_centered", "min"),
        corr_centered_max=("corr_centered", "max"),
        best_classes_centered=("best_class_centered", lambda s: ";".join(map(str, s))),
    ).reset_index()
    return table


def phase_of_steps(largest: pd.DataFrame, phases: pd.DataFrame) -> pd.Series:
    """The phases.csv label of each row's step (checkpoint steps are logged steps)."""
    labels = phases[RUN_KEYS + ["step", "phase"]]
    merged = largest.merge(labels, on=RUN_KEYS + ["step"], how="left")
    return merged["phase"].fillna("unlogged")


def bound_summary(largest: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    frame = largest.copy()
    frame["phase"] = phase_of_steps(frame, phases).to_numpy()
    trap = frame["num_traps"] > 0
    above = frame["bound_ratio"] > 1
    frame["trap_and_bound"] = trap & above
    frame["trap_only"] = trap & ~above
    frame["bound_only"] = ~trap & above
    frame["neither"] = ~trap & ~above
    keys = ["experiment", "weight_decay", "layer", "phase"]
    table = frame.groupby(keys, sort=False).agg(
        n_seeds=("seed", "nunique"), n_rows=("step", "size"),
        trap_and_bound=("trap_and_bound", "sum"), trap_only=("trap_only", "sum"),
        bound_only=("bound_only", "sum"), neither=("neither", "sum"),
        bound_ratio_median=("bound_ratio", "median"), bound_ratio_max=("bound_ratio", "max"),
        trap_mean_share_median=("trap_mean_share", "median"),
        trap_entry_overlap_right_median=("trap_entry_overlap_right", "median"),
    ).reset_index()
    return table


def removal_summary(removal: pd.DataFrame) -> pd.DataFrame:
    base = removal[removal["condition"] == "none"][RUN_KEYS + ["edge", "test_acc", "train_acc"]]
    base = base.rename(columns={"test_acc": "test_acc_before", "train_acc": "train_acc_before"})
    frame = removal[removal["condition"] != "none"].merge(base, on=RUN_KEYS + ["edge"], how="left")
    frame["test_acc_change"] = frame["test_acc"] - frame["test_acc_before"]
    keys = ["experiment", "weight_decay", "edge", "scope", "condition"]
    table = frame.groupby(keys, sort=False).agg(
        n_seeds=("seed", "nunique"), n_rows=("seed", "size"), num_components_mean=("num_components", "mean"),
        relative_change_mean=("relative_change", "mean"),
        train_acc_before=("train_acc_before", "mean"), train_acc_after=("train_acc", "mean"),
        test_acc_before=("test_acc_before", "mean"), test_acc_after=("test_acc", "mean"),
        test_acc_change_mean=("test_acc_change", "mean"), test_acc_change_min=("test_acc_change", "min"),
        test_acc_change_max=("test_acc_change", "max"), probe_js_mean=("probe_js", "mean"),
        probe_agreement_mean=("probe_agreement", "mean"), test_js_mean=("test_js", "mean"),
    ).reset_index()
    return table


def confusion_summary(confusion: pd.DataFrame) -> pd.DataFrame:
    rows = []
    keys = RUN_KEYS + ["edge", "edge_step", "step"]
    for key, group in confusion.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for inputs, part in group.groupby("inputs"):
            classes = int(part[["true_class", "predicted_class"]].max().max()) + 1
            counts = np.zeros((classes, classes), dtype=np.int64)
            counts[part["true_class"], part["predicted_class"]] = part["count"]
            top, share = top_class_share(counts)
            row[f"{inputs}_accuracy"] = float(np.trace(counts) / counts.sum())
            row[f"{inputs}_top_class"] = top
            row[f"{inputs}_top_share"] = share
        rows.append(row)
    return pd.DataFrame(rows)


def html_page(tables: Mapping[str, pd.DataFrame], descriptions: Mapping[str, str]) -> str:
    from antigrok.table_format import TABLE_STYLE

    parts = [f"<h3>{title}</h3>{frame.to_html(index=False, na_rep='', border=0, float_format=lambda v: f'{v:.4g}')}"
             for title, frame in tables.items()]
    runs = "".join(f"<li>{text}</li>" for text in descriptions.values())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Mechanism</title>{TABLE_STYLE}</head><body>"
            f"<p>Runs:</p><ul>{runs}</ul>{''.join(parts)}</body></html>\n")


def write_mechanism_tables(prototypes, largest_weight, trap_removal, shuffled_confusion, phases,
                           outputs: Mapping[str, str], descriptions: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The rule ``mechanism_tables``: the four summaries as CSV and one HTML page."""
    tables = {
        "prototypes": prototype_summary(read_run_files(prototypes)),
        "bound": bound_summary(read_run_files(largest_weight), read_run_files(phases)),
        "removal": removal_summary(read_run_files(trap_removal)),
        "confusion": confusion_summary(read_run_files(shuffled_confusion)),
    }
    for name, table in tables.items():
        write_csv_atomically(table, outputs[name])
        log.info("wrote %s (%d rows)", outputs[name], len(table))
    titles = {"prototypes": "Prototypes: |corr| with the best class-mean image",
              "bound": "Traps against the largest weight (rows: checkpoints x seeds)",
              "removal": "Removing traps: accuracy and output divergence",
              "confusion": "Pixel-shuffled test images"}
    write_text_atomically(outputs["html"], html_page({titles[k]: v for k, v in tables.items()}, descriptions))
    return tables


# ----------------------------------------------------------------------------- the removal arms by outcome (issue 33)

ARM_VALUES = ["num_components", "relative_change", "relative_input_load", "relative_preactivation_change",
              "train_acc", "test_acc", "test_js", "probe_js"]


def removal_arms_by_run(removal: pd.DataFrame, collapses: pd.DataFrame) -> pd.DataFrame:
    """One row per run, edge, scope and condition (draws averaged), with the change of train and test
    accuracy against the unmodified checkpoint and the run's outcome (``collapses``: RUN_KEYS +
    ``collapses``)."""
    base = removal[removal["condition"] == "none"][RUN_KEYS + ["edge", "test_acc", "train_acc"]]
    base = base.rename(columns={"test_acc": "test_acc_before", "train_acc": "train_acc_before"})
    keys = RUN_KEYS + ["edge", "step", "scope", "condition"]
    changed = removal[removal["condition"] != "none"]
    table = changed.groupby(keys, sort=False)[ARM_VALUES].mean().reset_index()
    table.insert(len(keys), "n_draws", changed.groupby(keys, sort=False).size().to_numpy())
    table = table.merge(base, on=RUN_KEYS + ["edge"], how="left").merge(collapses, on=RUN_KEYS, how="left")
    table["test_acc_change"] = table["test_acc"] - table["test_acc_before"]
    table["train_acc_change"] = table["train_acc"] - table["train_acc_before"]
    return table


def removal_arms_summary(by_run: pd.DataFrame) -> pd.DataFrame:
    """Per edge, scope, condition and outcome (collapsing or not): n runs, the median and range of
    the accuracy changes, the median divergences and input loads."""
    frame = by_run.assign(outcome=np.where(by_run["collapses"], "collapsing", "not_collapsing"))
    keys = ["edge", "scope", "condition", "outcome"]
    return frame.groupby(keys, sort=False).agg(
        n_runs=("seed", "size"), test_acc_before_median=("test_acc_before", "median"),
        test_acc_change_median=("test_acc_change", "median"), test_acc_change_min=("test_acc_change", "min"),
        test_acc_change_max=("test_acc_change", "max"), train_acc_change_median=("train_acc_change", "median"),
        train_acc_change_min=("train_acc_change", "min"), test_js_median=("test_js", "median"),
        probe_js_median=("probe_js", "median"), relative_change_median=("relative_change", "median"),
        relative_input_load_median=("relative_input_load", "median"),
        relative_preactivation_change_median=("relative_preactivation_change", "median"),
    ).reset_index()


def removal_arms_markdown(summary: pd.DataFrame, scopes=("fc1", "fc2"), title: str = "") -> str:
    """The summary as one table per edge and scope: conditions down, outcomes across."""
    def cell(row) -> str:
        return (f"{row.test_acc_change_median:+.3f} [{row.test_acc_change_min:+.3f}, {row.test_acc_change_max:+.3f}] "
                f"(train {row.train_acc_change_median:+.3f}; JS {row.test_js_median:.3f}; n {row.n_runs})")

    parts = [f"# {title}\n" if title else ""]
    for (edge, scope), part in summary[summary["scope"].isin(scopes)].groupby(["edge", "scope"], sort=False):
        parts.append(f"\n## {edge}, {scope}\n\nchange of test accuracy, median [range] over runs; train: median change "
                     "of train accuracy; JS: median test-image JS divergence (nats)\n\n"
                     "| condition | collapsing | not collapsing |\n|---|---|---|")
        for condition, rows in part.groupby("condition", sort=False):
            cells = {row.outcome: cell(row) for row in rows.itertuples()}
            parts.append(f"| {condition} | {cells.get('collapsing', '—')} | {cells.get('not_collapsing', '—')} |")
    return "\n".join(parts) + "\n"
