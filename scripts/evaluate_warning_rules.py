"""The warning-rule tables and statistic figures of a study, from its committed per-run CSVs.

    python scripts/evaluate_warning_rules.py docs/reference/detector_study \
        --configfile configs/detector_study.yaml

    # the same rules on another folder's runs (the discovery runs), written elsewhere
    python scripts/evaluate_warning_rules.py docs/reference/cpu --configfile configs/detector_study.yaml \
        --out docs/reference/detector_study/discovery

Reads every runs/{experiment}/wd{weight_decay}/seed{seed}/ under the folder (htsr.csv, traps.csv,
progress.csv, phases.csv), scores the config's warning_rules.rules with the workflow's own code
(antigrok.study.warning_rules, as rule warning_rules does) and writes tables/warning_rules.csv,
tables/warning_rules_summary.{csv,md} and figures/statistic_{statistic}_{experiment}.png (as rule
figure_statistics does), under --out if given. Runs whose four files are not all there yet are skipped, and said so.

A run still training (phases.csv short of its experiment's steps) is refused: its peak, its collapse
crossing and the rules' first firings can all still move. --provisional scores it as it stands and
marks every output provisional, with the step each unfinished run has reached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from antigrok.report.long_run_report import with_status
from antigrok.report.statistic_figures import write_statistic_figures
from antigrok.runs import RUN_FOLDERS
from antigrok.study.warning_rules import write_rule_tables
from antigrok.workflow_config import describe_experiment, load_workflow_config

INPUTS = ("htsr.csv", "traps.csv", "progress.csv", "phases.csv")


def complete_runs(folder: Path) -> tuple[list[Path], list[Path]]:
    runs = sorted(path for path in (folder / "runs").glob(RUN_FOLDERS) if path.is_dir())
    complete = [run for run in runs if all((run / name).exists() for name in INPUTS)]
    return complete, [run for run in runs if run not in complete]


def unfinished_runs(runs: list[Path], experiments: dict) -> dict[Path, str]:
    """``at step N of M`` for each run whose phases.csv stops short of its experiment's steps."""
    unknown = sorted({run.parent.parent.name for run in runs} - set(experiments))
    if unknown:
        sys.exit(f"evaluate_warning_rules: the configs describe no experiment {', '.join(unknown)}; add the config "
                 "the runs were trained with to --configfile, so that their steps and settings are known")
    unfinished = {}
    for run in runs:
        trained_step = int(pd.read_csv(run / "phases.csv", usecols=["step"])["step"].max())
        steps = int(experiments[run.parent.parent.name]["steps"])
        if trained_step < steps:
            unfinished[run] = f"at step {trained_step} of {steps}"
    return unfinished


def mark_provisional(tables: Path, unfinished: dict[Path, str]) -> None:
    """A bold line under the summary's title and a ``provisional`` column in both CSVs."""
    note = "provisional, runs still training: " + "; ".join(f"{run} {where}" for run, where in unfinished.items())
    summary_md = tables / "warning_rules_summary.md"
    summary_md.write_text(with_status(summary_md.read_text(), note))
    for name in ("warning_rules.csv", "warning_rules_summary.csv"):
        frame = pd.read_csv(tables / name, keep_default_na=False, dtype=str)
        frame.insert(0, "provisional", note)
        frame.to_csv(tables / name, index=False)


def available_rules(rules: list[dict], run: Path) -> list[dict]:
    """The rules whose statistic the run's files have (and the all_of rules built on them); what is
    left out is said. Runs exported before a statistic existed (e.g. num_traps_centered) lack it."""
    columns = set()
    for name in INPUTS[:3]:
        columns |= set(pd.read_csv(run / name, nrows=0).columns)
    columns |= {"rand_edge_ratio"} if {"max_rand_eval", "rand_lambda_plus"} <= columns else set()
    kept, names = [], set()
    for rule in rules:
        usable = all(name in names for name in rule["all_of"]) if rule.get("all_of") else rule["statistic"] in columns
        if usable:
            kept.append(rule)
            names.add(rule["name"])
        else:
            print(f"leaving out rule {rule['name']}: {run} has no {rule.get('statistic') or rule.get('all_of')}")
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="docs/reference/<study>")
    parser.add_argument("--configfile", required=True, type=Path, nargs="+",
                        help="the config(s) whose warning_rules are scored, merged as snakemake merges them")
    parser.add_argument("--out", type=Path, help="where tables/ and figures/ go (default: the folder itself)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument("--provisional", action="store_true",
                        help="score runs that are still training, and mark every output provisional")
    args = parser.parse_args(argv)
    out = args.out or args.folder
    config = load_workflow_config(args.configfile)
    rules = config.get("warning_rules", {}).get("rules", [])
    if not rules:
        sys.exit(f"evaluate_warning_rules: {' '.join(map(str, args.configfile))} list no warning_rules.rules")
    runs, incomplete = complete_runs(args.folder)
    if not runs:
        sys.exit(f"evaluate_warning_rules: no complete run under {args.folder}/runs")
    for run in incomplete:
        print(f"skipping {run}: not all of {INPUTS} are there")
    unfinished = unfinished_runs(runs, config["experiments"])
    if unfinished and not args.provisional:
        listed = "\n  ".join(f"{run}: {where}" for run, where in unfinished.items())
        sys.exit(f"evaluate_warning_rules: runs still training, whose peak, collapse and first firings can still "
                 f"move:\n  {listed}\nscore them when they finish, or pass --provisional")
    rules = available_rules(rules, runs[0])
    descriptions = {name: describe_experiment(name, config["experiments"]) for name in config["experiments"]}
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    write_rule_tables(*[[run / name for run in runs] for name in INPUTS],
                      {"runs_csv": tables / "warning_rules.csv", "summary_csv": tables / "warning_rules_summary.csv",
                       "summary_md": tables / "warning_rules_summary.md"}, rules, descriptions)
    if unfinished:
        mark_provisional(tables, unfinished)
    if args.no_figures:
        print(f"scored {len(rules)} rules on {len(runs)} runs; wrote {tables}")
        return 0
    statistics = sorted({rule["statistic"] for rule in rules if rule.get("statistic")})
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for experiment in sorted({run.parent.parent.name for run in runs}):
        of_experiment = [run for run in runs if run.parent.parent.name == experiment]
        write_statistic_figures(*[[run / name for run in of_experiment] for name in INPUTS], experiment, statistics,
                                [figures / f"statistic_{statistic}_{experiment}.png" for statistic in statistics],
                                descriptions[experiment] + (" (provisional: runs still training)"
                                   if any(run in unfinished for run in of_experiment) else ""))
    print(f"scored {len(rules)} rules on {len(runs)} runs; wrote {tables} and {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
