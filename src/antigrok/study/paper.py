"""The paper's Tables 1, 2 and 4 as data, side by side with the workflow's tables.

``workflow/resources/paper_tables.csv`` holds every number of Prakash & Martin (2025) Tables 1, 2
and 4, one row per cell: table, weight_decay (``0.0``, or ``positive`` for the paper's WD > 0 runs,
which used 0.01), phase, layer, metric, paper_mean, paper_std (empty where the paper gives a
single value, as in Table 4 and the zero cells of Table 2's WD > 0 rows) and paper_text (the cell
as printed).

The comparison puts our seed mean +/- std of the same cell next to it, from the tidy tables of
rule ``tables`` (results/tables/table{1,2,4}_*.csv) for one experiment of the config
(``paper.experiment``), and the difference in units of the paper's std. A cell whose paper std
is 0 or not given has no such unit: ``differs`` then says whether ours differs at all (beyond
``EXACT_TOLERANCE``), so a count of 1 trap against the paper's 0 is not hidden.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.table_format import format_number, markdown_table

PAPER_COLUMNS = ["table", "weight_decay", "phase", "layer", "metric", "paper_mean", "paper_std", "paper_text"]
COMPARISON_COLUMNS = [
    "table", "experiment", "weight_decay", "phase", "layer", "metric",
    "paper_text", "paper_mean", "paper_std", "ours_mean", "ours_std", "ours_n_seeds", "ours_edge_step_median",
    "difference", "difference_in_paper_std", "differs",
]
EXACT_TOLERANCE = 1e-9
TABLE_TITLES = {"table1": "Table 1 (alpha)", "table2": "Table 2 (Correlation Traps)", "table4": "Table 4 (MP fit, FC1)"}


def read_paper_tables(path: str | Path, positive_weight_decay: float) -> pd.DataFrame:
    """The paper's cells, with ``positive`` weight decay replaced by ``positive_weight_decay``."""
    paper = pd.read_csv(path, dtype={"weight_decay": str})
    missing = set(PAPER_COLUMNS) - set(paper.columns)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}")
    paper["weight_decay"] = [
        float(positive_weight_decay) if value == "positive" else float(value) for value in paper["weight_decay"]
    ]
    return paper[PAPER_COLUMNS]


def compare_with_paper(paper: pd.DataFrame, ours: dict[str, pd.DataFrame], experiment: str) -> pd.DataFrame:
    """One row per paper cell: the paper's value, ours for ``experiment`` and their difference.

    ``ours`` maps table1/table2/table4 to the tidy tables of rule ``tables`` (summary.TIDY_COLUMNS).
    """
    rows = []
    keys = ["weight_decay", "phase", "layer", "metric"]
    for table, cells in paper.groupby("table", sort=False):
        tidy = ours[table]
        tidy = tidy[tidy["experiment"] == experiment]
        merged = cells.merge(tidy, on=keys, how="left")
        rows.append(merged.assign(experiment=experiment))
    frame = pd.concat(rows, ignore_index=True).rename(
        columns={"mean": "ours_mean", "std": "ours_std", "n_seeds": "ours_n_seeds",
                 "edge_step_median": "ours_edge_step_median"}
    )
    frame["ours_n_seeds"] = frame["ours_n_seeds"].fillna(0).astype(int)
    frame["difference"] = frame["ours_mean"].astype(float) - frame["paper_mean"].astype(float)
    paper_std = frame["paper_std"].astype(float)
    has_unit = paper_std.notna() & (paper_std > 0)
    frame["difference_in_paper_std"] = frame["difference"] / paper_std.where(has_unit)
    frame["differs"] = [_differs(d, z, unit) for d, z, unit in
                        zip(frame["difference"], frame["difference_in_paper_std"], has_unit)]
    return frame[COMPARISON_COLUMNS]


def _differs(difference: float, in_std: float, has_unit: bool):
    """True when ours is more than one paper std away (any difference when the paper has no std)."""
    if difference is None or not math.isfinite(difference):
        return pd.NA  # we have no value for this cell
    if has_unit:
        return bool(abs(in_std) > 1.0)
    return bool(abs(difference) > EXACT_TOLERANCE)


def comparison_markdown(comparison: pd.DataFrame, description: str) -> str:
    """One Markdown table per paper table: paper, ours, difference in paper std."""
    lines = [
        "# The paper's tables against ours",
        "",
        f"Ours: {description}. Paper: Prakash & Martin (2025), lr 5e-4, 1e7 steps. Cells are at the right "
        "edge of each phase (paper: ~1e5, ~1e6 and 1e7 steps; ours: the median edge step shown). "
        "`Δ/σ_paper` is (ours - paper) / paper std; **bold** where ours differs by more than one paper std "
        "(or at all, where the paper gives no std).",
        "",
    ]
    headers = ["weight decay", "layer", "metric", "phase", "paper", "ours (mean ± std, n)", "edge step", "Δ", "Δ/σ_paper"]
    for table, frame in comparison.groupby("table", sort=False):
        rows = []
        for row in frame.itertuples(index=False):
            ours = "— (0)" if row.ours_n_seeds == 0 else (
                f"{format_number(row.ours_mean)} ± {format_number(row.ours_std)} ({row.ours_n_seeds})")
            delta = format_number(row.difference)
            in_std = format_number(row.difference_in_paper_std)
            if row.differs is True:
                delta, in_std = f"**{delta}**", f"**{in_std}**"
            rows.append([f"{row.weight_decay:g}", row.layer, row.metric, row.phase, row.paper_text, ours,
                         format_number(row.ours_edge_step_median), delta, in_std])
        lines += [f"## {TABLE_TITLES.get(table, table)}", "", *markdown_table(headers, rows), ""]
    return "\n".join(lines)


def write_paper_comparison(paper_csv, table_csvs: dict, experiment: str, positive_weight_decay: float,
                           description: str, csv_path, md_path) -> pd.DataFrame:
    """Rule ``paper_comparison``: results/tables/paper_comparison.csv and .md (written atomically)."""
    paper = read_paper_tables(paper_csv, positive_weight_decay)
    ours = {table: pd.read_csv(path) for table, path in table_csvs.items()}
    comparison = compare_with_paper(paper, ours, experiment)
    write_csv_atomically(comparison, csv_path)
    write_text_atomically(md_path, comparison_markdown(comparison, description))
    return comparison
