"""Runs longer than a job: analysed as their checkpoints appear, carried from machine to machine.

The paper's own experiment (1e7 steps) takes about 13 hours a run on one CPU core, longer than a
working period, a SLURM time limit or the life of a preemptible node. The workflow's ``train``
rule already resumes a run from its resume state on the same disk; this module is what lets a run
outlive the disk too. For every run of a config it keeps a *reference folder*
(``OUT/runs/{experiment}/wd{weight_decay}/seed{seed}/``), small enough to commit:

    train_log.csv htsr.csv traps.csv progress.csv   the workflow's per-run files, grown checkpoint by
    phases.csv                                      checkpoint with the workflow's own functions
                                                    (phases provisional until the run ends)
    train_segments.csv                              each job that trained the run: machine, CPU,
                                                    commit, step range, wall time, steps/s
    checkpoints/step*.safetensors, checkpoints.csv  the checkpoints nearest the (provisional) phase
                                                    edges, and the end once the run is finished
    resume/state.pt                                 what a fresh machine continues from: weights,
                                                    AdamW moments, batch order and RNG, step, rows

``analyse`` adds the rows of every checkpoint that appeared since the last call; ``save_state``
copies the resume state in; ``restore`` puts a committed state back into an empty (or older) work
tree, so that the ``train`` rule continues from it. The checkpoints the run made before are then
not on the new machine: ``checkpoints/held_elsewhere.json`` says so, and their rows are already in
the reference folder. docs/long-runs.md is the user's guide.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from antigrok.files import write_atomically, write_csv_atomically, write_safetensors
from antigrok.formats.loading import read_checkpoint, safe_torch_load
from antigrok.htsr import analyze_checkpoint, htsr_table
from antigrok.runs import CHECKPOINTS, checkpoint_files, checkpoint_path, nearest_checkpoint_step, write_held_elsewhere
from antigrok.spectra.traps import compute_traps
from antigrok.study.checkpoint_replay import (ReplaySettings, committed_states, newest_state_before,
                                              rebuild_checkpoint, replay_summary, same_weights, temporary_folder)
from antigrok.study.phases import PhaseThresholds, segment_phases
from antigrok.study.progress import ProgressSettings, progress_for_checkpoints
from antigrok.training.resume import RESUME_DIR, STATE_FILE
from antigrok.training.schedule import checkpoint_steps
from antigrok.training.segments import progress_line, segments_table
from antigrok.training.train import TRAIN_LOG_COLUMNS, RunSpec
from antigrok.workflow_config import format_weight_decay, run_settings

log = logging.getLogger(__name__)

# Rows are written after this many checkpoints: a kill loses at most these (a fresh machine's first
# pass over ~100 checkpoints takes minutes).
CHECKPOINTS_PER_WRITE = 10
# The edges whose checkpoints the tables and the mechanism need (mechanism.edges), by phases.csv column.
# The record of checkpoints trained again from a committed state, with their agreement with the original.
REPLAYED_CHECKPOINTS = "replayed_checkpoints.csv"
EDGE_COLUMNS = {"fit": "fit_step", "grokking_start": "grokking_start_step", "peak": "peak_step",
                "decline_start": "anti_grokking_start_step"}


@dataclass(frozen=True)
class LongRun:
    """One run of a config: its spec, its folder under results/ and its reference folder."""

    spec: RunSpec
    run_dir: Path
    reference_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def last_step(self) -> int:
        return int(self.spec.experiment_cfg["steps"])

    @property
    def state_path(self) -> Path:
        return self.run_dir / RESUME_DIR / STATE_FILE

    @property
    def committed_state_path(self) -> Path:
        return self.reference_dir / "resume" / STATE_FILE

    @property
    def finished(self) -> bool:
        return (self.run_dir / "train_log.csv").exists() and (self.run_dir / "checkpoints").is_dir()


def long_runs(config: dict, results: str | Path, out: str | Path) -> list[LongRun]:
    """Every run of ``config`` (as the workflow loads it: antigrok.workflow_config)."""
    runs = []
    for experiment, settings in config["experiments"].items():
        for weight_decay in settings["weight_decays"]:
            for seed in settings["seeds"]:
                spec = RunSpec(experiment, run_settings(settings), float(weight_decay), int(seed),
                               config["checkpoints"]["per_decade"], config["log"]["per_decade"])
                folder = Path("runs") / experiment / f"wd{format_weight_decay(weight_decay)}" / f"seed{seed}"
                runs.append(LongRun(spec, Path(results) / folder, Path(out) / folder))
    return runs


# ---------------------------------------------------------------------------------- the run's state


def read_state(path: Path) -> dict | None:
    """A resume state (antigrok.training.resume), read without unpickling; None where there is none."""
    return safe_torch_load(path) if path.exists() else None


def current_state(run: LongRun) -> dict | None:
    """The work tree's resume state, or None (not started, or finished)."""
    return read_state(run.state_path)


def train_log_so_far(run: LongRun, state: dict | None) -> pd.DataFrame | None:
    """The run's train log: the finished file, or the rows its resume state carries."""
    if run.finished:
        return pd.read_csv(run.run_dir / "train_log.csv")
    if state is None:
        return None
    return pd.DataFrame(state["rows"], columns=TRAIN_LOG_COLUMNS)


def segments_so_far(run: LongRun, state: dict | None) -> pd.DataFrame | None:
    """The segments the resume state carries (a finished run's last ones are in its job's log)."""
    if state is None or not state.get("segments"):
        return None
    return segments_table(state["segments"])


class RecentSpeed:
    """Steps per second of each run since the previous look at its resume state (``follow`` looks every
    few minutes). The job's own average counts the time the job was stopped (SIGSTOP while a test suite
    had the cores, a suspended SLURM job) as training time, and after a pause it promised a day too many.
    The first look and the first look at a new job fall back to that average; a state that has not moved
    since the previous look gives 0 (the job is paused, stopped or dead, or saves less often than follow
    looks), where the average would report a paused run as training."""

    def __init__(self):
        self.seen: dict[str, tuple[int, int, float]] = {}  # run: (the job's first step, step, job wall s)

    def steps_per_s(self, name: str, state: dict) -> float:
        segment = (state.get("segments") or [{}])[-1]
        now = (int(segment.get("start_step", -1)), int(state["step"]), float(segment.get("wall_s", math.nan)))
        before, self.seen[name] = self.seen.get(name), now
        if before is not None and before[0] == now[0]:
            return (now[1] - before[1]) / (now[2] - before[2]) if now[2] > before[2] else 0.0
        return float(segment.get("steps_per_s", math.nan))


def status_line(run: LongRun, speed: RecentSpeed | None = None) -> str:
    """Where the run stands: step, steps per second (since ``speed``'s last look, else of its current job),
    time left."""
    if run.finished:
        return f"{run.name}: finished ({run.last_step} steps)"
    state = current_state(run)
    if state is None:
        committed = read_state(run.committed_state_path)
        where = f"; a committed state at step {committed['step']} (restore it)" if committed else ""
        return f"{run.name}: no resume state in {run.run_dir}{where}"
    speed = speed or RecentSpeed()
    return progress_line(run.name, int(state["step"]), run.last_step, speed.steps_per_s(run.name, state))


# ----------------------------------------------------------------------------------- analysing


@dataclass(frozen=True)
class AnalysisSettings:
    """The config sections the per-run analysis reads, as the workflow's rules read them."""

    fix_fingers: object
    engine: str
    tracy_widom_scale: float
    progress: ProgressSettings
    phases: PhaseThresholds

    @classmethod
    def from_config(cls, config: dict) -> "AnalysisSettings":
        return cls(config["htsr"]["fix_fingers"], config["htsr"]["engine"], float(config["traps"]["tracy_widom_scale"]),
                   ProgressSettings.from_mapping(config["progress"]), PhaseThresholds(**config["phases"]))


def local_checkpoints(run: LongRun) -> dict[int, Path]:
    """The checkpoint files of the run on this machine (staged or finished), by step."""
    files = {}
    for folder in (run.run_dir / RESUME_DIR / CHECKPOINTS, run.run_dir / CHECKPOINTS):
        files.update(checkpoint_files(folder, (".pt",)))
    return files


def read_reference(run: LongRun, name: str) -> pd.DataFrame | None:
    path = run.reference_dir / name
    return pd.read_csv(path) if path.exists() else None


def analysed_steps(run: LongRun) -> set[int]:
    htsr = read_reference(run, "htsr.csv")
    return set() if htsr is None else set(htsr["step"].astype(int))


def append_rows(run: LongRun, name: str, new_rows: pd.DataFrame) -> None:
    old = read_reference(run, name)
    table = new_rows if old is None else pd.concat([old, new_rows], ignore_index=True)
    for column, dtype in new_rows.dtypes.items():
        if pd.api.types.is_integer_dtype(dtype):  # counts read back as floats where a fit failed (NaN)
            table[column] = pd.to_numeric(table[column]).astype("Int64")
    write_csv_atomically(table.sort_values("step", kind="stable").reset_index(drop=True), run.reference_dir / name)


def analyse_checkpoints(run: LongRun, paths: list[Path], dataset: dict, settings: AnalysisSettings) -> None:
    """htsr.csv, traps.csv and progress.csv rows of ``paths``, appended to the reference folder:
    the functions of the ``spectra``, ``traps`` and ``progress`` rules, one checkpoint at a time."""
    rows, arrays = [], {}
    for path in paths:
        checkpoint_rows, checkpoint_arrays, seconds = analyze_checkpoint(path, run.spec.seed, settings.fix_fingers,
                                                                         settings.engine)
        rows.extend(checkpoint_rows)
        arrays.update(checkpoint_arrays)
        log.info("%s: %s analysed in %.2f s", run.name, path.name, seconds)
    htsr = htsr_table(rows)
    traps = compute_traps(htsr, arrays, settings.tracy_widom_scale)
    progress = progress_for_checkpoints(paths, dataset, settings.progress, progress=False)
    # traps.csv and progress.csv first: htsr.csv's steps say what is analysed, so a kill between
    # the writes leaves rows that the next call replaces, never a step marked done without them.
    steps = set(htsr["step"].astype(int))
    for name, table in (("traps.csv", traps), ("progress.csv", progress)):
        old = read_reference(run, name)
        if old is not None:
            write_csv_atomically(old[~old["step"].isin(steps)], run.reference_dir / name)
        append_rows(run, name, table)
    append_rows(run, "htsr.csv", htsr)


def analyse(run: LongRun, dataset: dict, settings: AnalysisSettings) -> int:
    """Bring the run's reference folder up to date with this machine; the number of new checkpoints."""
    run.reference_dir.mkdir(parents=True, exist_ok=True)
    state = current_state(run)
    local = local_checkpoints(run)
    new_steps = sorted(set(local) - analysed_steps(run))
    for start in range(0, len(new_steps), CHECKPOINTS_PER_WRITE):
        chunk = new_steps[start:start + CHECKPOINTS_PER_WRITE]
        analyse_checkpoints(run, [local[step] for step in chunk], dataset, settings)
    train_log = train_log_so_far(run, state)
    if train_log is not None:
        write_csv_atomically(train_log, run.reference_dir / "train_log.csv")
        # the phases rule's file: provisional while the run trains (the peak may still move)
        write_csv_atomically(segment_phases(train_log, settings.phases), run.reference_dir / "phases.csv")
        keep_edge_checkpoints(run, train_log, local, settings.phases)
    segments = segments_so_far(run, state)
    if segments is not None:
        write_csv_atomically(segments, run.reference_dir / "train_segments.csv")
    return len(new_steps)


def edge_steps(train_log: pd.DataFrame, analysed: list[int], thresholds: PhaseThresholds,
               finished: bool) -> dict[str, tuple[int, int]]:
    """{edge: (edge step, nearest analysed checkpoint step)} of the phase edges the run has reached
    so far (provisional while it trains: the peak may still move), and the end once finished."""
    phases = segment_phases(train_log, thresholds)
    first = phases.iloc[0]
    chosen = {}
    for edge, column in EDGE_COLUMNS.items():
        if not pd.isna(first[column]):
            chosen[edge] = (int(first[column]), nearest_checkpoint_step(analysed, int(first[column])))
    if finished:
        chosen["end"] = (int(train_log["step"].max()), max(analysed))
    return chosen


# (reference checkpoints folder, edge, step) of the missing edge checkpoints this process has warned of
_MISSING_SAID: set[tuple[str, str, int]] = set()


def keep_edge_checkpoints(run: LongRun, train_log: pd.DataFrame, local: dict[int, Path],
                          thresholds: PhaseThresholds) -> None:
    """The reference folder keeps, as safetensors, the checkpoints nearest the phase edges reached so
    far (the end once finished): written from this machine's checkpoints, dropped when an edge moves."""
    analysed = sorted(analysed_steps(run))
    if not analysed:
        return
    folder = run.reference_dir / CHECKPOINTS
    chosen = edge_steps(train_log, analysed, thresholds, run.finished)
    index = []
    for edge, (edge_step, step) in chosen.items():
        file = checkpoint_path(folder, step, ".safetensors")
        if not file.exists():
            if step not in local:
                if (str(folder), edge, step) not in _MISSING_SAID:  # once per process, not at every analysis
                    _MISSING_SAID.add((str(folder), edge, step))
                    log.warning("%s: the %s checkpoint (step %d) is on another machine and was not kept there; "
                                "it is missing from %s (scripts/long_run.py recover trains it again from a "
                                "committed state)", run.name, edge, step, folder)
                continue
            write_safetensors(read_checkpoint(local[step])["model"], file)
        index.append({"edge": edge, "edge_step": edge_step, "checkpoint_step": step, "file": file.name})
    wanted = {row["file"] for row in index}
    for stale in checkpoint_files(folder, (".safetensors",)).values():
        if stale.name not in wanted:
            stale.unlink()
    if index:
        write_csv_atomically(pd.DataFrame(index), folder.parent / "checkpoints.csv")


def missing_edge_checkpoints(run: LongRun, thresholds: PhaseThresholds) -> dict[str, int]:
    """{edge: checkpoint step} of the edges reached so far whose checkpoint neither the reference folder
    nor this machine has (written on a machine that is gone, before the edge was recognised)."""
    train_log, analysed = read_reference(run, "train_log.csv"), sorted(analysed_steps(run))
    if train_log is None or not analysed:
        return {}
    local = local_checkpoints(run)
    chosen = edge_steps(train_log, analysed, thresholds, run.finished)
    return {edge: step for edge, (_, step) in chosen.items()
            if step not in local and not checkpoint_path(run.reference_dir / CHECKPOINTS, step, ".safetensors").exists()}


def replay_from_history(run: LongRun, states: list, step: int, what: str, scratch: Path, dataset: dict,
                        settings: AnalysisSettings, replay_settings: ReplaySettings,
                        progress: bool) -> tuple[Path, pd.DataFrame]:
    """Checkpoint ``step`` trained again from the newest of ``states`` before it, written under ``scratch``
    (torch format), and its comparison with the original's analysed rows."""
    source = newest_state_before(states, step)
    if source is None:
        raise ValueError(f"{run.name}: no committed state at or before step {step} ({what}) in the git history "
                         f"of {run.committed_state_path}; it cannot be trained again")
    log.info("%s: training %s (step %d) again from the state at step %d (%s)", run.name, what, step, source.step,
             source.commit[:7])
    replayed = scratch / f"step{step}.pt"
    table = rebuild_checkpoint(run.spec, dataset, source, step, replayed, read_reference(run, "train_log.csv"),
                               read_reference(run, "htsr.csv"), settings.fix_fingers, settings.engine,
                               replay_settings, progress)
    return replayed, table


def recover_edge_checkpoints(run: LongRun, dataset: dict, settings: AnalysisSettings,
                             replay_settings: ReplaySettings, progress: bool = True) -> pd.DataFrame | None:
    """Train each missing edge checkpoint again from the newest committed state before it
    (antigrok.study.checkpoint_replay), keep it in the reference folder as safetensors, and add the
    comparison with the original's rows to ``replayed_checkpoints.csv``. None: nothing was missing."""
    missing = missing_edge_checkpoints(run, settings.phases)
    if not missing:
        return None
    tables = []
    with temporary_folder() as scratch:
        states = committed_states(run.committed_state_path, Path(scratch))
        for edge, step in sorted(missing.items(), key=lambda item: item[1]):
            replayed, table = replay_from_history(run, states, step, f"the {edge} checkpoint", Path(scratch), dataset,
                                                  settings, replay_settings, progress)
            tables.append(table)
            write_safetensors(read_checkpoint(replayed)["model"],
                              checkpoint_path(run.reference_dir / CHECKPOINTS, step, ".safetensors"))
    table = pd.concat(tables, ignore_index=True)
    append_rows(run, REPLAYED_CHECKPOINTS, table)
    keep_edge_checkpoints(run, read_reference(run, "train_log.csv"), local_checkpoints(run), settings.phases)
    log.info("%s:\n%s", run.name, replay_summary(table))
    return table


def check_replay(run: LongRun, dataset: dict, settings: AnalysisSettings, replay_settings: ReplaySettings,
                 step: int, progress: bool = True) -> tuple[pd.DataFrame, bool | None]:
    """Checkpoint ``step`` trained again from the committed history as ``recover`` would, compared with
    the original's analysed rows and, where this machine still has the original file, with its weights:
    (the comparison rows, bit for bit equal or None where there is no file to compare). Nothing is kept."""
    with temporary_folder() as scratch:
        states = committed_states(run.committed_state_path, Path(scratch))
        replayed, table = replay_from_history(run, states, step, f"checkpoint {step}", Path(scratch), dataset,
                                              settings, replay_settings, progress)
        original = local_checkpoints(run).get(step)
        identical = None if original is None else same_weights(read_checkpoint(replayed)["model"],
                                                               read_checkpoint(original)["model"])
    return table, identical


# ------------------------------------------------------------------------- moving between machines


def save_state(run: LongRun) -> int | None:
    """Copy the work tree's resume state into the reference folder; its step (None: nothing to save).

    A finished run needs no state: its committed one is removed."""
    if run.finished:
        shutil.rmtree(run.committed_state_path.parent, ignore_errors=True)
        return None
    state = current_state(run)
    if state is None:
        return None
    check_fingerprint(run, state, run.state_path)
    write_atomically(run.committed_state_path, lambda partial: shutil.copyfile(run.state_path, partial))
    return int(state["step"])


def check_fingerprint(run: LongRun, state: dict, path: Path) -> None:
    if state.get("fingerprint") != run.spec.fingerprint():
        raise ValueError(
            f"{path}: this resume state of {run.name} was made under other settings (fingerprint "
            f"{str(state.get('fingerprint'))[:12]}, the config gives {run.spec.fingerprint()[:12]}). "
            "Continuing it under this config would restart the run from step 0: restore the config that "
            "made it (git log of the config file), or remove the state to start over on purpose"
        )


def restore(run: LongRun) -> str:
    """Continue the run from its committed state where the work tree has nothing newer; says what it did.

    The work tree's resume folder is replaced by the committed state and a held_elsewhere.json that
    names the checkpoints before it (their rows are in the reference folder). Reference rows from the
    state's step on belong to a continuation that was lost with its machine: they are dropped, and
    the train rule computes them again from the state."""
    if run.finished:
        return f"{run.name}: finished here, nothing to restore"
    committed = read_state(run.committed_state_path)
    if committed is None:
        return f"{run.name}: no committed state; the train rule starts it (or continues the work tree's)"
    check_fingerprint(run, committed, run.committed_state_path)
    step = int(committed["step"])
    local = current_state(run)
    if local is not None and int(local["step"]) >= step:
        return f"{run.name}: the work tree's state (step {local['step']}) is as new as the committed one ({step}); kept"
    resume_dir = run.run_dir / RESUME_DIR
    shutil.rmtree(resume_dir, ignore_errors=True)
    staged = resume_dir / CHECKPOINTS
    staged.mkdir(parents=True)
    held = [checkpoint_path(Path(), s).name for s in checkpoint_steps(run.last_step, run.spec.checkpoint_per_decade)
            if s < step]
    write_held_elsewhere(staged, held, str(run.reference_dir))
    write_atomically(run.state_path, lambda partial: shutil.copyfile(run.committed_state_path, partial))
    dropped = drop_rows_from(run, step)
    return (f"{run.name}: continues from the committed state at step {step}"
            + (f"; dropped {dropped} analysed checkpoints from step {step} on (a lost continuation)" if dropped else ""))


def drop_rows_from(run: LongRun, step: int) -> int:
    """Remove the reference rows of checkpoints at or after ``step``; how many checkpoints."""
    dropped = {s for s in analysed_steps(run) if s >= step}
    for name in ("htsr.csv", "traps.csv", "progress.csv"):
        table = read_reference(run, name)
        if table is not None:
            write_csv_atomically(table[table["step"] < step], run.reference_dir / name)
    return len(dropped)

