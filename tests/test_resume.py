"""The resume protocol (antigrok.training.resume): a job killed at any point of finishing a run, in either
engine, is completed by its rerun with the full, bit-identical checkpoint set and train log."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pandas as pd
import pytest
import torch

from antigrok.training import resume
from antigrok.training.batched import train_runs
from antigrok.training.schedule import checkpoint_steps
from antigrok.training.train import BatchOrder, load_checkpoint, train_run
from test_batched import SMALL_EXPERIMENT, small_dataset, specs_for
from test_train import tiny_dataset, tiny_spec

# Every point where finishing can stop, in order (antigrok.training.resume calls _crash_point there).
CRASH_POINTS = ["train log staged", "run marked", "state removed", "old checkpoints removed",
                "checkpoints moved", "train log moved", "resume files removed", "mark removed"]
STEPS = 20  # small: every finishing point is reached just the same


class Crash(Exception):
    pass


def crash_at(point: str, occurrence: int = 1):
    seen = {"n": 0}

    def crash_point(name):
        if name == point:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise Crash(point)

    return crash_point


def remove_outputs(run_dir):
    """What snakemake does to a failed job's outputs before it runs the job again."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "train_log.csv").unlink(missing_ok=True)


def assert_same_run(expected_dir, actual_dir):
    assert (actual_dir / "train_log.csv").read_bytes() == (expected_dir / "train_log.csv").read_bytes()
    names = sorted(p.name for p in (expected_dir / "checkpoints").iterdir())
    assert sorted(p.name for p in (actual_dir / "checkpoints").iterdir()) == names
    for name in names:
        ours, theirs = load_checkpoint(actual_dir / "checkpoints" / name), load_checkpoint(expected_dir / "checkpoints" / name)
        assert {k: v for k, v in ours.items() if k != "model"} == {k: v for k, v in theirs.items() if k != "model"}
        assert list(ours["model"]) == list(theirs["model"])
        for key in theirs["model"]:
            assert torch.equal(ours["model"][key], theirs["model"][key]), (name, key)
    assert not (actual_dir / ".resume").exists()


def single(run_dir, **kwargs):
    return train_run(tiny_spec(steps=STEPS), tiny_dataset(), run_dir, device="cpu", progress=False, **kwargs)


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    single(run_dir)
    assert len(list((run_dir / "checkpoints").iterdir())) == len(checkpoint_steps(STEPS, 4))
    return run_dir


@pytest.mark.parametrize("outputs_removed", [False, True], ids=["rerun", "snakemake-rerun"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_run_killed_while_finishing_is_completed_by_its_rerun(tmp_path, monkeypatch, caplog, single_reference,
                                                                point, outputs_removed):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(resume, "_crash_point", crash_at(point))
    with pytest.raises(Crash):
        single(run_dir, resume_every_s=0.0)
    monkeypatch.undo()
    if outputs_removed:
        remove_outputs(run_dir)
    with caplog.at_level(logging.INFO, logger="antigrok"):
        returned = single(run_dir)
    assert_same_run(single_reference, run_dir)
    assert list(returned["step"]) == list(pd.read_csv(single_reference / "train_log.csv")["step"])
    at = CRASH_POINTS.index(point)
    marked = CRASH_POINTS.index("run marked") <= at < CRASH_POINTS.index("mark removed")
    if marked and not (outputs_removed and at >= CRASH_POINTS.index("checkpoints moved")):
        assert "completing the finished files" in caplog.text  # the mark says done: nothing trained again
        assert "training tiny" not in caplog.text


def test_the_old_hole_a_kill_after_the_move_no_longer_leaves_a_partial_checkpoint_set(tmp_path, monkeypatch,
                                                                                     single_reference):
    """The issue's case: killed after checkpoints/ was complete but before .resume/ was removed."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(resume, "_crash_point", crash_at("train log moved"))
    with pytest.raises(Crash):
        single(run_dir, resume_every_s=0.0)
    monkeypatch.undo()
    assert (run_dir / ".resume").exists()
    # As the old layout would have it: the resume state back, mark gone (an attempt of the old code).
    (run_dir / ".resume" / resume.FINISHED_MARK).unlink()
    state = train_state_at(single_reference, step=10)
    torch.save(state, run_dir / ".resume" / resume.STATE_FILE)
    single(run_dir)
    assert_same_run(single_reference, run_dir)


def train_state_at(reference_dir, step):
    """A genuine resume state of the tiny run at ``step``, from a run interrupted there."""
    with tempfile.TemporaryDirectory() as folder:
        calls = {"n": 0}
        original = BatchOrder.next

        def stop(self):
            calls["n"] += 1
            if calls["n"] == step + 1:
                raise Crash("stop")
            return original(self)

        BatchOrder.next = stop
        try:
            with pytest.raises(Crash):
                single(folder, resume_every_s=0.0)
        finally:
            BatchOrder.next = original
        return torch.load(os.path.join(folder, ".resume", "state.pt"), weights_only=False)


KILLED_WHILE_FINISHING = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_train import tiny_dataset, tiny_spec
    from antigrok.training import resume
    from antigrok.training.train import train_run

    def crash_point(name):
        if name == {point!r}:
            os.kill(os.getpid(), signal.SIGKILL)

    resume._crash_point = crash_point
    train_run(tiny_spec(steps={steps}), tiny_dataset(), {run_dir!r}, device="cpu", resume_every_s=0.0, progress=False)
    """
)


def test_a_real_sigkill_after_the_checkpoints_moved_is_completed_by_the_rerun(tmp_path, single_reference):
    run_dir = tmp_path / "run"
    script = KILLED_WHILE_FINISHING.format(tests=os.path.dirname(__file__), point="checkpoints moved",
                                           steps=STEPS, run_dir=str(run_dir))
    result = subprocess.run([sys.executable, "-c", script], timeout=600)
    assert result.returncode == -signal.SIGKILL
    assert (run_dir / "checkpoints").exists() and (run_dir / ".resume").exists()
    single(run_dir)
    assert_same_run(single_reference, run_dir)


# ---- the batched engine: the same protocol for a group of runs --------------------------------------
GROUP_STEPS = 20


def group(root, **kwargs):
    specs = specs_for(dict(SMALL_EXPERIMENT, steps=GROUP_STEPS))
    run_dirs = [root / f"seed{spec.seed}" for spec in specs]
    train_runs(specs, small_dataset(), run_dirs, device="cpu", progress=False, **kwargs)
    return run_dirs


@pytest.fixture(scope="module")
def group_reference(tmp_path_factory):
    return group(tmp_path_factory.mktemp("group_reference"))


@pytest.mark.parametrize("occurrence", [1, 2], ids=["first-run", "second-run"])
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "state removed"])
def test_a_group_killed_while_finishing_is_completed_by_its_rerun(tmp_path, monkeypatch, group_reference, point,
                                                                  occurrence):
    monkeypatch.setattr(resume, "_crash_point", crash_at(point, occurrence))
    with pytest.raises(Crash):
        group(tmp_path, resume_every_s=0.0)
    monkeypatch.undo()
    run_dirs = group(tmp_path)
    for expected, actual in zip(group_reference, run_dirs):
        assert_same_run(expected, actual)
    assert not (tmp_path / ".resume-batched").exists()


@pytest.mark.parametrize("point", ["state removed", "checkpoints moved"])
def test_a_group_rerun_by_snakemake_after_a_kill_while_finishing_is_complete(tmp_path, monkeypatch,
                                                                             group_reference, point):
    monkeypatch.setattr(resume, "_crash_point", crash_at(point))
    with pytest.raises(Crash):
        group(tmp_path, resume_every_s=0.0)
    monkeypatch.undo()
    for run_dir in group_reference:
        remove_outputs(tmp_path / run_dir.name)
    run_dirs = group(tmp_path)
    for expected, actual in zip(group_reference, run_dirs):
        assert_same_run(expected, actual)
