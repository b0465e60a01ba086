"""Keep runs longer than a job going across jobs and machines (docs/long-runs.md).

    python scripts/long_run.py restore    --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu
    snakemake --cores 2 --configfile configs/paper_cpu.yaml --until train      (trains; continues where it stopped)
    python scripts/long_run.py follow     --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu --commit
    python scripts/long_run.py save-state --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu --commit
    python scripts/long_run.py status     --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu
    python scripts/long_run.py recover    --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu --commit
    python scripts/long_run.py check-replay --step 1778279 --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu
    python scripts/long_run.py report     --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu --report-dir REPORT_DIR

restore: every unfinished run whose committed state is newer than the work tree's continues from
it. analyse: each checkpoint that appeared since the last call is analysed (spectra, raw and
centred traps, progress measures) into OUT's per-run files, with the train log, the training
segments and the phase-edge checkpoints. follow: analyse every --analyse-every seconds until every
run has finished, committing OUT's rows every --commit-every seconds with --commit. save-state:
copy each run's resume state into OUT (commit it once per working period: a few MB each).
recover: a phase edge recognised after the machine that wrote its checkpoint was lost leaves that
checkpoint missing; each is trained again from the newest committed state before it (git history),
checked against the original's analysed rows (OUT's replayed_checkpoints.csv) and kept in OUT.
check-replay: the same replay of checkpoint --step, compared with the analysed rows and, where this
machine still has the original, with its weights bit for bit; prints the comparison, keeps nothing.
report: the paper's figures (Figs. 1, 3, 4/6, 5/7) and tables (1, 2, 4, and the comparison with the
paper) from OUT's rows alone, into --report-dir with a REPORT.md; "provisional: wd 0 at step N of
1e7" on every output while a run trains (antigrok.report.long_run_report). With --rescaled FOLDER CONFIG
(repeatable) also the long runs beside the time-rescaled runs of FOLDER at equal lr x step:

    python scripts/long_run.py report --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu \
        --report-dir REPORT_DIR --rescaled docs/reference/cpu configs/cpu.yaml \
        --rescaled docs/reference/detector_study configs/detector_study.yaml
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from antigrok.report.long_run_report import write_report
from antigrok.study.checkpoint_replay import ReplaySettings
from antigrok.study.long_runs import (REPLAYED_CHECKPOINTS, AnalysisSettings, RecentSpeed, analyse, check_replay,
                                      long_runs, recover_edge_checkpoints, restore, save_state, status_line)
from antigrok.training.data import load_dataset
from antigrok.workflow_config import load_workflow_config

log = logging.getLogger("antigrok.long_run")


def git_commit_paths(paths: list[Path], message: str) -> bool:
    """Commit ``paths`` alone (other staged changes stay staged); False when nothing changed."""
    subprocess.run(["git", "add", "--", *map(str, paths)], check=True)
    changed = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *map(str, paths)]).returncode != 0
    if changed:
        subprocess.run(["git", "commit", "-q", "-m", message, "--", *map(str, paths)], check=True)
    return changed


def analyse_all(runs, config, results: Path) -> dict[str, int]:
    settings = AnalysisSettings.from_config(config)
    datasets = {}
    counts = {}
    for run in runs:
        if not run.run_dir.exists():
            continue
        experiment = run.spec.experiment
        dataset_path = results / "data" / f"{experiment}.pt"
        if not dataset_path.exists():
            # a fresh machine: training was just started and its data rule has not written the subset yet
            log.info("%s: waiting for %s (the workflow's data rule) before analysing", run.name, dataset_path)
            continue
        if experiment not in datasets:
            datasets[experiment] = load_dataset(dataset_path)
        counts[run.name] = analyse(run, datasets[experiment], settings)
    return counts


def dataset_of(run, args) -> dict:
    path = args.results / "data" / f"{run.spec.experiment}.pt"
    if not path.exists():
        sys.exit(f"long_run.py {args.action}: {path} is missing; run the workflow's data rule first "
                 f"(snakemake --configfile ... {path})")
    return load_dataset(path)


def check_replays(runs, config, args) -> None:
    settings = AnalysisSettings.from_config(config)
    for run in runs:
        table, identical = check_replay(run, dataset_of(run, args), settings, ReplaySettings.from_config(config), args.step)
        print(f"{run.name}: checkpoint {args.step} trained again from the committed state at step "
              f"{table['from_state_step'].iloc[0]} ({table['from_state_commit'].iloc[0][:7]}) on {table['cpu'].iloc[0]} "
              f"in {table['wall_s'].iloc[0]:.0f} s; weights "
              + {True: "bit for bit equal to this machine's original",
                 False: "NOT equal to this machine's original",
                 None: "not compared (this machine does not have the original)"}[identical])
        print(table[["quantity", "layer", "original", "replayed", "difference"]].to_string(index=False))


def recover_all(runs, config, args) -> None:
    settings = AnalysisSettings.from_config(config)
    recovered = []
    for run in runs:
        table = recover_edge_checkpoints(run, dataset_of(run, args), settings, ReplaySettings.from_config(config))
        if table is None:
            print(f"{run.name}: no edge checkpoint missing")
        else:
            recovered.append(f"{run.name}: steps {', '.join(map(str, sorted(set(table['step']))))}")
            print(f"{run.name}: trained again and kept {recovered[-1].split(': ', 1)[1]} "
                  f"(agreement with the originals: {run.reference_dir / REPLAYED_CHECKPOINTS})")
    if args.commit and recovered:
        git_commit_paths([args.out / "runs"], f"{args.out}: edge checkpoints trained again from committed states\n\n"
                         + "\n".join(recovered))


def rows_message(out: Path, runs) -> str:
    lines = [status_line(run) for run in runs]
    return f"{out}: analysed rows of the long runs\n\n" + "\n".join(lines)


def follow(runs, config, args) -> None:
    last_commit = time.monotonic()
    speed = RecentSpeed()
    while True:
        counts = analyse_all(runs, config, args.results)
        for run in runs:
            log.info("%s (%d new checkpoints analysed)", status_line(run, speed), counts.get(run.name, 0))
        finished = all(run.finished for run in runs)
        if args.commit and (finished or time.monotonic() - last_commit >= args.commit_every):
            try:
                if git_commit_paths([args.out / "runs"], rows_message(args.out, runs)):
                    log.info("committed the analysed rows of %s", args.out)
                last_commit = time.monotonic()
            except subprocess.CalledProcessError as error:  # e.g. another git command held the index
                log.warning("could not commit the analysed rows (%s); trying again after the next analysis", error)
        if finished:
            log.info("every run has finished and is analysed")
            return
        time.sleep(args.analyse_every)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["restore", "analyse", "follow", "save-state", "status", "report", "recover",
                                           "check-replay"])
    parser.add_argument("--configfile", nargs="+", required=True, type=Path, help="the config(s) the runs were started with")
    parser.add_argument("--out", required=True, type=Path, help="the reference folder, e.g. docs/reference/paper_cpu")
    parser.add_argument("--results", type=Path, default=Path("results"), help="the workflow's results folder")
    parser.add_argument("--commit", action="store_true", help="git-commit what changed under OUT (follow, save-state, recover)")
    parser.add_argument("--analyse-every", type=float, default=300.0, help="follow: seconds between analyses")
    parser.add_argument("--commit-every", type=float, default=3000.0, help="follow: seconds between commits")
    parser.add_argument("--report-dir", type=Path, help="report: the folder the figures, tables and REPORT.md go to")
    parser.add_argument("--rescaled", nargs=2, action="append", default=[], metavar=("FOLDER", "CONFIG"),
                        help="report: a reference folder of time-rescaled runs and the config that made them, to "
                             "compare at equal lr x step (repeatable)")
    parser.add_argument("--step", type=int, help="check-replay: the checkpoint step to train again")
    parser.add_argument("--run", help="check-replay: only this run, e.g. mnist_mlp/wd0.0/seed0")
    args = parser.parse_args(argv)
    if args.action == "check-replay" and args.step is None:
        parser.error("check-replay needs --step (a checkpoint step of the runs)")
    if args.action == "report" and args.report_dir is None:
        parser.error("report needs --report-dir (the folder its figures, tables and REPORT.md go to)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    config = load_workflow_config(args.configfile)
    runs = long_runs(config, args.results, args.out)
    if args.action == "restore":
        for run in runs:
            print(restore(run))
    elif args.action == "analyse":
        counts = analyse_all(runs, config, args.results)
        for run in runs:
            print(f"{status_line(run)} ({counts.get(run.name, 0)} new checkpoints analysed)")
    elif args.action == "follow":
        follow(runs, config, args)
    elif args.action == "recover":
        recover_all(runs, config, args)
    elif args.action == "check-replay":
        chosen = [run for run in runs if args.run in (None, run.name)]
        if not chosen:
            parser.error(f"--run {args.run}: no such run in the config ({', '.join(run.name for run in runs)})")
        check_replays(chosen, config, args)
    elif args.action == "report":
        command = "python scripts/long_run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        try:
            rescaled = [(Path(folder), load_workflow_config([Path(path)])["experiments"])
                        for folder, path in args.rescaled]
            print(write_report(runs, config, args.report_dir, command, reference=args.out, rescaled=rescaled))
        except (FileNotFoundError, ValueError) as error:  # a missing or empty reference file: say which
            print(f"long_run.py report: {error}", file=sys.stderr)
            return 1
        print(f"wrote {args.report_dir / 'REPORT.md'}")
    elif args.action == "save-state":
        saved = {run.name: save_state(run) for run in runs}
        for name, step in saved.items():
            print(f"{name}: " + ("no state (finished or not started)" if step is None else f"state at step {step} saved"))
        if args.commit:
            message = f"{args.out}: resume states of the long runs\n\n" + "\n".join(
                f"{name}: step {step}" for name, step in saved.items() if step is not None)
            git_commit_paths([args.out / "runs"], message)
    else:
        for run in runs:
            print(status_line(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
