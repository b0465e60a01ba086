"""The resume protocol of both training engines (antigrok.training.train and antigrok.training.batched).

A run's final files are ``checkpoints/`` and ``train_log.csv``. While it trains, everything lives
in ``RUN_DIR/.resume/``: the checkpoints so far (``checkpoints/``) and, for a single run, the
resume state (``state.pt``; a batched group keeps one state for all its runs in its own folder).

A resume state is valid when its fingerprint is this run's (or group's) and every checkpoint it
claims, each checkpoint step before its step, is staged for every run. Anything else starts over.

Finishing is a two-phase commit, so that a job killed at any point of it leaves files that the
rerun completes, never a partial checkpoint set that looks complete:

1. *mark*: each run's train log is written to ``.resume/train_log.csv``, then the mark
   ``.resume/finished.json`` (its fingerprint and checkpoint names), each atomically. Then the
   resume state is removed: from here on the mark is what says where the run stands.
2. *commit*: move ``.resume/checkpoints`` to ``checkpoints/``, ``.resume/train_log.csv`` to
   ``train_log.csv``, remove the rest of ``.resume/``, the mark last. Every step can be redone.

A rerun that finds the marks of all its runs redoes the commit and trains nothing; where the final
files are gone (snakemake removes a failed job's outputs) it trains from step 0, which writes the
same files bit for bit.

A run continued on another machine from a copied resume state (``scripts/long_run.py restore``,
docs/long-runs.md) does not have the checkpoints its earlier segments staged: they were analysed
where they were made and their rows kept. ``checkpoints/held_elsewhere.json`` (staged with the
checkpoints, so it moves with them) lists them and says where their rows are; the state stays
valid without them, the finished ``checkpoints/`` lacks them, and the analyses that read a whole
checkpoint folder refuse it with that message (``refuse_held_elsewhere``) instead of analysing a
part of the run as if it were all of it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import torch

from antigrok.files import write_atomically, write_csv_atomically, write_text_atomically
from antigrok.formats.loading import safe_torch_load
from antigrok.runs import CHECKPOINTS, TRAIN_LOG, checkpoint_files, checkpoint_path, held_elsewhere

log = logging.getLogger(__name__)

RESUME_DIR = ".resume"
STATE_FILE = "state.pt"
FINISHED_MARK = "finished.json"


def _crash_point(name: str) -> None:
    """Called between the steps of finishing; the tests make it raise or SIGKILL the process there."""


def _replace_dir(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    _crash_point("old checkpoints removed")
    source.replace(target)


class RunFiles:
    """One run's folder: where its checkpoints are staged and how they become its final files."""

    def __init__(self, run_dir: str | Path, name: str, fingerprint: str, checkpoint_steps):
        self.run_dir = Path(run_dir)
        self.name = name
        self.fingerprint = fingerprint
        self.checkpoint_steps = sorted(checkpoint_steps)
        self.resume_dir = self.run_dir / RESUME_DIR
        self.staged = self.resume_dir / CHECKPOINTS
        self.checkpoints = self.run_dir / CHECKPOINTS
        self.train_log = self.run_dir / TRAIN_LOG
        self.mark = self.resume_dir / FINISHED_MARK

    def staged_checkpoint(self, step: int) -> Path:
        return checkpoint_path(self.staged, step)

    def checkpoint_names(self) -> list[str]:
        return [checkpoint_path(Path(), step).name for step in self.checkpoint_steps]

    def missing_staged(self, before_step: int) -> list[str]:
        """The staged checkpoints a state at ``before_step`` claims that are neither on disk nor held
        elsewhere."""
        present = {path.name for path in checkpoint_files(self.staged, (".pt",)).values()}
        present |= set(held_elsewhere(self.staged).get("checkpoints", []))
        return [checkpoint_path(Path(), step).name for step in self.checkpoint_steps
                if step < before_step and checkpoint_path(Path(), step).name not in present]

    def discard(self) -> None:
        shutil.rmtree(self.resume_dir, ignore_errors=True)

    # ---- finishing ------------------------------------------------------------------------------
    def write_mark(self, train_log: pd.DataFrame) -> None:
        """Phase 1: the staged train log, then the mark; every checkpoint must be staged already."""
        held = set(held_elsewhere(self.staged).get("checkpoints", []))
        missing = [name for name in self.checkpoint_names() if not (self.staged / name).exists() and name not in held]
        if missing:
            raise RuntimeError(f"run {self.name}: cannot finish, staged checkpoints are missing: {missing}")
        write_csv_atomically(train_log, self.resume_dir / TRAIN_LOG)
        _crash_point("train log staged")
        mark = {"fingerprint": self.fingerprint, "checkpoints": self.checkpoint_names()}
        write_text_atomically(self.mark, json.dumps(mark))

    def is_marked(self) -> bool:
        """Phase 1 is complete, for this run's config."""
        try:
            mark = json.loads(self.mark.read_text())
        except (OSError, ValueError):
            return False
        return mark.get("fingerprint") == self.fingerprint and mark.get("checkpoints") == self.checkpoint_names()

    def commit(self) -> pd.DataFrame | None:
        """Phase 2, which can be redone from wherever it stopped: the train log, or None where the
        final files are no longer complete (then ``.resume/`` is discarded and the run starts over)."""
        if self.staged.is_dir():
            _replace_dir(self.staged, self.checkpoints)
        _crash_point("checkpoints moved")
        staged_log = self.resume_dir / TRAIN_LOG
        if staged_log.exists():
            staged_log.replace(self.train_log)
        _crash_point("train log moved")
        if not self._final_files_complete():
            log.warning("run %s: its finished files are incomplete (removed since?); training it again",
                        self.name)
            self.discard()
            return None
        for path in self.resume_dir.iterdir():
            if path != self.mark:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        _crash_point("resume files removed")
        self.mark.unlink()
        _crash_point("mark removed")
        self.resume_dir.rmdir()
        return pd.read_csv(self.train_log)

    def _final_files_complete(self) -> bool:
        present = {path.name for path in checkpoint_files(self.checkpoints, (".pt",)).values()}
        if self.checkpoints.is_dir():
            present |= set(held_elsewhere(self.checkpoints).get("checkpoints", []))
        return self.train_log.exists() and set(self.checkpoint_names()) <= present


class Resume:
    """The resume state of one run (in its ``.resume/``) or one batched group (in ``state_dir``)."""

    def __init__(self, state_dir: str | Path, fingerprint: str, runs: list[RunFiles], label: str):
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / STATE_FILE
        self.fingerprint = fingerprint
        self.runs = runs
        self.label = label

    def finished_logs(self) -> list[pd.DataFrame] | None:
        """The train logs when a previous attempt was killed while finishing: it finishes now."""
        if not all(run.is_marked() for run in self.runs):
            return None
        log.info("completing the finished files of %s (the last attempt stopped while moving them)", self.label)
        logs = [run.commit() for run in self.runs]
        if any(train_log is None for train_log in logs):
            return None
        self._remove_state_dir()
        return logs

    def load(self) -> dict | None:
        """The valid resume state, or None after removing everything staged (a fresh start)."""
        state = self._read_valid_state()
        if state is None:
            self.discard()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            run.staged.mkdir(parents=True, exist_ok=True)
        return state

    def _read_valid_state(self) -> dict | None:
        if not self.state_path.exists():
            return None
        state = safe_torch_load(self.state_path)  # weights_only: never unpickles code
        if state.get("fingerprint") != self.fingerprint:
            log.warning("discarding the resume state of %s: its config differs from this run's", self.label)
            return None
        for run in self.runs:
            missing = run.missing_staged(state["step"])
            if missing:
                log.warning("discarding the resume state of %s: staged checkpoints of %s are missing (%s)",
                            self.label, run.name, ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else ""))
                return None
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` (it must hold ``fingerprint`` and ``step``) atomically."""
        write_atomically(self.state_path, lambda partial: torch.save(state, partial))

    def finish(self, train_logs: list[pd.DataFrame]) -> list[pd.DataFrame]:
        """Mark every run, drop the resume state, commit every run (see the module docstring)."""
        for run, train_log in zip(self.runs, train_logs, strict=True):
            run.write_mark(train_log)
            _crash_point("run marked")
        self.state_path.unlink(missing_ok=True)
        _crash_point("state removed")
        for run in self.runs:
            if run.commit() is None:
                raise RuntimeError(f"run {run.name}: its final files vanished while they were written")
        self._remove_state_dir()
        return train_logs

    def discard(self) -> None:
        """Remove the resume state and every run's staged files."""
        self._remove_state_dir()
        for run in self.runs:
            run.discard()

    def _remove_state_dir(self) -> None:
        if self.state_dir not in {run.resume_dir for run in self.runs}:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        else:
            self.state_path.unlink(missing_ok=True)

