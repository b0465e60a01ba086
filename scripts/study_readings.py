"""Two readings of the detector studies from their committed per-run files (issue 33; post hoc):
which runs have centred traps, and the outcome as a continuum with each frozen rule's statistic
rank-correlated with it.

    python scripts/study_readings.py docs/reference/detector_study docs/reference/detector_study_wd3e-3 \
        --configfile configs/detector_study.yaml --out docs/reference/study_readings

Reads every runs/{experiment}/wd{weight_decay}/seed{seed}/ (htsr.csv, traps.csv, progress.csv,
phases.csv) of each STUDY folder and writes to --out/tables:

- centred_traps_runs.csv, centred_traps.csv: per run and layer whether it has a centred trap
  (antigrok.study.centred_trap_counts); per experiment, weight decay and layer the count with its exact
  95% interval.
- outcomes.csv: per run the decline from the peak at the last step, the largest decline, the slope
  over the last decade and whether the run is censored (antigrok.study.outcome_continuum).
- rule_statistics.csv: per run, each frozen rule's statistic at the peak and at twice the peak step.
- rule_correlations.csv: Spearman's rho of each statistic with the decline at the end, over all
  runs and within the runs of weight decay 0.003 (equal settings), with 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from antigrok.files import write_csv_atomically
from antigrok.runs import RUN_FOLDERS
from antigrok.study.centred_trap_counts import centred_trap_summary, run_centred_traps
from antigrok.study.outcome_continuum import correlation_table, run_decline, run_statistics
from antigrok.study.warning_rules import rules_from_config
from antigrok.workflow_config import load_workflow_config

INPUTS = ("htsr.csv", "traps.csv", "progress.csv", "phases.csv")
EQUAL_SETTINGS_WEIGHT_DECAY = 0.003  # the probe's six runs: one arm of equal settings


def study_runs(study: Path) -> list[Path]:
    runs = sorted((path for path in (study / "runs").glob(RUN_FOLDERS) if all((path / name).is_file() for name in INPUTS)),
                  key=lambda path: (path.parent.parent.name, path.parent.name, int(path.name.removeprefix("seed"))))
    if not runs:
        raise SystemExit(f"{study}: no runs/{{experiment}}/wd{{wd}}/seed{{seed}}/ with {', '.join(INPUTS)}")
    return runs


def run_keys(run: Path) -> dict:
    return {"experiment": run.parent.parent.name, "weight_decay": float(run.parent.name.removeprefix("wd")),
            "seed": int(run.name.removeprefix("seed"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", type=Path, nargs="+", help="docs/reference/<study> folders")
    parser.add_argument("--configfile", required=True, type=Path, nargs="+", help="the config with the frozen rules")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    rules = rules_from_config(load_workflow_config(args.configfile)["warning_rules"]["rules"])
    centred, outcomes, statistics = [], [], []
    for study in args.studies:
        for run in study_runs(study):
            htsr, traps, progress, phases = (pd.read_csv(run / name) for name in INPUTS)
            keys = {"study": study.name, **run_keys(run)}
            centred += [{**keys, **row} for row in run_centred_traps(traps, phases)]
            outcomes.append({**keys, **run_decline(phases)})
            statistics += [{**keys, **row} for row in run_statistics(rules, htsr, traps, progress, phases)]
    centred, outcomes, statistics = pd.DataFrame(centred), pd.DataFrame(outcomes), pd.DataFrame(statistics)
    scopes = {"all_runs": outcomes["study"].notna(),
              "wd0.003": outcomes["weight_decay"] == EQUAL_SETTINGS_WEIGHT_DECAY}
    tables = args.out / "tables"
    write_csv_atomically(centred, tables / "centred_traps_runs.csv")
    write_csv_atomically(centred_trap_summary(centred), tables / "centred_traps.csv")
    write_csv_atomically(outcomes, tables / "outcomes.csv")
    write_csv_atomically(statistics, tables / "rule_statistics.csv")
    write_csv_atomically(correlation_table(statistics, outcomes, scopes), tables / "rule_correlations.csv")
    print(f"{len(outcomes)} runs; wrote {tables}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
