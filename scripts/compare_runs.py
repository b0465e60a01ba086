"""Compare the runs of two results folders: how far apart are the same runs made two ways?

For each run present in both folders (``runs/{experiment}/wd{weight_decay}/seed{seed}/``), prints its
phase edges in each folder (phases.csv) and the largest differences of test and train accuracy over
the logged steps they share (train_log.csv) and of each layer's alpha over the checkpoints they share
(htsr.csv). Used to measure how two training paths that agree to rounding (train.cpu_engine fast
and plain) drift apart over a long run:

    python scripts/compare_runs.py A/results B/results [--labels fast plain]

Both arguments are folders holding ``runs/`` (a workflow's results/ or a docs/reference/<name>/).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from antigrok.runs import RUN_FOLDERS, TRAIN_LOG
from antigrok.study.phases import smoothed_test_acc_at

EDGES = ("fit_step", "peak_step", "anti_grokking_start_step", "collapse_step")


def run_dirs(root: Path) -> dict[str, Path]:
    return {str(path.parent.relative_to(root / "runs")): path.parent
            for path in sorted((root / "runs").glob(f"{RUN_FOLDERS}/{TRAIN_LOG}"))}


def edge_values(run_dir: Path) -> dict[str, float]:
    phases = pd.read_csv(run_dir / "phases.csv")
    values = {edge: float(phases[edge].iloc[0]) if edge in phases else math.nan for edge in EDGES}
    values["peak_test_acc"] = smoothed_test_acc_at(phases, values["peak_step"])
    values["final_test_acc"] = float(pd.read_csv(run_dir / "train_log.csv").sort_values("step")["test_acc"].iloc[-1])
    return values


def largest_difference(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], column: str) -> tuple[float, float]:
    """(largest |a - b| of ``column`` over shared ``keys``, the first key step where it exceeds 0.01)."""
    merged = a[keys + [column]].merge(b[keys + [column]], on=keys, suffixes=("_a", "_b"))
    difference = (merged[f"{column}_a"] - merged[f"{column}_b"]).abs()
    above = merged.loc[difference > 0.01, "step"]
    return float(difference.max()), float(above.min()) if len(above) else math.nan


def compare_run(a: Path, b: Path) -> list[str]:
    lines = []
    edges_a, edges_b = edge_values(a), edge_values(b)
    for edge in edges_a:
        lines.append(f"  {edge:26s} {edges_a[edge]:>12.4g} {edges_b[edge]:>12.4g}")
    logs = [pd.read_csv(folder / "train_log.csv") for folder in (a, b)]
    for column in ("test_acc", "train_acc"):
        largest, first = largest_difference(*logs, ["step"], column)
        lines.append(f"  max |d {column}| {largest:.4f} (first step with |d| > 0.01: {first:.0f})")
    htsr = [pd.read_csv(folder / "htsr.csv") for folder in (a, b)]
    for layer in sorted(set(htsr[0]["layer"]) & set(htsr[1]["layer"])):
        per_layer = [table[table["layer"] == layer] for table in htsr]
        largest, first = largest_difference(*per_layer, ["step", "layer"], "alpha")
        lines.append(f"  max |d alpha| {layer} {largest:.4f} (first checkpoint with |d| > 0.01: {first:.0f})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--labels", nargs=2, default=["first", "second"])
    args = parser.parse_args(argv)
    first, second = run_dirs(args.first), run_dirs(args.second)
    shared = sorted(set(first) & set(second))
    if not shared:
        parser.error(f"no run is in both {args.first}/runs and {args.second}/runs")
    for run in shared:
        print(f"{run}: {'':17s} {args.labels[0]:>12s} {args.labels[1]:>12s}")
        print("\n".join(compare_run(first[run], second[run])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
