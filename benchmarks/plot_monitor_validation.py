"""Figure of a monitor validation: what the monitor saw inside training, and where each alarm fired.

Reads the run folders that ``benchmarks/monitor_validation.py`` writes (train_log.csv, monitor.csv,
validation.csv) and draws one column per run: train and test accuracy, the monitor's alpha per layer
(with the average of ``--average-layers`` and the alpha = ``--alpha-critical`` line) and its trap
counts per layer, all against step on a log axis. A vertical line marks each alarm's first firing in
the monitor, and the phase edges (peak, collapse crossing) of validation.csv.

    python benchmarks/plot_monitor_validation.py RUN_DIR [RUN_DIR ...] --out monitor_validation.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ALARM_COLOURS = {"alpha_below_critical": "tab:red", "correlation_trap": "tab:purple", "alpha_and_trap": "tab:brown"}


def run_title(run_dir: Path) -> str:
    seed, weight_decay, experiment = run_dir.name, run_dir.parent.name, run_dir.parent.parent.name
    return f"{experiment}, {weight_decay.replace('wd', 'weight decay ')}, {seed}"


def mark_alarms(axis, validation: pd.DataFrame) -> None:
    for row in validation.itertuples():
        if pd.notna(row.monitor_step):
            axis.axvline(row.monitor_step, color=ALARM_COLOURS.get(row.alarm, "grey"), lw=1.2, ls="--",
                         label=f"{row.alarm} fires ({int(row.monitor_step)})")


def mark_edges(axis, validation: pd.DataFrame) -> None:
    first = validation.iloc[0]
    if pd.notna(first.peak_step):
        axis.axvline(first.peak_step, color="black", lw=0.8, ls=":", label=f"peak ({int(first.peak_step)})")
    if pd.notna(first.collapse_step):
        axis.axvline(first.collapse_step, color="black", lw=0.8, ls="-.",
                     label=f"collapse crossing ({int(first.collapse_step)})")


def plot_run(axes, run_dir: Path, average_layers: list[str], alpha_critical: float) -> None:
    train_log = pd.read_csv(run_dir / "train_log.csv")
    monitor = pd.read_csv(run_dir / "monitor.csv")
    validation = pd.read_csv(run_dir / "validation.csv")
    accuracy, alpha, traps = axes

    accuracy.plot(train_log.step, train_log.train_acc, color="tab:blue", lw=1, label="train")
    accuracy.plot(train_log.step, train_log.test_acc, color="tab:orange", lw=1, label="test")
    accuracy.set_ylabel("accuracy")
    accuracy.set_title(run_title(run_dir), fontsize=10)

    for layer, rows in monitor.groupby("layer", sort=False):
        alpha.plot(rows.step, rows.alpha, marker=".", ms=3, lw=1, label=layer)
        traps.plot(rows.step, rows.num_traps, marker=".", ms=3, lw=1, label=layer)
    averaged = monitor[monitor.layer.isin(average_layers)].groupby("step").alpha.mean()
    if len(averaged):
        alpha.plot(averaged.index, averaged.to_numpy(), color="black", lw=1.5, label=f"mean of {', '.join(average_layers)}")
    alpha.axhline(alpha_critical, color="grey", lw=0.8)
    alpha.set_ylabel("alpha (monitor)")
    traps.set_ylabel("Correlation Traps (monitor)")
    traps.set_xlabel("step")

    for axis in axes:
        axis.set_xscale("log")
        mark_edges(axis, validation)
        mark_alarms(axis, validation)
    for axis in axes:
        axis.legend(fontsize=6, loc="best")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders written by monitor_validation.py")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png or .pdf)")
    parser.add_argument("--average-layers", default="fc1,fc2", help="layers whose mean alpha the alarm reads")
    parser.add_argument("--alpha-critical", type=float, default=2.0)
    args = parser.parse_args(argv)
    missing = [str(d / name) for d in args.run_dirs for name in ("train_log.csv", "monitor.csv", "validation.csv")
               if not (d / name).exists()]
    if missing:
        parser.error(f"not a monitor_validation.py run folder (missing {', '.join(missing)})")
    figure, axes = plt.subplots(3, len(args.run_dirs), figsize=(5.5 * len(args.run_dirs), 9), sharex="col",
                                squeeze=False)
    for column, run_dir in enumerate(args.run_dirs):
        plot_run(axes[:, column], run_dir, args.average_layers.split(","), args.alpha_critical)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
