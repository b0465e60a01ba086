"""What each run of a results folder did, as Markdown tables for a reference README.

    python scripts/run_overview.py docs/reference/modadd_cpu [--steps 0,50,500,5000,10000]

The folder holds ``runs/{experiment}/wd{weight_decay}/seed{seed}/`` (a workflow's results/ or a
docs/reference/<name>/). Three tables, from the runs' train_log.csv, htsr.csv and traps.csv:

- per run: the fit (first logged step with train accuracy >= --fit-acc) and the test accuracy there,
  the first logged step at or after it with test accuracy > --grok-acc, the best and the final test
  accuracy, the lowest train loss, and the loss spikes: logged steps where the train loss is at
  least --spike-ratio times the previous logged row's (the count, the first, and the lowest train
  accuracy at one);
- alpha of every layer at the checkpoints nearest to --steps;
- Correlation Traps per layer: how many checkpoints have at least one, and the first of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from compare_runs import run_dirs  # scripts/ is on the path when a script of it runs


def loss_spikes(train_log: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """Logged rows whose train loss is at least ``ratio`` times the previous row's."""
    loss = train_log["train_loss"].to_numpy()
    rises = np.flatnonzero(loss[1:] >= ratio * loss[:-1]) + 1
    return train_log.iloc[rises]


def run_row(name: str, train_log: pd.DataFrame, fit_acc: float, grok_acc: float, spike_ratio: float) -> dict:
    fitted = train_log[train_log["train_acc"] >= fit_acc]
    fit = fitted.iloc[0] if len(fitted) else None
    after_fit = train_log[train_log["step"] >= fit["step"]] if fit is not None else train_log.iloc[0:0]
    grokked = after_fit[after_fit["test_acc"] > grok_acc]
    best = train_log.loc[train_log["test_acc"].idxmax()]
    lowest = train_log.loc[train_log["train_loss"].idxmin()]
    final = train_log.iloc[-1]
    spikes = loss_spikes(train_log, spike_ratio)
    return {
        "run": name,
        "fit step (test acc.)": "never" if fit is None else f"{int(fit['step'])} ({fit['test_acc']:.3f})",
        f"test acc. > {grok_acc:g}": f"{int(grokked['step'].iloc[0])}" if len(grokked) else "never",
        "best test acc. (step)": f"{best['test_acc']:.3f} ({int(best['step'])})",
        "final: train loss, train / test acc.": (f"{final['train_loss']:.1e}, {final['train_acc']:.3f} / "
                                                 f"{final['test_acc']:.3f} (step {int(final['step'])})"),
        "lowest train loss (step)": f"{lowest['train_loss']:.1e} ({int(lowest['step'])})",
        f"loss spikes (x{spike_ratio:g}): count, first, lowest train acc.": (
            "none" if spikes.empty else
            f"{len(spikes)}, {int(spikes['step'].iloc[0])}, {spikes['train_acc'].min():.3f}"),
    }


def nearest_checkpoints(available: np.ndarray, wanted: list[int]) -> list[int]:
    return sorted({int(available[np.abs(available - step).argmin()]) for step in wanted})


def alpha_rows(name: str, htsr: pd.DataFrame, wanted: list[int]) -> pd.DataFrame:
    steps = nearest_checkpoints(np.sort(htsr["step"].unique()), wanted)
    table = htsr.pivot(index="step", columns="layer", values="alpha").loc[steps]
    table = table[list(dict.fromkeys(htsr["layer"]))]  # the model's order of layers
    table = table.reset_index()
    table.insert(0, "run", name)
    return table


def trap_row(name: str, traps: pd.DataFrame) -> dict:
    """Per layer: how many checkpoints have at least one trap, and the first of them."""
    row = {"run": name, "checkpoints": traps["step"].nunique()}
    for layer, group in traps.groupby("layer", sort=False):
        trapped = group[group["num_traps"] > 0]
        row[layer] = f"{len(trapped)} ({int(trapped['step'].iloc[0])})" if len(trapped) else "0"
    return row


def markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "—" if value != value else f"{value:.2f}"  # NaN: no value (e.g. a failed fit)
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder holding runs/ (results/ or docs/reference/<name>/)")
    parser.add_argument("--steps", default="0,50,500,5000,10000", help="checkpoints for the alpha table")
    parser.add_argument("--fit-acc", type=float, default=0.99)
    parser.add_argument("--grok-acc", type=float, default=0.9)
    parser.add_argument("--spike-ratio", type=float, default=100.0)
    parser.add_argument("--only", default="", help="only runs whose name contains this")
    args = parser.parse_args(argv)
    runs = {name: path for name, path in run_dirs(args.folder).items() if args.only in name}
    if not runs:
        raise SystemExit(f"no runs under {args.folder / 'runs'} (expected runs/*/wd*/seed*/train_log.csv)")
    wanted = [int(float(step)) for step in args.steps.split(",")]
    summary, alphas, traps = [], [], []
    for name, path in runs.items():
        summary.append(run_row(name, pd.read_csv(path / "train_log.csv"), args.fit_acc, args.grok_acc,
                               args.spike_ratio))
        if (path / "htsr.csv").exists():
            alphas.append(alpha_rows(name, pd.read_csv(path / "htsr.csv"), wanted))
        if (path / "traps.csv").exists():
            traps.append(trap_row(name, pd.read_csv(path / "traps.csv")))
    parts = [markdown(pd.DataFrame(summary))]
    if alphas:
        parts.append("alpha per layer:\n\n" + markdown(pd.concat(alphas, ignore_index=True)))
    if traps:
        parts.append("Correlation Traps: per layer, the checkpoints with at least one (the first of them):\n\n"
                     + markdown(pd.DataFrame(traps).fillna("—")))
    text = "\n\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    main()
