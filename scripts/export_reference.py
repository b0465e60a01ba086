"""Copy a finished workflow run's small results into docs/reference/<name>/, with its provenance.

    python scripts/export_reference.py --configfile configs/cpu.yaml --out docs/reference/cpu \
        --command "snakemake --cores 2 --configfile configs/cpu.yaml" --started EPOCH --finished EPOCH

Copies, unedited: results/tables/*.csv and *.md, every run's train_log.csv, htsr.csv, traps.csv,
progress.csv and phases.csv (in the results layout, runs/{experiment}/wd{weight_decay}/seed{seed}/),
the figures as PNG, and each job's Snakemake benchmark (CPU seconds, memory). No checkpoints and no
spectra.npz: the reference stays small. Writes PROVENANCE.md: the command, the commit of the
workflow that ran it, the machine, the wall time and the package versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path


from antigrok.runs import HTSR_CSV, PHASES_CSV, PROGRESS_CSV, RESULTS, RUN_DIR, TRAIN_LOG, TRAPS_CSV
from antigrok.training.segments import cpu_model, git_commit
from antigrok.workflow_config import format_weight_decay, load_workflow_config

RUN_FILES = (TRAIN_LOG, HTSR_CSV, TRAPS_CSV, PROGRESS_CSV, PHASES_CSV)
PACKAGES = ("torch", "numpy", "scipy", "pandas", "matplotlib", "weightwatcher", "snakemake")


def run_dirs(config: dict, workdir: Path):
    for name, experiment in config["experiments"].items():
        for weight_decay in experiment["weight_decays"]:
            for seed in experiment["seeds"]:
                yield workdir / RUN_DIR.format(experiment=name, weight_decay=format_weight_decay(weight_decay), seed=seed)


def copy_results(config: dict, workdir: Path, out: Path) -> list[Path]:
    """Copy the small result files; a missing file is an error (the run is not complete)."""
    results = workdir / RESULTS
    copied = []
    sources = [path for run in run_dirs(config, workdir) for path in (run / name for name in RUN_FILES)]
    sources += sorted((results / "tables").glob("*.csv")) + sorted((results / "tables").glob("*.md"))
    sources += sorted((results / "figures").glob("*.png"))
    sources += sorted((workdir / "logs").rglob("*.benchmark.tsv"))
    missing = [path for path in sources if not path.exists()]
    if missing:
        sys.exit(f"export_reference: {len(missing)} result files are missing (first: {missing[0]}); "
                 "finish the workflow run first")
    for source in sources:
        base = workdir / "logs" if source.is_relative_to(workdir / "logs") else results
        target = out / ("benchmarks" if base.name == "logs" else "") / source.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        copied.append(target)
    return copied


def provenance(args, config: dict, workdir: Path) -> str:
    started = dt.datetime.fromtimestamp(args.started, dt.timezone.utc)
    finished = dt.datetime.fromtimestamp(args.finished, dt.timezone.utc)
    minutes = (args.finished - args.started) / 60
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    experiments = "\n".join(
        f"- `{name}`: lr {e['optimizer']['lr']:g}, {e['steps']} steps, weight decays {e['weight_decays']}, "
        f"seeds {e['seeds']}, batch {e['batch_size']}, {e['dtype']}"
        for name, e in config["experiments"].items()
    )
    return f"""# Provenance

Written by `scripts/export_reference.py`; every other file here was copied unedited from the run's
`results/` (tables, per-run CSVs, figures) and `logs/` (`benchmarks/`: Snakemake's per-job time and memory).

| | |
|---|---|
| command | `{args.command}` |
| commit of the workflow | {git_commit(workdir)} |
| machine | {cpu_model()}, {_cores()} cores, {platform.system()} {platform.release()} |
| started (UTC) | {started:%Y-%m-%d %H:%M} |
| finished (UTC) | {finished:%Y-%m-%d %H:%M} |
| wall time | {minutes:.0f} min |
| Python | {platform.python_version()} |
| packages | {", ".join(versions)} |
{f"| note | {args.note} |" if args.note else ""}

Experiments (`{args.configfile}`), {args.about}:

{experiments}
"""


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", required=True, help="the config the run used (its experiments are copied)")
    parser.add_argument("--out", required=True, type=Path, help="docs/reference/<name>")
    parser.add_argument("--command", required=True, help="the exact command that made the results")
    parser.add_argument("--started", required=True, type=float, help="epoch seconds when the command started")
    parser.add_argument("--finished", required=True, type=float, help="epoch seconds when it finished")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where the run's results/ and logs/ are")
    parser.add_argument("--note", default="", help="one line of context for the provenance table")
    parser.add_argument("--about", default="time-rescaled runs of the paper's MNIST MLP (Table 3), not its 1e7-step\n"
                        "experiment at lr 5e-4", help="what the experiments are, after 'Experiments (CONFIG), '")
    args = parser.parse_args(argv)
    config = load_workflow_config([Path(args.workdir, args.configfile)])
    copied = copy_results(config, args.workdir, args.out)
    (args.out / "PROVENANCE.md").write_text(provenance(args, config, args.workdir))
    print(f"copied {len(copied)} files to {args.out}; wrote {args.out / 'PROVENANCE.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
