"""A checkpoint lost with its machine, trained again from a committed state (antigrok.study.checkpoint_replay,
scripts/long_run.py recover): on the same CPU the replay is the original, bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from antigrok.formats.loading import read_checkpoint, safe_torch_load
from antigrok.study import long_runs
from antigrok.study.checkpoint_replay import ReplaySettings, committed_states, newest_state_before, replay, same_weights
from antigrok.study.long_runs import (REPLAYED_CHECKPOINTS, LongRun, analyse, check_replay,
                                      missing_edge_checkpoints, recover_edge_checkpoints, restore, save_state)
from antigrok.training.train import train_run
from test_long_runs import SETTINGS, small_dataset, small_spec, train_until_crash


def git(repository: Path, *arguments: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *arguments],
                   cwd=repository, check=True, capture_output=True)


def commit_state(repository: Path, run: LongRun) -> int:
    step = save_state(run)
    git(repository, "add", "-A")
    git(repository, "commit", "-q", "-m", f"state at {step}")
    return step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_run(small_spec(), small_dataset(), folder, device="cpu", progress=False)
    return folder


def test_a_replay_from_a_mid_run_state_is_the_uninterrupted_checkpoint(tmp_path, monkeypatch, uninterrupted):
    dataset = small_dataset()
    train_until_crash(small_spec(), dataset, tmp_path / "run", monkeypatch, crash_step=40)
    state = safe_torch_load(tmp_path / "run" / ".resume" / "state.pt")
    assert 32 < state["step"] < 100
    threads = torch.get_num_threads()
    engine = replay(small_spec(), dataset, state, 100, ReplaySettings(threads=1), progress=False)
    assert torch.get_num_threads() == threads  # the rule's thread count for the replay only
    original = read_checkpoint(uninterrupted / "checkpoints" / "step000000100.pt")["model"]
    assert same_weights(engine.model.state_dict(), original)
    with pytest.raises(ValueError, match="not one of the run's checkpoint steps"):
        replay(small_spec(), dataset, state, 99, progress=False)
    with pytest.raises(ValueError, match="after checkpoint 32"):
        replay(small_spec(), dataset, state, 32, progress=False)
    with pytest.raises(ValueError, match="made under other settings"):
        replay(small_spec(), dataset, {**state, "fingerprint": "other"}, 100, progress=False)


def test_the_committed_states_are_read_from_the_git_history(tmp_path):
    git(tmp_path, "init", "-q")
    path = tmp_path / "runs" / "state.pt"
    path.parent.mkdir()
    assert committed_states(path, tmp_path) == []  # not in the history
    for step in (700, 40):  # committed out of step order: the list is by step
        torch.save({"step": step, "fingerprint": "f"}, path)
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-q", "-m", f"state {step}")
    copies = tmp_path / "copies"
    copies.mkdir()
    states = committed_states(path, copies)
    assert [state.step for state in states] == [40, 700]
    assert all(safe_torch_load(state.path)["step"] == state.step for state in states)
    assert newest_state_before(states, 699).step == 40 and newest_state_before(states, 700).step == 700
    assert newest_state_before(states, 39) is None


def test_recover_trains_a_lost_edge_checkpoint_again(tmp_path, monkeypatch, caplog, uninterrupted):
    """Machine A trains to about step 150 and commits two states; machine B continues from the second.
    An edge at checkpoint 100 is recognised only afterwards, when A (and its checkpoint) is gone."""
    dataset = small_dataset()
    git(tmp_path, "init", "-q")
    reference = tmp_path / "docs" / "run"
    machine_a = LongRun(small_spec(), tmp_path / "machine_a" / "run", reference)
    (tmp_path / ".gitignore").write_text("machine_a/\nmachine_b/\n")
    train_until_crash(machine_a.spec, dataset, machine_a.run_dir, monkeypatch, crash_step=40)
    analyse(machine_a, dataset, SETTINGS)
    first_state = commit_state(tmp_path, machine_a)
    train_until_crash(machine_a.spec, dataset, machine_a.run_dir, monkeypatch, crash_step=110)
    analyse(machine_a, dataset, SETTINGS)
    second_state = commit_state(tmp_path, machine_a)
    assert first_state < 100 < second_state
    # check-replay on machine A, which still has checkpoint 100: the replay is its original
    checked, identical = check_replay(machine_a, dataset, SETTINGS, ReplaySettings(), 100, progress=False)
    assert identical is True and set(checked["from_state_step"]) == {first_state}
    assert (checked["difference"].fillna(0) == 0).all()

    machine_b = LongRun(small_spec(), tmp_path / "machine_b" / "run", reference)
    restore(machine_b)
    train_run(machine_b.spec, dataset, machine_b.run_dir, device="cpu", progress=False)
    real_edge_steps = long_runs.edge_steps
    monkeypatch.setattr(long_runs, "edge_steps", lambda *args: {**real_edge_steps(*args), "peak": (100, 100)})
    with caplog.at_level("WARNING"):
        analyse(machine_b, dataset, SETTINGS)  # warns: the peak's checkpoint is on machine A
        analyse(machine_b, dataset, SETTINGS)  # ... once, not at every analysis
    assert caplog.text.count("the peak checkpoint (step 100) is on another machine") == 1
    assert missing_edge_checkpoints(machine_b, SETTINGS.phases) == {"peak": 100}

    table = recover_edge_checkpoints(machine_b, dataset, SETTINGS, ReplaySettings(), progress=False)
    kept = reference / "checkpoints" / "step000000100.safetensors"
    original = read_checkpoint(uninterrupted / "checkpoints" / "step000000100.pt")["model"]
    assert same_weights(load_file(kept), original)  # the same CPU: the original, bit for bit
    assert set(table["from_state_step"]) == {first_state} and set(table["step"]) == {100}
    assert {"test_acc", "train_loss", "alpha", "max_rand_eval"} <= set(table["quantity"])
    assert set(table.loc[table["quantity"] == "alpha", "layer"]) == {"fc1", "fc2", "fc3"}
    assert (table["difference"].fillna(0) == 0).all()
    assert table["cpu"].str.len().min() > 0 and table["from_state_commit"].str.len().eq(40).all()
    recorded = pd.read_csv(reference / REPLAYED_CHECKPOINTS)
    assert len(recorded) == len(table)
    edges = pd.read_csv(reference / "checkpoints.csv").set_index("edge")
    assert edges.loc["peak", "file"] == kept.name and edges.loc["end", "checkpoint_step"] == 300
    assert missing_edge_checkpoints(machine_b, SETTINGS.phases) == {}
    assert recover_edge_checkpoints(machine_b, dataset, SETTINGS, ReplaySettings(), progress=False) is None


def test_recover_says_when_no_committed_state_precedes_the_checkpoint(tmp_path, monkeypatch):
    dataset = small_dataset()
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("machine/\n")
    run = LongRun(small_spec(), tmp_path / "machine" / "run", tmp_path / "docs" / "run")
    train_until_crash(run.spec, dataset, run.run_dir, monkeypatch, crash_step=150)
    analyse(run, dataset, SETTINGS)
    commit_state(tmp_path, run)
    lose_local_checkpoints(run)
    real_edge_steps = long_runs.edge_steps
    monkeypatch.setattr(long_runs, "edge_steps", lambda *args: {**real_edge_steps(*args), "fit": (10, 10)})
    with pytest.raises(ValueError, match="no committed state at or before step 10"):
        recover_edge_checkpoints(run, dataset, SETTINGS, ReplaySettings(), progress=False)


def lose_local_checkpoints(run: LongRun) -> None:
    """This machine loses its checkpoints (as a fresh one has none)."""
    for path in (run.run_dir / ".resume" / "checkpoints").glob("step*.pt"):
        path.unlink()
