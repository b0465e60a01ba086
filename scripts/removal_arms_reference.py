"""Trap removal with the arms that tell traps from the mean (issue 33), on the committed checkpoints
of the detector studies, written as a reference folder: per-run trap_removal.csv, the arms per run
and by outcome, and PROVENANCE.md.

    python scripts/removal_arms_reference.py docs/reference/detector_study docs/reference/detector_study_wd3e-3 \
        --out docs/reference/mechanism_removal_arms --config configs/detector_study.yaml --data-root ../shared/data \
        --draws 3 --layers-only [--reuse]

Each STUDY folder holds runs/{experiment}/wd{weight_decay}/seed{seed}/ with phases.csv and the
safetensors checkpoints at the peak, the decline start (collapsing runs) and the end. The removal is
antigrok.mechanism.removal (every arm, the workflow's rule ``trap_removal``) with the config's
``mechanism`` and ``traps`` settings, ``--draws`` and ``--layers-only`` over them (the all-layers
scope doubles the time). Nothing in the study folders is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mechanism_reference import provenance_table  # noqa: E402  (the reference scripts share it)

from antigrok.files import write_csv_atomically, write_text_atomically  # noqa: E402
from antigrok.mechanism.removal import RemovalSettings, removal_table  # noqa: E402
from antigrok.mechanism.tables import removal_arms_by_run, removal_arms_markdown, removal_arms_summary  # noqa: E402
from antigrok.runs import RUN_FOLDERS, RUN_KEYS, read_run_files  # noqa: E402
from antigrok.training.data import prepare_mnist  # noqa: E402
from antigrok.workflow_config import load_workflow_config  # noqa: E402


def study_runs(study: Path, pattern: str = RUN_FOLDERS) -> list[Path]:
    runs = sorted(path for path in study.glob(f"runs/{pattern}") if (path / "phases.csv").is_file()
                  and (path / "checkpoints").is_dir())
    if not runs:
        raise SystemExit(f"{study}: no runs/{{experiment}}/wd{{wd}}/seed{{seed}}/ with phases.csv and checkpoints/")
    return runs


def run_outcome(phases_csv: Path) -> bool:
    return bool(pd.read_csv(phases_csv, usecols=["collapses"])["collapses"].iloc[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="docs/reference/<study> folders")
    parser.add_argument("--out", type=Path, required=True, help="reference folder to write")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data-root", default=None, help="MNIST root (default: the config's data.root)")
    parser.add_argument("--draws", type=int, help="draws of each random arm (default: the config's removal_draws)")
    parser.add_argument("--layers-only", action="store_true", help="per layer only, not all layers at once")
    parser.add_argument("--runs", default=RUN_FOLDERS, help="which runs of each study (a glob under runs/)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a run's trap_removal.csv already under --out (written by this command with "
                             "the same code, e.g. by an interrupted or parallel invocation) instead of recomputing it")
    args = parser.parse_args(argv)
    started = time.time()
    settings = load_workflow_config([args.config])
    mechanism, data = settings["mechanism"], settings["data"]
    removal = RemovalSettings.from_config(mechanism, settings["traps"]["tracy_widom_scale"],
                                          draws=args.draws or mechanism["removal_draws"], all_layers=not args.layers_only)
    dataset = prepare_mnist(args.data_root or data["root"], data["train_size"], data["subset_seed"], download=False)
    written, outcomes, lines = [], [], []
    for study in args.studies:
        for run in study_runs(study, args.runs):
            relative = run.relative_to(study / "runs")
            out_run = args.out / "runs" / relative
            reused = args.reuse and (out_run / "trap_removal.csv").is_file()
            print(f"trap removal: {study.name}/{relative}{' (reused)' if reused else ''}", flush=True)
            if reused:
                table = pd.read_csv(out_run / "trap_removal.csv")
            else:
                table = removal_table(run / "checkpoints", pd.read_csv(run / "phases.csv"), dataset,
                                      int(run.name.removeprefix("seed")), removal, progress=False)
                write_csv_atomically(table, out_run / "trap_removal.csv")
            written.append(out_run / "trap_removal.csv")
            collapses = run_outcome(run / "phases.csv")
            outcomes.append({"experiment": run.parent.parent.name, "weight_decay": float(run.parent.name[2:]),
                             "seed": int(run.name[4:]), "collapses": collapses})
            lines.append(f"- `{study.name}/{relative}` ({'collapses' if collapses else 'does not collapse'}): "
                         f"checkpoints at steps {', '.join(map(str, sorted(table['step'].unique())))}"
                         f"{'; trap_removal.csv reused from an earlier invocation' if reused else ''}")
    by_run = removal_arms_by_run(read_run_files(written), pd.DataFrame(outcomes)[RUN_KEYS + ["collapses"]])
    summary = removal_arms_summary(by_run)
    tables = args.out / "tables"
    write_csv_atomically(by_run, tables / "removal_arms.csv")
    write_csv_atomically(summary, tables / "removal_arms_summary.csv")
    write_text_atomically(tables / "removal_arms_summary.md",
                          removal_arms_markdown(summary, title="Trap removal arms, collapsing against non-collapsing runs"))
    command = "python scripts/removal_arms_reference.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_text_atomically(args.out / "PROVENANCE.md", (
        "# Provenance\n\nWritten by `scripts/removal_arms_reference.py`; every other file here is its output, "
        f"unedited.\n\n{provenance_table(command, started, time.time())}\n\nSettings: {removal}\n\n"
        "Runs (their committed edge checkpoints):\n\n" + "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
