"""Training segments: where, from which commit and how fast each stretch of a run was trained.

A run longer than a job (a SLURM time limit, a three-hour working period) is trained in segments:
each job continues the run from its resume state and trains until it finishes or is stopped. A
continuation on another machine is equal to an uninterrupted run statistically, not bit for bit
(another CPU rounds differently), so every segment records its machine, CPU, commit, step range
and wall time. The list travels inside the resume state (``state["segments"]``), is written as
logged when the run finishes, kept by scripts/long_run.py as ``train_segments.csv``, and is what
``progress_line`` measures speed from.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import subprocess
from pathlib import Path

import pandas as pd

SEGMENT_COLUMNS = ["segment", "start_step", "end_step", "wall_s", "steps_per_s", "started_utc", "ended_utc",
                   "machine", "cpu", "commit", "note"]
UNRECORDED = "unrecorded"


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit(workdir: str | Path = ".") -> str:
    """HEAD of the checkout at ``workdir``, marked when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=workdir,
                               capture_output=True, text=True, check=True)
        return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def start_segment(previous: list[dict], step: int, workdir: str | Path = ".") -> list[dict]:
    """The segments of a run that (re)starts at ``step``: the previous ones and a new open one.

    A state written before segments were recorded (``step`` > 0 and no segments) gets one
    ``unrecorded`` segment for steps 0 to ``step``, so the list always covers the whole run.
    """
    segments = [dict(segment) for segment in previous]
    if not segments and step > 0:
        segments.append(_segment(0, 0, step, note="trained before segments were recorded"))
        segments[0].update(machine=UNRECORDED, cpu=UNRECORDED, commit=UNRECORDED, started_utc="", ended_utc="")
    segments.append(_segment(len(segments), step, step, machine=platform.node(), cpu=cpu_model(),
                             commit=git_commit(workdir)))
    return segments


def _segment(index: int, start_step: int, end_step: int, **fields) -> dict:
    now = utc_now()
    segment = {"segment": index, "start_step": start_step, "end_step": end_step, "wall_s": math.nan,
               "steps_per_s": math.nan, "started_utc": now, "ended_utc": now, "machine": "", "cpu": "",
               "commit": "", "note": ""}
    segment.update(fields)
    return segment


def advance_segment(segments: list[dict], step: int, wall_s: float) -> None:
    """The open (last) segment now ends at ``step`` after ``wall_s`` seconds of this job."""
    segment = segments[-1]
    segment["end_step"] = int(step)
    segment["wall_s"] = float(wall_s)
    trained = segment["end_step"] - segment["start_step"]
    segment["steps_per_s"] = trained / wall_s if wall_s > 0 else math.nan
    segment["ended_utc"] = utc_now()


def segments_table(segments: list[dict]) -> pd.DataFrame:
    """One row per segment (SEGMENT_COLUMNS), for train_segments.csv and the reference READMEs."""
    return pd.DataFrame(segments, columns=SEGMENT_COLUMNS)


def progress_line(name: str, step: int, last_step: int, steps_per_s: float) -> str:
    """``name: step 1234567 of 10000000 (12.3%), 205 steps/s, 11.9 h left at that rate``; a speed of 0
    (``RecentSpeed``: the state has not moved since the previous look) says so instead of a time left."""
    done = f"{name}: step {step} of {last_step} ({100 * step / last_step:.1f}%)"
    if steps_per_s == 0:
        return f"{done}, no new resume state since the last look (paused, stopped or dead?)"
    if not steps_per_s > 0:
        return f"{done}, speed not measured yet"
    hours_left = (last_step - step) / steps_per_s / 3600
    return f"{done}, {steps_per_s:.0f} steps/s, {hours_left:.1f} h left at that rate"
