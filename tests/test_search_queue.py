"""scripts/search_queue.py: the transformer search run one run at a time, each run kept as it finishes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, copy_workflow, dry_run_jobs

sys.path.insert(0, str(REPO / "scripts"))
import search_queue  # noqa: E402 (scripts/ is no package)
from search_queue import Run  # noqa: E402

from antigrok.workflow_config import load_workflow_config  # noqa: E402

SEARCH_CONFIG = "configs/modadd_search.yaml"


def test_the_queue_is_the_search_grid_in_the_configs_order():
    runs = search_queue.queue(load_workflow_config([str(REPO / SEARCH_CONFIG)]))
    assert len(runs) == 12
    assert runs[0] == Run("search_f32_smallwd", "0.001", 0)
    assert runs[-1] == Run("search_nanda_p113", "1.0", 0)
    assert [run.seed for run in runs if run.experiment == "search_verma"] == [0, 1]
    assert runs[0].folder == "results/runs/search_f32_smallwd/wd0.001/seed0"


def test_one_runs_targets_are_that_run_alone_through_the_workflow(tmp_path):
    """What the queue asks Snakemake for trains and analyses one run and draws its figures, nothing else."""
    workdir = copy_workflow(tmp_path)
    run = Run("search_mse", "0.0", 0)
    targets = search_queue.run_targets(run) + search_queue.pair_figures(run.experiment, run.weight_decay)
    command = search_queue.snakemake_command([SEARCH_CONFIG], targets, cores=1) + ["-n"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = dry_run_jobs(result.stdout)
    figures = {f"figure_{name}": 1 for name in search_queue.PAIR_FIGURES}
    assert jobs == {"prepare_data": 1, "train": 1, "spectra": 1, "traps": 1, "progress": 1, "phases": 1, **figures}


class FakeWorkflow:
    """Stands in for snakemake: writes what the real jobs would (a diverging run: its job's log alone)."""

    def __init__(self, workdir: Path, diverging: set[Run]):
        self.workdir, self.diverging, self.calls = workdir, diverging, []

    def __call__(self, command: list[str], log_path: Path) -> int:
        targets = command[3:command.index("--configfile")]
        self.calls.append(targets)
        for target in targets:
            if target.startswith("results/figures/"):
                (self.workdir / target).parent.mkdir(parents=True, exist_ok=True)
                (self.workdir / target).write_bytes(b"png")
                continue
            run = next(run for run in RUNS if target.startswith(run.folder + "/"))
            job_log = self.workdir / search_queue.train_job_log(run)
            job_log.parent.mkdir(parents=True, exist_ok=True)
            if run in self.diverging:
                job_log.write_text("antigrok.training.train.NonFiniteLossError: train loss nan at step 812\n")
                return 1
            (self.workdir / target).parent.mkdir(parents=True, exist_ok=True)
            (self.workdir / target).write_text(f"{target}\n")
            pd.DataFrame({"s": [60.0], "cpu_time": [55.5]}).to_csv(search_queue.train_benchmark(run), sep="\t",
                                                                   index=False)
        return 0


RUNS = [Run("arm_a", "0.0", 0), Run("arm_a", "0.0", 1), Run("arm_b", "1.0", 0), Run("arm_c", "0.0", 0)]


class Clock:
    def __init__(self, step_minutes: float):
        self.moment = dt.datetime(2026, 12, 7, 21, 0, tzinfo=dt.timezone.utc)
        self.step = dt.timedelta(minutes=step_minutes)

    def __call__(self) -> dt.datetime:
        self.moment += self.step
        return self.moment


def test_the_queue_keeps_each_run_as_it_ends_and_stops_before_the_deadline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reference"
    workflow = FakeWorkflow(tmp_path, diverging={RUNS[2]})
    # 20 min between looks at the clock, three looks a run: the fourth run would start at minute 200 and
    # end, by its 60-minute estimate, after the 230-minute deadline
    start = dt.datetime(2026, 12, 7, 21, 0, tzinfo=dt.timezone.utc)
    finished = search_queue.process_queue(RUNS, out, tmp_path, [SEARCH_CONFIG], 1, start + dt.timedelta(minutes=230),
                                          60, do_commit=False, runner=workflow, now=Clock(20))
    assert finished == RUNS[:3]

    for run in RUNS[:2]:
        kept = search_queue.kept_dir(out, run)
        assert sorted(path.name for path in kept.iterdir()) == sorted(
            [*search_queue.RUN_FILES, "seed{}.benchmark.tsv".format(run.seed)])
        assert (kept / "train_log.csv").read_text() == f"{run.folder}/train_log.csv\n"  # copied unedited
    # arm_a's figures once, after its second seed; none for the diverged arm_b
    figure_calls = [targets for targets in workflow.calls if targets[0].startswith("results/figures/")]
    assert figure_calls == [search_queue.pair_figures("arm_a", "0.0")]
    assert sorted(path.name for path in (out / "figures").iterdir()) == sorted(
        Path(figure).name for figure in search_queue.pair_figures("arm_a", "0.0"))
    diverged = search_queue.kept_dir(out, RUNS[2])
    assert [path.name for path in diverged.iterdir()] == [search_queue.FAILED_LOG]
    assert "NonFiniteLossError" in (diverged / search_queue.FAILED_LOG).read_text()

    table = pd.read_csv(out / search_queue.QUEUE_RUNS)
    assert table["status"].tolist() == ["done", "done", "diverged"]
    assert table["wall_s"].tolist() == [1200.0, 1200.0, 1200.0]
    assert table["training_cpu_s"].tolist()[:2] == [55.5, 55.5]
    assert not search_queue.is_done(out, RUNS[3])

    # the next period goes on with what is left
    finished = search_queue.process_queue(RUNS, out, tmp_path, [SEARCH_CONFIG], 1, None, 60, do_commit=False,
                                          runner=workflow, now=Clock(20))
    assert finished == [RUNS[3]]
    assert len(pd.read_csv(out / search_queue.QUEUE_RUNS)) == 4


def test_a_failed_run_that_did_not_diverge_stops_the_queue_and_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reference"
    with pytest.raises(SystemExit, match="arm_a/wd0.0/seed0: snakemake failed"):
        search_queue.process_queue(RUNS, out, tmp_path, [SEARCH_CONFIG], 1, None, 60, do_commit=False,
                                   runner=lambda command, log_path: 1, now=Clock(20))
    assert not out.exists() or not any(out.rglob("*.csv"))


def test_stop_by_reads_utc_and_zones():
    assert search_queue.parse_utc("2026-12-08T02:20Z") == dt.datetime(2026, 12, 8, 2, 20, tzinfo=dt.timezone.utc)
    assert search_queue.parse_utc("2026-12-08T02:20") == dt.datetime(2026, 12, 8, 2, 20, tzinfo=dt.timezone.utc)
    assert search_queue.parse_utc("2026-12-08T03:20+01:00") == dt.datetime(2026, 12, 8, 2, 20,
                                                                          tzinfo=dt.timezone.utc)
