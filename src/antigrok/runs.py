"""The layout of a run folder, in one place: where a run (experiment, weight decay, seed) lives,
its checkpoint files and the checkpoint nearest a step, its per-run CSVs, and the run of a path.

    results/runs/{experiment}/wd{weight_decay}/seed{seed}/      RUN_DIR
        checkpoints/step{step:09d}.pt                           checkpoint_path(.., step)
        checkpoints/step{step:09d}.safetensors                  (the references' kept checkpoints)
        train_log.csv, htsr.csv, traps.csv, progress.csv, phases.csv
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from antigrok.files import write_text_atomically

RUN_KEYS = ["experiment", "weight_decay", "seed"]
RESULTS = "results"
RUN_DIR = RESULTS + "/runs/{experiment}/wd{weight_decay}/seed{seed}"  # a Snakemake pattern too
RUN_FOLDERS = "*/wd*/seed*"  # the glob of the run folders below a runs/ folder
CHECKPOINTS = "checkpoints"  # a run's checkpoint folder, below RUN_DIR
TRAIN_LOG = "train_log.csv"
HTSR_CSV = "htsr.csv"
TRAPS_CSV = "traps.csv"
PROGRESS_CSV = "progress.csv"
PHASES_CSV = "phases.csv"
CHECKPOINT_NAME = re.compile(r"step(\d+)\.(pt|safetensors)")
# In a run's checkpoint folder: the checkpoints trained and analysed on another machine
# (a run continued from a copied resume state; antigrok.training.resume, docs/long-runs.md).
HELD_ELSEWHERE = "held_elsewhere.json"
# .../<experiment>/wd<weight decay>/seed<seed>/... (under results/runs/ in the workflow)
RUN_PATH = re.compile(r"(?:^|/)(?P<experiment>[^/]+)/wd(?P<weight_decay>[^/]+)/seed(?P<seed>\d+)(?:/|$)")


def checkpoint_path(checkpoint_dir: str | Path, step: int, suffix: str = ".pt") -> Path:
    """The file of the checkpoint at ``step`` in a checkpoint folder (``.pt`` as the train rule
    writes it, ``.safetensors`` as a reference keeps it)."""
    return Path(checkpoint_dir) / f"step{int(step):09d}{suffix}"


def checkpoint_files(folder: str | Path, suffixes=(".pt", ".safetensors")) -> dict[int, Path]:
    """{step: file} of the ``step{step}.pt`` / ``.safetensors`` files of a folder, by step; empty
    when the folder has none or does not exist. Where a step has both, the ``.pt`` file."""
    folder = Path(folder)
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.suffix in suffixes:
            found.setdefault(int(match.group(1)), path)
    return dict(sorted(found.items()))


def nearest_checkpoint_step(steps, target: int) -> int:
    """The step of ``steps`` nearest ``target`` in log10(step), the smaller one on a tie; step 0
    only for target 0 (or when it is the only step): the checkpoint that stands for a phase edge."""
    steps = [int(step) for step in steps]
    positive = [step for step in steps if step > 0]
    if target <= 0 or not positive:
        return min(steps)
    return min(positive, key=lambda step: (abs(math.log10(step) - math.log10(target)), step))


def parse_run_dir(path: str | Path) -> tuple[str, float, int]:
    """(experiment, weight decay, seed) of a run file or directory, from its path."""
    match = RUN_PATH.search(Path(path).as_posix())
    if match is None:
        raise ValueError(f"{path} is not under runs/<experiment>/wd<weight_decay>/seed<seed>/ (a run directory)")
    return match["experiment"], float(match["weight_decay"]), int(match["seed"])


def read_run_files(paths) -> pd.DataFrame:
    """Concatenate per-run CSV files, each row tagged with its run's experiment, weight_decay, seed."""
    frames = []
    for path in paths:
        experiment, weight_decay, seed = parse_run_dir(path)
        frame = pd.read_csv(path)
        frame.insert(0, "seed", seed)
        frame.insert(0, "weight_decay", weight_decay)
        frame.insert(0, "experiment", experiment)
        frames.append(frame)
    if not frames:
        raise ValueError("no run files given: the config has no runs")
    return pd.concat(frames, ignore_index=True)


def seed_of(path: str | Path) -> int:
    """The seed of a run file from its directory name (…/seed{seed}/file)."""
    match = re.fullmatch(r"seed(\d+)", Path(path).parent.name)
    if not match:
        raise ValueError(f"{path} is not under a run directory named seed<N>; expected RUN_DIR/<file>")
    return int(match.group(1))


def read_seed_files(paths) -> pd.DataFrame:
    """Concatenate one CSV per run (the seeds of one experiment and weight decay), adding ``seed``."""
    frames = [pd.read_csv(path).assign(seed=seed_of(path)) for path in paths]
    if not frames:
        raise ValueError("no run files given")
    return pd.concat(frames, ignore_index=True)


def held_elsewhere(checkpoint_dir: str | Path) -> dict:
    """``{"checkpoints": [names], "rows": where their analysis is}`` of a checkpoint folder whose
    earlier checkpoints stayed on another machine; empty when it holds the whole run."""
    path = Path(checkpoint_dir) / HELD_ELSEWHERE
    if not path.exists():
        return {}
    held = json.loads(path.read_text())
    if not isinstance(held, dict) or not isinstance(held.get("checkpoints"), list):
        raise ValueError(f"{path}: expected {{'checkpoints': [file names], 'rows': ...}}; remove it only if "
                         "every checkpoint of the run is in that folder")
    return held


def write_held_elsewhere(checkpoint_dir: str | Path, names: list[str], rows: str) -> None:
    write_text_atomically(Path(checkpoint_dir) / HELD_ELSEWHERE,
                          json.dumps({"checkpoints": sorted(names), "rows": rows}, indent=1))


def refuse_held_elsewhere(checkpoint_dir: str | Path) -> None:
    """Raise when ``checkpoint_dir`` lacks checkpoints that another machine analysed."""
    held = held_elsewhere(checkpoint_dir)
    if held.get("checkpoints"):
        names = held["checkpoints"]
        raise FileNotFoundError(
            f"{checkpoint_dir}: {len(names)} of this run's checkpoints ({names[0]} to {names[-1]}) were trained "
            f"and analysed on another machine and are not here; their rows are in {held.get('rows')}. "
            "Build this run's tables from those rows (scripts/long_run.py, docs/long-runs.md), or retrain the "
            "run from step 0 for a complete checkpoint set"
        )
