"""The mechanism analyses (issue 26, antigrok.mechanism) of finished runs, outside the workflow,
written as a reference folder: per-run CSVs, the tables, the figures and PROVENANCE.md.

    python scripts/mechanism_reference.py RUNS_FOLDER OUT_FOLDER [--config config.yaml] [--data-root data]

RUNS_FOLDER holds ``{experiment}/wd{weight_decay}/seed{seed}/`` with ``checkpoints/step*.pt`` (a
workflow's results/runs) or ``checkpoints/step*.safetensors`` (a reference's committed edge
checkpoints), and train_log.csv (a run without it has not finished: skipped). phases.csv is used
where present, else segmented from train_log.csv with the config's ``phases`` thresholds. The
settings are the config's ``mechanism`` and ``traps`` sections, read as the workflow reads them
(config.yaml, the --config file over it, schema defaults filled in); the
MNIST subset is rebuilt from ``data``. Nothing is trained and nothing in RUNS_FOLDER is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.mechanism.confusion import confusion_table
from antigrok.mechanism.figures import mechanism_figure_from_files
from antigrok.mechanism.largest_weight import largest_weight_table
from antigrok.mechanism.prototypes import prototype_table
from antigrok.mechanism.removal import RemovalSettings, removal_table
from antigrok.mechanism.tables import write_mechanism_tables
from antigrok.runs import RUN_FOLDERS
from antigrok.study.phases import PhaseThresholds, segment_phases
from antigrok.training.data import prepare_mnist
from antigrok.workflow_config import describe_experiment, load_workflow_config

REPO = Path(__file__).resolve().parent.parent
# what settings.json records: the sections these analyses read
SETTINGS_SECTIONS = ("data", "experiments", "mechanism", "phases", "traps")
FIGURES = ["prototypes", "largest_weight", "trap_removal", "shuffled_confusion"]


def finished_runs(folder: Path) -> list[Path]:
    runs = sorted(path for path in folder.glob(RUN_FOLDERS) if (path / "train_log.csv").is_file()
                  and (path / "checkpoints").is_dir())
    if not runs:
        raise SystemExit(f"{folder}: no finished run ({{experiment}}/wd{{wd}}/seed{{seed}}/ with train_log.csv "
                         "and checkpoints/)")
    return runs


def analyse_run(run: Path, out_run: Path, dataset: dict, settings: dict) -> dict:
    """The four per-run CSVs (and phases.csv) of one run into out_run; returns what it used."""
    mechanism, scale = settings["mechanism"], settings["traps"]["tracy_widom_scale"]
    seed = int(run.name.removeprefix("seed"))
    if (run / "phases.csv").is_file():
        phases = pd.read_csv(run / "phases.csv")
        phases_from = "phases.csv"
    else:
        phases = segment_phases(pd.read_csv(run / "train_log.csv"), PhaseThresholds(**settings["phases"]))
        phases_from = "train_log.csv (segmented here)"
    out_run.mkdir(parents=True, exist_ok=True)
    write_csv_atomically(phases, out_run / "phases.csv")
    shutil.copyfile(run / "train_log.csv", out_run / "train_log.csv")  # unedited: the phases' source
    checkpoints = run / "checkpoints"
    removal = RemovalSettings.from_config(mechanism, scale)
    tables = {
        "prototypes": prototype_table(checkpoints, phases, dataset, mechanism["edges"],
                                      mechanism["prototype_components"], mechanism["prototype_rows"]),
        "largest_weight": largest_weight_table(checkpoints, seed, scale),
        "trap_removal": removal_table(checkpoints, phases, dataset, seed, removal),
        "shuffled_confusion": confusion_table(checkpoints, phases, dataset, mechanism["edges"],
                                              mechanism["pixel_permutation_seed"]),
    }
    for name, table in tables.items():
        write_csv_atomically(table, out_run / f"{name}.csv")
    return {"run": str(run), "phases_from": phases_from,
            "largest_weight_checkpoints": int(tables["largest_weight"]["step"].nunique()),
            "edge_checkpoints": sorted(set(tables["trap_removal"]["step"]) | set(tables["prototypes"]["step"]))}


def describe(run: Path) -> str:
    return f"{run.parent.parent.name}/{run.parent.name}/{run.name}"


def provenance_table(command: str, started: float, finished: float) -> str:
    """The command, commit, machine, start, wall time and versions as a markdown table."""
    import os

    import matplotlib
    import numpy
    import scipy
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src", "scripts", "workflow"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    rows = [
        ("command", f"`{command}`"),
        ("commit", commit + (" (with uncommitted changes in src/scripts/workflow)" if dirty else "")),
        ("machine", f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"),
        ("started (UTC)", datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%d %H:%M")),
        ("wall time", f"{(finished - started) / 60:.1f} min"),
        ("Python", platform.python_version()),
        ("packages", f"torch {torch.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
                     f"pandas {pd.__version__}, matplotlib {matplotlib.__version__}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def provenance(command: str, started: float, finished: float, used: list[dict], descriptions: dict) -> str:
    runs = "\n".join(f"- `{describe(Path(u['run']))}`: phases from {u['phases_from']}; largest_weight over "
                     f"{u['largest_weight_checkpoints']} checkpoints; edge checkpoints at steps "
                     f"{', '.join(map(str, u['edge_checkpoints']))}" for u in used)
    experiments = "\n".join(f"- {text}" for text in descriptions.values())
    return (f"# Provenance\n\nWritten by `scripts/mechanism_reference.py`; every other file here is its output, "
            f"unedited.\n\n{provenance_table(command, started, finished)}\n\nRuns analysed (read from the run "
            f"folder given in the command):\n\n{runs}\n\nExperiments (from the config given):\n\n{experiments}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="folder of {experiment}/wd{wd}/seed{seed}/ run folders")
    parser.add_argument("out", type=Path, help="reference folder to write")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--data-root", default=None, help="MNIST root (default: the config's data.root)")
    args = parser.parse_args(argv)
    started = time.time()
    # the config as the workflow reads it: config.yaml, then --config over it (as --configfile)
    settings = load_workflow_config([args.config])
    data = settings["data"]
    dataset = prepare_mnist(args.data_root or data["root"], data["train_size"], data["subset_seed"], download=False)
    used, out_runs = [], []
    for run in finished_runs(args.runs):
        relative = run.relative_to(args.runs)
        print(f"analysing {relative}", flush=True)
        used.append(analyse_run(run, args.out / "runs" / relative, dataset, settings))
        out_runs.append(args.out / "runs" / relative)
    files = {name: [str(run / f"{name}.csv") for run in out_runs] for name in FIGURES + ["phases"]}
    experiments = sorted({run.parent.parent.name for run in out_runs})
    descriptions = {name: describe_experiment(name, settings["experiments"]) for name in experiments}
    tables = args.out / "tables"
    write_mechanism_tables(files["prototypes"], files["largest_weight"], files["trap_removal"],
                           files["shuffled_confusion"], files["phases"],
                           {"prototypes": tables / "mechanism_prototypes.csv", "bound": tables / "mechanism_bound.csv",
                            "removal": tables / "mechanism_removal.csv",
                            "confusion": tables / "mechanism_confusion.csv", "html": tables / "mechanism.html"},
                           descriptions)
    for experiment, weight_decay in sorted({(run.parent.parent.name, run.parent.name) for run in out_runs}):
        group = [run for run in out_runs if (run.parent.parent.name, run.parent.name) == (experiment, weight_decay)]
        for figure in FIGURES:
            mechanism_figure_from_files(
                figure=figure, runs=[str(run / f"{figure}.csv") for run in group],
                phases=[str(run / "phases.csv") for run in group],
                checkpoints=[str(args.runs / run.relative_to(args.out / "runs") / "checkpoints") for run in group],
                dataset=dataset, edges=settings["mechanism"]["edges"],
                components=settings["mechanism"]["prototype_components"],
                description=f"{descriptions[experiment]}, weight decay {weight_decay.removeprefix('wd')}",
                outputs=[args.out / "figures" / f"{figure}_{experiment}_{weight_decay}.{ext}" for ext in ("png", "pdf")])
    command = "python scripts/mechanism_reference.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_text_atomically(args.out / "PROVENANCE.md", provenance(command, started, time.time(), used, descriptions))
    (args.out / "settings.json").write_text(json.dumps({key: settings[key] for key in SETTINGS_SECTIONS}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
