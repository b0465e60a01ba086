"""Train and analyse a config's runs one at a time, keeping each run's results as soon as it finishes:
the transformer search of issue 36 (configs/modadd_search.yaml), run on a core the long paper_cpu runs
leave free, across working periods that end when their time is up.

    python scripts/search_queue.py --configfile configs/modadd_search.yaml --out docs/reference/modadd_search \\
        --commit --stop-by 2026-12-08T02:20Z [--after-pid PID] [--cores 1]

A run is done when OUT/runs/<experiment>/wd<weight_decay>/seed<seed>/ holds its train_log.csv, or, for a
run whose training diverged (NonFiniteLossError: a breakdown by the search's definitions), its failed
job's log as train_failed.log. Each pass takes the first run not done, in the config's order, and runs
the workflow for that run alone (`snakemake --cores N` on its per-run files: training, spectra, traps,
progress measures, phases). It copies them unedited into OUT with the training job's Snakemake benchmark,
adds a row to OUT/queue_runs.csv (machine, CPU, commit, start, end, training CPU), and, once every seed of
an (experiment, weight decay) is done, that pair's figures. With --commit each finished run is one
commit of OUT's new files alone.

A run is not started when its estimate (--minutes-per-run) would carry it past --stop-by: a run cut off
by the end of a working period is lost with the machine. --after-pid waits for a process to end first
(e.g. a paper_cpu training job, whose core the queue then takes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd

from antigrok.files import write_csv_atomically
from antigrok.runs import RESULTS, RUN_DIR, TRAIN_LOG
from antigrok.training.segments import cpu_model, git_commit
from antigrok.workflow_config import format_weight_decay, load_workflow_config
from export_reference import RUN_FILES  # scripts/ is on the path when a script of it runs
from long_run import git_commit_paths

log = logging.getLogger("antigrok.search_queue")

# Per (experiment, weight decay); the detector figure is left out: it reads a table of every run.
PAIR_FIGURES = ("accuracy", "alpha", "progress", "esd", "traps")
FAILED_LOG = "train_failed.log"
QUEUE_RUNS = "queue_runs.csv"
DIVERGED = "NonFiniteLossError"


class Run(NamedTuple):
    experiment: str
    weight_decay: str  # as in the run's folder name: format_weight_decay's
    seed: int

    @property
    def folder(self) -> str:
        return RUN_DIR.format(experiment=self.experiment, weight_decay=self.weight_decay, seed=self.seed)

    @property
    def name(self) -> str:
        return f"{self.experiment}/wd{self.weight_decay}/seed{self.seed}"


def queue(config: dict) -> list[Run]:
    """Every run of the config, in its order: experiments, then weight decays, then seeds."""
    return [Run(name, format_weight_decay(weight_decay), int(seed))
            for name, experiment in config["experiments"].items()
            for weight_decay in experiment["weight_decays"]
            for seed in experiment["seeds"]]


def kept_dir(out: Path, run: Run) -> Path:
    """Where OUT keeps the run: runs/<experiment>/wd<wd>/seed<seed>, the results layout below results/."""
    return out / Path(run.folder).relative_to(RESULTS)


def is_done(out: Path, run: Run) -> bool:
    kept = kept_dir(out, run)
    return (kept / TRAIN_LOG).exists() or (kept / FAILED_LOG).exists()


def next_run(runs: list[Run], out: Path) -> Run | None:
    return next((run for run in runs if not is_done(out, run)), None)


def run_targets(run: Run) -> list[str]:
    return [f"{run.folder}/{name}" for name in RUN_FILES]


def pair_figures(experiment: str, weight_decay: str) -> list[str]:
    return [f"results/figures/{figure}_{experiment}_wd{weight_decay}.png" for figure in PAIR_FIGURES]


def pair_finished(runs: list[Run], out: Path, run: Run) -> bool:
    """Every seed of the run's (experiment, weight decay) is done and none of them diverged (a diverged
    run has no results to draw)."""
    pair = [other for other in runs if (other.experiment, other.weight_decay) == (run.experiment, run.weight_decay)]
    return all((kept_dir(out, other) / TRAIN_LOG).exists() for other in pair)


def fits_before(stop_by: dt.datetime | None, minutes: float, now: dt.datetime) -> bool:
    return stop_by is None or now + dt.timedelta(minutes=minutes) <= stop_by


def train_job_log(run: Run) -> Path:
    return Path(f"logs/train/{run.experiment}/wd{run.weight_decay}/seed{run.seed}.log")


def train_benchmark(run: Run) -> Path:
    return train_job_log(run).with_suffix(".benchmark.tsv")


def diverged(job_log: Path) -> bool:
    return job_log.exists() and DIVERGED in job_log.read_text(errors="replace")


def keep_run(run: Run, workdir: Path, out: Path) -> list[Path]:
    """Copy the run's result files and its training benchmark into OUT, unedited; the copies."""
    kept = kept_dir(out, run)
    kept.mkdir(parents=True, exist_ok=True)
    sources = [workdir / target for target in run_targets(run)] + [workdir / train_benchmark(run)]
    missing = [str(source) for source in sources if not source.exists()]
    if missing:
        raise FileNotFoundError(f"{run.name}: the workflow finished without {missing}; see its Snakemake log")
    copies = [kept / source.name for source in sources]
    for source, copy in zip(sources, copies):
        shutil.copy2(source, copy)
    return copies


def keep_figures(run: Run, workdir: Path, out: Path) -> list[Path]:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    copies = []
    for figure in pair_figures(run.experiment, run.weight_decay):
        copies.append(out / "figures" / Path(figure).name)
        shutil.copy2(workdir / figure, copies[-1])
    return copies


def training_cpu_s(benchmark: Path) -> float:
    """The train job's CPU seconds (Snakemake's benchmark column cpu_time); NaN without a benchmark."""
    if not benchmark.exists():
        return float("nan")
    return float(pd.read_csv(benchmark, sep="\t")["cpu_time"].iloc[0])


def record_run(out: Path, run: Run, status: str, started: dt.datetime, ended: dt.datetime, cpu_s: float,
               command: str) -> Path:
    """Append the run's row to OUT/queue_runs.csv (one row per run the queue finished)."""
    row = {"experiment": run.experiment, "weight_decay": run.weight_decay, "seed": run.seed, "status": status,
           "started_utc": started.isoformat(timespec="seconds"), "ended_utc": ended.isoformat(timespec="seconds"),
           "wall_s": round((ended - started).total_seconds(), 1), "training_cpu_s": cpu_s,
           "machine": platform.node(), "cpu": cpu_model(), "commit": git_commit(), "command": command}
    path = out / QUEUE_RUNS
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    write_csv_atomically(pd.concat([table, pd.DataFrame([row])], ignore_index=True), path)
    return path


def snakemake_command(configfiles: list[str], targets: list[str], cores: int) -> list[str]:
    return [sys.executable, "-m", "snakemake", *targets, "--configfile", *configfiles, "--cores", str(cores),
            "--rerun-incomplete"]


def run_snakemake(command: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as output:
        return subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode


def commit(paths: list[Path], message: str, tries: int = 5) -> None:
    """git_commit_paths, tried again while another git command (the long runs' hourly commit) holds the index."""
    for attempt in range(tries):
        try:
            git_commit_paths(paths, message)
            return
        except subprocess.CalledProcessError:
            if attempt == tries - 1:
                raise
            time.sleep(10)


def wait_for_pid(pid: int, poll_s: float = 30) -> None:
    log.info("waiting for process %d to end", pid)
    while Path(f"/proc/{pid}").exists():
        time.sleep(poll_s)


def process_queue(runs: list[Run], out: Path, workdir: Path, configfiles: list[str], cores: int,
                  stop_by: dt.datetime | None, minutes_per_run: float, do_commit: bool,
                  runner: Callable[[list[str], Path], int] = run_snakemake,
                  now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> list[Run]:
    """Run the queue until every run is done or the next would not end before ``stop_by``; the runs done."""
    finished = []
    while (run := next_run(runs, out)) is not None:
        if not fits_before(stop_by, minutes_per_run, now()):
            log.info("%s not started: %g min from now is past --stop-by %s", run.name, minutes_per_run, stop_by)
            break
        command = snakemake_command(configfiles, run_targets(run), cores)
        log_path = Path("logs/search_queue") / f"{run.experiment}_wd{run.weight_decay}_seed{run.seed}.log"
        log.info("%s: started (%s)", run.name, log_path)
        started = now()
        returncode = runner(command, log_path)
        if returncode != 0:
            if not diverged(workdir / train_job_log(run)):
                raise SystemExit(f"{run.name}: snakemake failed ({returncode}); see {log_path} and the job logs "
                                 "under logs/")
            kept_dir(out, run).mkdir(parents=True, exist_ok=True)
            copies = [kept_dir(out, run) / FAILED_LOG]
            shutil.copy2(workdir / train_job_log(run), copies[0])
            status = "diverged"
        else:
            copies = keep_run(run, workdir, out)
            status = "done"
            if pair_finished(runs, out, run):
                figures = pair_figures(run.experiment, run.weight_decay)
                if runner(snakemake_command(configfiles, figures, cores), log_path) != 0:
                    raise SystemExit(f"{run.name}: the figures failed; see {log_path}")
                copies += keep_figures(run, workdir, out)
        ended = now()
        cpu_s = training_cpu_s(workdir / train_benchmark(run))
        copies.append(record_run(out, run, status, started, ended, cpu_s, " ".join(command[1:])))
        log.info("%s: %s in %.0f min, training %.0f s CPU", run.name, status, (ended - started).total_seconds() / 60,
                 cpu_s)
        if do_commit:
            commit(copies, f"{out}: {run.name} {status} (scripts/search_queue.py)")
        finished.append(run)
    return finished


def parse_utc(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where each run's results are kept")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--stop-by", type=parse_utc, help="start no run that would end later (UTC unless a zone is given)")
    parser.add_argument("--minutes-per-run", type=float, default=100.0,
                        help="the estimate --stop-by is checked with: training and the run's analyses")
    parser.add_argument("--after-pid", type=int, help="wait for this process to end before the first run")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's files under OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs = queue(load_workflow_config(args.configfile))
    if args.after_pid:
        wait_for_pid(args.after_pid)
    finished = process_queue(runs, args.out, Path(os.getcwd()), args.configfile, args.cores, args.stop_by,
                             args.minutes_per_run, args.commit)
    left = [run.name for run in runs if not is_done(args.out, run)]
    log.info("%d runs finished now; %d left: %s", len(finished), len(left), ", ".join(left) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
