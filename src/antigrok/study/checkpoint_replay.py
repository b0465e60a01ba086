"""Rebuild a checkpoint that a lost machine took with it, by training again from an earlier resume state.

A long run (antigrok.study.long_runs) commits only the checkpoints nearest the phase edges reached so
far and one resume state per working period. An edge can be recognised after the machine that wrote
its checkpoint is gone: the decline start, for one, moves later while the decline deepens. The run's
committed states stay in the git history, and a state holds everything the trajectory depends on
(weights, AdamW moments, batch order, random state). Training again from the newest state before the
checkpoint writes it again: on the CPU model that trained that stretch the replay is the same
computation, on another one it is equal statistically, not bit for bit. Every replay is checked
against the rows the original checkpoint was analysed into before it went (the train log's accuracies
and losses at that step, each layer's alpha and largest eigenvalues), and the agreement is kept in
``replayed_checkpoints.csv`` beside the rebuilt file.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from antigrok.formats.loading import safe_torch_load
from antigrok.htsr import analyze_checkpoint
from antigrok.training.segments import cpu_model, git_commit
from antigrok.training.train import RunSpec, SingleRun, evaluation_row, event_steps, next_stop, save_checkpoint

log = logging.getLogger(__name__)

# What the replay is compared on: the train log's row at the checkpoint, and per layer the spectrum's
# fitted exponent, its largest eigenvalue (log10) and the shuffled matrix's largest one (the traps' scale).
LOG_QUANTITIES = ("train_loss", "train_acc", "test_loss", "test_acc")
HTSR_QUANTITIES = ("alpha", "log_spectral_norm", "max_rand_eval")
REPLAY_COLUMNS = ["step", "from_state_step", "from_state_commit", "machine", "cpu", "commit", "wall_s",
                  "quantity", "layer", "original", "replayed", "difference"]


@dataclass(frozen=True)
class ReplaySettings:
    """How the train rule computed the steps (``train.cpu_engine``, ``train.threads``): a replay on
    another thread count could round a reduction differently, so it uses the rule's."""

    cpu_engine: str = "fast"
    threads: int = 1

    @classmethod
    def from_config(cls, config: dict) -> "ReplaySettings":
        return cls(config["train"]["cpu_engine"], int(config["train"]["threads"]))


@dataclass(frozen=True)
class CommittedState:
    """A resume state of the run as one commit holds it."""

    commit: str
    step: int
    path: Path  # a copy of the state file, read without unpickling


def committed_states(state_path: Path, copies: Path) -> list[CommittedState]:
    """Every version of ``state_path`` in the git history (copies written under ``copies``), oldest step first."""
    repository = state_path.resolve().parent
    relative = subprocess.run(["git", "ls-files", "--full-name", "--error-unmatch", state_path.name], cwd=repository,
                              capture_output=True, text=True)
    if relative.returncode != 0:
        return []
    name = relative.stdout.strip()
    commits = subprocess.run(["git", "log", "--format=%H", "--", state_path.name], cwd=repository,
                             capture_output=True, text=True, check=True).stdout.split()
    states = []
    for commit in commits:
        blob = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=repository, capture_output=True)
        if blob.returncode != 0:  # the commit removed the file (a finished run)
            continue
        copy = copies / f"{commit}.pt"
        copy.write_bytes(blob.stdout)
        states.append(CommittedState(commit, int(safe_torch_load(copy)["step"]), copy))
    return sorted(states, key=lambda state: state.step)


def newest_state_before(states: list[CommittedState], step: int) -> CommittedState | None:
    """The state with the largest step at or before ``step`` (None: the checkpoint predates them all)."""
    earlier = [state for state in states if state.step <= step]
    return earlier[-1] if earlier else None


def replay(spec: RunSpec, dataset: dict, state: dict, step: int, settings: ReplaySettings = ReplaySettings(),
           progress: bool = True) -> SingleRun:
    """The run trained from ``state`` to ``step``, as ``antigrok.training.train.run_loop`` trains it.

    The steps are taken in the loop's chunks, synchronised at every log and checkpoint step as the loop
    does, on the train rule's number of threads, so that the replay computes what the run computed."""
    logged, checkpoints = event_steps(spec)
    if step not in checkpoints:
        raise ValueError(f"{spec.name}: step {step} is not one of the run's checkpoint steps")
    if state["fingerprint"] != spec.fingerprint():
        raise ValueError(f"{spec.name}: the resume state was made under other settings (fingerprint "
                         f"{str(state['fingerprint'])[:12]}, the config gives {spec.fingerprint()[:12]})")
    engine = SingleRun(spec, dataset, device="cpu", cpu_engine=settings.cpu_engine)
    current, _ = engine.restore(state)
    if current > step:
        raise ValueError(f"{spec.name}: the resume state is at step {current}, after checkpoint {step}")
    events = sorted(logged | checkpoints)
    engine.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tqdm(total=step, initial=current, desc=f"replay {spec.name}", unit="step", mininterval=5.0,
                  disable=not progress) as bar:
            while current < step:
                target = next_stop(events, current)
                engine.advance(current, target - current)
                bar.update(target - current)
                current = target
                if current in events:
                    engine.sync()
        engine.sync()
    finally:
        torch.set_num_threads(threads)
    return engine


def comparison_rows(engine: SingleRun, spec: RunSpec, step: int, replayed_checkpoint: Path,
                    original_log: pd.DataFrame, original_htsr: pd.DataFrame, fix_fingers, htsr_engine: str) -> pd.DataFrame:
    """quantity, layer, original, replayed: the train log row and each layer's spectrum, original against replay."""
    rows = []
    logged = original_log[original_log["step"] == step]
    if not logged.empty:
        evaluated = evaluation_row(engine.model, spec, step, engine.train_data, engine.test_data, engine.loss_name)
        rows += [{"quantity": name, "layer": "", "original": float(logged[name].iloc[0]),
                  "replayed": float(evaluated[name])} for name in LOG_QUANTITIES]
    analysed = original_htsr[original_htsr["step"] == step].set_index("layer")
    if not analysed.empty:
        replayed, _, _ = analyze_checkpoint(replayed_checkpoint, spec.seed, fix_fingers, htsr_engine)
        for row in replayed:
            if row["layer"] in analysed.index:
                rows += [{"quantity": name, "layer": row["layer"], "original": float(analysed.loc[row["layer"], name]),
                          "replayed": float(row[name])} for name in HTSR_QUANTITIES]
    table = pd.DataFrame(rows, columns=["quantity", "layer", "original", "replayed"])
    table["difference"] = table["replayed"] - table["original"]
    return table


def rebuild_checkpoint(spec: RunSpec, dataset: dict, source: CommittedState, step: int, output: Path,
                       original_log: pd.DataFrame, original_htsr: pd.DataFrame, fix_fingers="clip_xmax",
                       htsr_engine: str = "fast", settings: ReplaySettings = ReplaySettings(),
                       progress: bool = True) -> pd.DataFrame:
    """Replay ``spec`` from ``source`` to checkpoint ``step``, write it to ``output`` (torch format) and
    return the REPLAY_COLUMNS rows that compare it with the original's analysed rows."""
    started = time.monotonic()
    engine = replay(spec, dataset, safe_torch_load(source.path), step, settings, progress)
    wall_s = time.monotonic() - started
    save_checkpoint(output, engine.model, spec, step)  # as the train rule writes it, for the analysis
    table = comparison_rows(engine, spec, step, output, original_log, original_htsr, fix_fingers, htsr_engine)
    engine.close()
    provenance = {"step": step, "from_state_step": source.step, "from_state_commit": source.commit,
                  "machine": platform.node(), "cpu": cpu_model(), "commit": git_commit(), "wall_s": round(wall_s, 1)}
    for column, value in reversed(provenance.items()):
        table.insert(0, column, value)
    return table[REPLAY_COLUMNS]


def replay_summary(table: pd.DataFrame) -> str:
    """One line per rebuilt checkpoint: where it was replayed from and the largest difference seen."""
    lines = []
    for step, rows in table.groupby("step"):
        first = rows.iloc[0]
        worst = rows.loc[rows["difference"].abs().idxmax()] if rows["difference"].notna().any() else None
        agreement = ("no analysed rows to compare with" if worst is None else
                     f"largest difference {worst['difference']:.3g} ({worst['quantity']} {worst['layer']})".rstrip())
        lines.append(f"step {step}: replayed from the state at step {first['from_state_step']} "
                     f"({str(first['from_state_commit'])[:7]}) on {first['cpu']} in {first['wall_s']:.0f} s; {agreement}")
    return "\n".join(lines)


def same_weights(first: dict, second: dict) -> bool:
    """Two state dicts with the same names and bit-for-bit equal tensors."""
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="antigrok-replay-")
