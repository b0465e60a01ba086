"""Commit-ready copy of one finished run of a multi-session study, with its phase-edge checkpoints.

    python scripts/export_study_run.py results/runs/mnist_lr2e-3/wd0.0/seed0 --out docs/reference/detector_study \
        --command "snakemake --cores 2 --configfile configs/detector_study.yaml"

Copies the run's train_log.csv, htsr.csv, traps.csv, progress.csv and phases.csv unedited to
OUT/runs/{experiment}/wd{weight_decay}/seed{seed}/, writes the checkpoints nearest (in log step) to
the test-accuracy peak, the start of the decline and the end of training as
checkpoints/step{step:09d}.safetensors (the state_dict's float64 tensors, loadable without
unpickling) with checkpoints.csv naming which edge each is, and adds the run's line to OUT/runs.csv:
command, commit, machine, the training job's CPU and wall time (Snakemake's benchmark), package
versions. A run is never exported twice unless --replace is given, so a finished run is never
trained or analysed again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_reference import PACKAGES, RUN_FILES  # noqa: E402

from antigrok.files import write_csv_atomically, write_safetensors  # noqa: E402
from antigrok.formats.loading import read_checkpoint  # noqa: E402
from antigrok.runs import CHECKPOINTS, checkpoint_files, parse_run_dir, checkpoint_path, nearest_checkpoint_step  # noqa: E402
from antigrok.training.segments import cpu_model, git_commit  # noqa: E402

EDGES = {"peak": "peak_step", "decline_start": "anti_grokking_start_step", "end": None}


def edge_checkpoints(phases: pd.DataFrame, steps) -> list[tuple[str, int | None, int]]:
    """(edge, edge step, checkpoint step) for the peak, decline start (if any) and the end."""
    first = phases.iloc[0]
    chosen = []
    for edge, column in EDGES.items():
        edge_step = int(phases["step"].max()) if column is None else first[column]
        if edge_step is None or pd.isna(edge_step):
            continue
        chosen.append((edge, int(edge_step), nearest_checkpoint_step(steps, int(edge_step))))
    return chosen


def benchmark_times(workdir: Path, experiment: str, weight_decay: str, seed: int) -> tuple[float, float]:
    path = workdir / "logs" / "train" / experiment / f"wd{weight_decay}" / f"seed{seed}.benchmark.tsv"
    if not path.exists():
        return math.nan, math.nan
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return float(row["s"]), float(row.get("cpu_time", math.nan))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="results/runs/{experiment}/wd{weight_decay}/seed{seed}")
    parser.add_argument("--out", required=True, type=Path, help="docs/reference/<study>")
    parser.add_argument("--command", required=True, help="the command that made the run's files")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where logs/ is")
    parser.add_argument("--replace", action="store_true", help="export again a run that is already exported")
    args = parser.parse_args(argv)

    experiment, weight_decay, seed = parse_run_dir(args.run)
    weight_decay_text = args.run.parent.name.removeprefix("wd")
    target = args.out / "runs" / experiment / f"wd{weight_decay_text}" / f"seed{seed}"
    if target.exists() and not args.replace:
        sys.exit(f"export_study_run: {target} exists (this run is exported already); --replace to overwrite")
    missing = [name for name in RUN_FILES if not (args.run / name).exists()]
    if missing:
        sys.exit(f"export_study_run: {args.run} lacks {missing}: finish the run's analysis first")
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copy2(args.run / name, target / name)

    phases = pd.read_csv(args.run / "phases.csv")
    steps = checkpoint_files(args.run / CHECKPOINTS, (".pt",))
    index = []
    for edge, edge_step, step in edge_checkpoints(phases, steps):
        checkpoint = read_checkpoint(steps[step])
        file = checkpoint_path(target / CHECKPOINTS, step, ".safetensors")
        file.parent.mkdir(exist_ok=True)
        write_safetensors(checkpoint["model"], file)
        index.append({"edge": edge, "edge_step": edge_step, "checkpoint_step": step, "file": file.name})
    write_csv_atomically(pd.DataFrame(index), target / "checkpoints.csv")

    wall, cpu = benchmark_times(args.workdir, experiment, weight_decay_text, seed)
    versions = "; ".join(f"{package} {metadata.version(package)}" for package in PACKAGES)
    line = pd.DataFrame([{
        "experiment": experiment, "weight_decay": weight_decay, "seed": seed,
        "steps": int(phases["step"].max()), "exported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "train_wall_s": wall, "train_cpu_s": cpu, "command": args.command, "commit": git_commit(args.workdir),
        "machine": f"{cpu_model()}, {platform.system()} {platform.release()}", "python": platform.python_version(),
        "packages": versions,
    }])
    runs_csv = args.out / "runs.csv"
    runs = pd.read_csv(runs_csv) if runs_csv.exists() else line.iloc[:0]
    same = (runs["experiment"] == experiment) & (runs["weight_decay"] == weight_decay) & (runs["seed"] == seed)
    runs = pd.concat([runs[~same], line], ignore_index=True).sort_values(["experiment", "weight_decay", "seed"])
    write_csv_atomically(runs, runs_csv)
    print(f"exported {args.run} to {target}: {len(RUN_FILES)} CSVs, checkpoints "
          + ", ".join(f"{row['edge']} {row['checkpoint_step']}" for row in index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
