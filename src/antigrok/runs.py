"""Run folders and their CSVs: the run (experiment, weight decay, seed) of a results file, read
from its path ``.../runs/{experiment}/wd{weight_decay}/seed{seed}/{file}``, and the per-run CSVs
of many runs as one frame tagged with it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

RUN_KEYS = ["experiment", "weight_decay", "seed"]
# .../<experiment>/wd<weight decay>/seed<seed>/... (under results/runs/ in the workflow)
RUN_PATH = re.compile(r"(?:^|/)(?P<experiment>[^/]+)/wd(?P<weight_decay>[^/]+)/seed(?P<seed>\d+)(?:/|$)")
_RUN_PATH = RUN_PATH


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
