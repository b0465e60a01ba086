"""Runs longer than a job (antigrok.study.long_runs, scripts/long_run.py): analysed as their checkpoints
appear, moved to a fresh machine through a committed state, and guarded against a restart from 0."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from antigrok.htsr import write_spectra
from antigrok.spectra.traps import write_traps
from antigrok.study import long_runs
from antigrok.study.long_runs import (AnalysisSettings, LongRun, RecentSpeed, analyse, restore, save_state,
                                      status_line)
from antigrok.study.phases import PhaseThresholds, segment_phases
from antigrok.study.progress import ProgressSettings, progress_for_checkpoints
from antigrok.training.segments import progress_line, start_segment
from antigrok.training.train import BatchOrder, RunSpec, SpeedMeter, train_run
from antigrok.workflow_config import load_workflow_config, run_settings

ROOT = Path(__file__).resolve().parents[1]

# The paper's own experiment (issue 32) trains for about 13 hours a run, across working periods,
# from resume states whose fingerprint must not change: anything that changes it (config.yaml's
# mnist_mlp block, the schema's experiment defaults, run_settings, RunSpec.fingerprint) restarts
# both runs from step 0. If this test fails, undo that change, or, if it is deliberate, restart the
# runs on purpose and pin their new fingerprints here.
PAPER_CPU_FINGERPRINTS = {
    "mnist_mlp/wd0.0/seed0": "0cd552be874fda2944c83bc5a38776babb6fe5ce04ad66f8434a13172c3d461f",
    "mnist_mlp/wd0.01/seed0": "cb9925999cc29afb78a4f6297cb8120127020690ff106c5e6dd7bafd41090202",
}

# fc1 16 x 12, fc2 12 x 16, fc3 10 x 12: every matrix is analysable (at least 10 x 10)
SMALL_EXPERIMENT = {
    "dataset": {"name": "mnist"},
    "model": {"name": "mlp", "widths": [12, 16, 12, 10], "init_scale": 8.0},
    "loss": "mse",
    "optimizer": {"name": "adamw", "lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8},
    "steps": 300,
    "batch_size": 16,
    "dtype": "float64",
}
TIMINGS = ["analysis_seconds"]  # how long a fit took: the one column that differs between two analyses
SETTINGS = AnalysisSettings("clip_xmax", "fast", 1.0, ProgressSettings(), PhaseThresholds())


def small_dataset():
    generator = torch.Generator().manual_seed(0)
    return {
        "x_train": torch.rand(64, 12, generator=generator, dtype=torch.float64),
        "y_train": torch.randint(0, 10, (64,), generator=generator),
        "x_test": torch.rand(32, 12, generator=generator, dtype=torch.float64),
        "y_test": torch.randint(0, 10, (32,), generator=generator),
        "num_classes": 10,
    }


def small_spec():
    return RunSpec("small", dict(SMALL_EXPERIMENT), 0.0, seed=3, checkpoint_per_decade=4, log_per_decade=10)


class Crash(Exception):
    pass


def train_until_crash(spec, dataset, run_dir, monkeypatch, crash_step):
    """Train until the update from ``crash_step`` (a resume state saved at every look at the clock)."""
    original_next = BatchOrder.next
    calls = {"n": 0}

    def crashing_next(self):
        calls["n"] += 1
        if calls["n"] == crash_step + 1:
            raise Crash
        return original_next(self)

    monkeypatch.setattr(BatchOrder, "next", crashing_next)
    with pytest.raises(Crash):
        train_run(spec, dataset, run_dir, device="cpu", resume_every_s=0.0, progress=False)
    monkeypatch.setattr(BatchOrder, "next", original_next)


def workflow_tables(checkpoints: Path, dataset, seed: int, work: Path) -> dict[str, pd.DataFrame]:
    """htsr.csv, traps.csv and progress.csv as the workflow's rules make them from a whole folder."""
    write_spectra(checkpoints, work / "htsr.csv", work / "spectra.npz", run_seed=seed)
    write_traps(work / "htsr.csv", work / "spectra.npz", work / "traps.csv")
    progress = progress_for_checkpoints(sorted(checkpoints.glob("step*.pt")), dataset, ProgressSettings(), progress=False)
    progress.to_csv(work / "progress.csv", index=False)
    return {name: read_as_text(work / name) for name in ("htsr.csv", "traps.csv", "progress.csv")}


def assert_same_tables(ours: dict[str, pd.DataFrame], workflow: dict[str, pd.DataFrame]) -> None:
    """Equal as text, cell by cell (a count written as 4.0 instead of 4 differs)."""
    for name, table in workflow.items():
        pd.testing.assert_frame_equal(ours[name].drop(columns=TIMINGS, errors="ignore"),
                                      table.drop(columns=TIMINGS, errors="ignore"), obj=name)


def read_as_text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def reference_tables(run: LongRun) -> dict[str, pd.DataFrame]:
    return {name: read_as_text(run.reference_dir / name) for name in ("htsr.csv", "traps.csv", "progress.csv")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The small run trained in one go, and the workflow's tables of it."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    dataset = small_dataset()
    train_run(small_spec(), dataset, folder / "run", device="cpu", progress=False)
    return folder / "run", workflow_tables(folder / "run" / "checkpoints", dataset, 3, folder)


def test_the_paper_cpu_runs_keep_their_fingerprints():
    config = load_workflow_config([ROOT / "configs" / "paper_cpu.yaml"])
    runs = long_runs.long_runs(config, "results", "docs/reference/paper_cpu")
    assert {run.name: run.spec.fingerprint() for run in runs} == PAPER_CPU_FINGERPRINTS, (
        "the fingerprint of a paper_cpu run changed: its committed resume state would be refused and the "
        "13-hour run restarted from step 0 (see the comment above PAPER_CPU_FINGERPRINTS)")
    config_yaml = load_workflow_config()
    assert run_settings(config_yaml["experiments"]["mnist_mlp"]) == runs[0].spec.experiment_cfg, (
        "configs/paper_cpu.yaml's experiment must stay config.yaml's mnist_mlp, unchanged")


def test_rows_analysed_as_checkpoints_appear_equal_the_workflow_rules(tmp_path, monkeypatch, uninterrupted):
    reference_run, workflow = uninterrupted
    dataset = small_dataset()
    run = LongRun(small_spec(), tmp_path / "results" / "run", tmp_path / "reference" / "run")
    train_until_crash(run.spec, dataset, run.run_dir, monkeypatch, crash_step=40)
    assert analyse(run, dataset, SETTINGS) > 0  # the checkpoints so far, while the run is under way
    partial = pd.read_csv(run.reference_dir / "htsr.csv")
    assert partial["step"].max() <= 40
    assert analyse(run, dataset, SETTINGS) == 0  # nothing new, nothing analysed twice
    train_run(run.spec, dataset, run.run_dir, device="cpu", progress=False)
    assert analyse(run, dataset, SETTINGS) > 0
    assert_same_tables(reference_tables(run), workflow)
    train_log = pd.read_csv(run.reference_dir / "train_log.csv")
    pd.testing.assert_frame_equal(train_log, pd.read_csv(reference_run / "train_log.csv"))
    phases = pd.read_csv(run.reference_dir / "phases.csv")
    expected = pd.read_csv(io.StringIO(segment_phases(train_log, PhaseThresholds()).to_csv(index=False)))
    pd.testing.assert_frame_equal(phases, expected)  # the phases rule's file of the same train log


def test_a_run_moved_to_a_fresh_machine_continues_from_its_committed_state(tmp_path, monkeypatch, uninterrupted):
    reference_run, workflow = uninterrupted
    dataset = small_dataset()
    reference_dir = tmp_path / "docs" / "run"
    first = LongRun(small_spec(), tmp_path / "machine_a" / "run", reference_dir)
    train_until_crash(first.spec, dataset, first.run_dir, monkeypatch, crash_step=120)
    analyse(first, dataset, SETTINGS)
    saved = save_state(first)  # the last state before the crash, at an event step
    assert 0 < saved <= 120

    # Machine B starts with the reference folder only (the commit), not machine A's checkpoints.
    second = LongRun(small_spec(), tmp_path / "machine_b" / "run", reference_dir)
    assert f"continues from the committed state at step {saved}" in restore(second)
    assert "as new as the committed one" in restore(second)
    train_run(second.spec, dataset, second.run_dir, device="cpu", progress=False)
    analyse(second, dataset, SETTINGS)

    # Same CPU here, so the moved run equals the uninterrupted one bit for bit (another CPU: statistically).
    assert (second.run_dir / "train_log.csv").read_bytes() == (reference_run / "train_log.csv").read_bytes()
    assert_same_tables(reference_tables(second), workflow)
    assert not (second.run_dir / "checkpoints" / "step000000001.pt").exists()
    with pytest.raises(FileNotFoundError, match="trained and analysed on another machine"):
        write_spectra(second.run_dir / "checkpoints", tmp_path / "h.csv", tmp_path / "s.npz", run_seed=3)

    segments = pd.read_csv(reference_dir / "train_segments.csv")
    # machine A's segment, kept from its state; B's finished in one job (its log has it)
    assert segments[["start_step", "end_step"]].values.tolist() == [[0, saved]]
    assert segments["cpu"].str.len().min() > 0 and segments["commit"].str.len().min() > 0
    edges = pd.read_csv(reference_dir / "checkpoints.csv")
    assert edges.loc[edges["edge"] == "end", "checkpoint_step"].tolist() == [300]
    assert sorted(p.name for p in (reference_dir / "checkpoints").glob("*.safetensors")) == sorted(edges["file"])
    assert save_state(second) is None and not (reference_dir / "resume").exists()


def test_restore_drops_the_rows_of_a_lost_continuation(tmp_path, monkeypatch):
    dataset = small_dataset()
    reference_dir = tmp_path / "docs" / "run"
    first = LongRun(small_spec(), tmp_path / "machine_a" / "run", reference_dir)
    train_until_crash(first.spec, dataset, first.run_dir, monkeypatch, crash_step=30)
    saved = save_state(first)  # the state committed at step 30 or just before ...
    shutil.rmtree(first.run_dir / ".resume" / "checkpoints", ignore_errors=False)
    shutil.rmtree(first.run_dir)
    train_until_crash(first.spec, dataset, first.run_dir, monkeypatch, crash_step=150)
    analyse(first, dataset, SETTINGS)  # ... rows analysed up to step 150, then machine A is lost
    assert pd.read_csv(reference_dir / "htsr.csv")["step"].max() > saved

    second = LongRun(small_spec(), tmp_path / "machine_b" / "run", reference_dir)
    message = restore(second)
    assert "dropped" in message and f"from step {saved}" in message
    assert pd.read_csv(reference_dir / "htsr.csv")["step"].max() < saved
    assert pd.read_csv(reference_dir / "progress.csv")["step"].max() < saved


def test_a_committed_state_of_other_settings_is_refused_not_restarted(tmp_path, monkeypatch):
    dataset = small_dataset()
    run = LongRun(small_spec(), tmp_path / "a" / "run", tmp_path / "docs" / "run")
    train_until_crash(run.spec, dataset, run.run_dir, monkeypatch, crash_step=20)
    save_state(run)
    changed = RunSpec("small", dict(SMALL_EXPERIMENT, batch_size=8), 0.0, seed=3, checkpoint_per_decade=4,
                      log_per_decade=10)
    other = LongRun(changed, tmp_path / "b" / "run", run.reference_dir)
    with pytest.raises(ValueError, match="made under other settings.*restart the run from step 0"):
        restore(other)
    assert not (other.run_dir / ".resume").exists()


def test_edge_checkpoints_follow_the_provisional_phases():
    steps = [0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000]
    train_acc = [0.1, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    test_acc = [0.1, 0.2, 0.3, 0.3, 0.3, 0.5, 0.9, 0.9, 0.6, 0.5]
    train_log = pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": test_acc})
    thresholds = PhaseThresholds(smoothing_window=1)
    so_far = long_runs.edge_steps(train_log.iloc[:8], steps[:8], thresholds, finished=False)
    assert so_far["fit"] == (10, 10) and so_far["peak"] == (300, 300) and "decline_start" not in so_far
    assert "end" not in so_far  # the newest checkpoint is in the resume state; the end only once finished
    done = long_runs.edge_steps(train_log, [0, 1, 10, 100, 1000, 10000], thresholds, finished=True)
    assert done["peak"] == (300, 100)  # nearest in log step among the analysed checkpoints (tie: the earlier)
    assert done["decline_start"][0] == 3000 and done["end"] == (10000, 10000)


def test_progress_line_and_speed():
    assert progress_line("r", 1_000_000, 10_000_000, 200.0) == (
        "r: step 1000000 of 10000000 (10.0%), 200 steps/s, 12.5 h left at that rate")
    assert progress_line("r", 0, 100, math.nan).endswith("speed not measured yet")
    meter = SpeedMeter(step=100, now=0.0, every_s=600.0)
    assert not meter.due(599.0) and meter.due(600.0)
    assert meter.measure(step=120_100, now=600.0) == 200.0


def test_follow_measures_speed_since_its_last_look_not_over_a_paused_job():
    def state(step, wall_s, start_step=1_000_000):
        return {"step": step, "segments": [{"start_step": start_step, "wall_s": wall_s,
                                            "steps_per_s": (step - start_step) / wall_s}]}

    speed = RecentSpeed()
    # An hour into the job, paused for most of it: the first look has only the job's average.
    assert speed.steps_per_s("r", state(1_060_000, 3600.0)) == pytest.approx(60_000 / 3600)
    # 300 s later, 200 steps/s (the job's average would still say 31).
    assert speed.steps_per_s("r", state(1_120_000, 3900.0)) == pytest.approx(200.0)
    # A state that has not moved (the job paused or dead): 0, and the line says so, not a time left.
    assert speed.steps_per_s("r", state(1_120_000, 3900.0)) == 0.0
    assert progress_line("r", 1_120_000, 10_000_000, 0.0) == (
        "r: step 1120000 of 10000000 (11.2%), no new resume state since the last look (paused, stopped or dead?)")
    # Moving again after the pause: the speed over the looks' interval of job wall time.
    assert speed.steps_per_s("r", state(1_180_000, 4200.0)) == pytest.approx(200.0)
    # A new job (continued elsewhere): its own average until the next look.
    assert speed.steps_per_s("r", state(2_010_000, 50.0, start_step=2_000_000)) == pytest.approx(200.0)


def test_a_state_from_before_segments_gets_an_unrecorded_first_segment():
    segments = start_segment([], step=5000)
    assert [(s["start_step"], s["end_step"], s["machine"]) for s in segments[:1]] == [(0, 5000, "unrecorded")]
    assert segments[1]["start_step"] == 5000 and segments[1]["machine"]
    assert len(start_segment([], step=0)) == 1


def test_status_line_of_a_run_not_started(tmp_path):
    run = LongRun(small_spec(), tmp_path / "none", tmp_path / "docs")
    assert "no resume state" in status_line(run)


def test_the_script_reports_the_runs_of_a_config(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "long_run.py"), "status", "--configfile",
                             str(ROOT / "configs" / "paper_cpu.yaml"), "--out", str(tmp_path / "ref"),
                             "--results", str(tmp_path / "results")],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    assert "mnist_mlp/wd0.0/seed0: no resume state" in result.stdout
    assert "mnist_mlp/wd0.01/seed0: no resume state" in result.stdout


def test_the_hourly_commit_takes_the_reference_folder_alone(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    from long_run import git_commit_paths

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "htsr.csv").write_text("step\n0\n")
    (tmp_path / "other.txt").write_text("work in progress\n")
    subprocess.run(["git", "add", "other.txt"], check=True)  # someone else's staged change
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t"), monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@t")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t"), monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@t")
    assert git_commit_paths([Path("out/runs")], "rows")
    committed = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert committed == ["out/runs/htsr.csv"]
    assert "other.txt" in subprocess.run(["git", "diff", "--cached", "--name-only"], capture_output=True, text=True,
                                         check=True).stdout  # still staged, not committed
    assert not git_commit_paths([Path("out/runs")], "rows")  # nothing new: no empty commit


def test_appended_counts_stay_integers_where_a_fit_failed(tmp_path):
    """A layer whose fit failed has no count (NaN): read back, the column is float, and without care the
    next append would write 4.0 where the workflow's htsr.csv writes 4."""
    run = LongRun(small_spec(), tmp_path / "run", tmp_path / "docs")
    run.reference_dir.mkdir(parents=True)
    first = pd.DataFrame({"step": [0, 0], "num_fingers": pd.array([4, None], dtype="Int64")})
    first.to_csv(run.reference_dir / "htsr.csv", index=False)
    long_runs.append_rows(run, "htsr.csv", pd.DataFrame({"step": [1], "num_fingers": pd.array([3], dtype="Int64")}))
    assert (run.reference_dir / "htsr.csv").read_text().splitlines() == ["step,num_fingers", "0,4", "0,", "1,3"]


def test_follow_waits_for_the_data_rule_on_a_fresh_machine(tmp_path, caplog):
    # Training and the follow loop start together: the first analysis comes before the data rule
    # has written the subset, and must wait for it, not end the loop.
    sys.path.insert(0, str(ROOT / "scripts"))
    from long_run import analyse_all

    run = LongRun(small_spec(), tmp_path / "results" / "runs" / "small", tmp_path / "docs")
    run.run_dir.mkdir(parents=True)
    config = load_workflow_config()
    with caplog.at_level("INFO"):
        assert analyse_all([run], config, tmp_path / "results") == {}
    assert "waiting for" in caplog.text and "data rule" in caplog.text
