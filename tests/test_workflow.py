"""End to end: the smoke workflow (tests/smoke.yaml) through snakemake gives the results layout."""

import pandas as pd
import pytest
import torch
import yaml

from antigrok.training.schedule import checkpoint_steps
from conftest import REPO, snakemake

pytestmark = pytest.mark.slow
SMOKE = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())
RUN_FILES = ["train_log.csv", "htsr.csv", "traps.csv", "progress.csv", "phases.csv", "spectra.npz"]


def smoke_runs():
    for name, experiment in SMOKE["experiments"].items():
        for weight_decay in experiment["weight_decays"]:
            for seed in experiment["seeds"]:
                yield name, experiment, f"results/runs/{name}/wd{float(weight_decay)}/seed{seed}"


def test_every_run_has_the_results_layout(smoke_workdir):
    per_decade = SMOKE["checkpoints"]["per_decade"]
    for name, experiment, run_dir in smoke_runs():
        run = smoke_workdir / run_dir
        for filename in RUN_FILES:
            assert (run / filename).is_file(), f"{run_dir}/{filename} missing"
        expected = [f"step{s:09d}.pt" for s in checkpoint_steps(experiment["steps"], per_decade)]
        assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == expected
        checkpoint = torch.load(run / "checkpoints" / expected[-1], weights_only=False)
        assert checkpoint["step"] == experiment["steps"]
        assert all(t.dtype == torch.float64 for t in checkpoint["model"].values())
        train_log = pd.read_csv(run / "train_log.csv")
        assert list(train_log.columns) == ["step", "train_loss", "train_acc", "test_loss", "test_acc"]
        assert train_log["step"].iloc[-1] == experiment["steps"]
        assert not (run / ".resume").exists()


def test_tables_figures_and_logs_exist(smoke_workdir):
    tables = smoke_workdir / "results" / "tables"
    for name in ["table1_alpha", "table2_traps", "table4_mp_fit", "detectors"]:
        assert (tables / f"{name}.csv").is_file(), name
    assert (tables / "table1_alpha.md").is_file()
    figures = sorted((smoke_workdir / "results" / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 10_000 for f in figures)
    assert all(f.with_suffix(".pdf").is_file() for f in figures)
    train_log = smoke_workdir / "logs" / "train" / "mnist_mlp" / "wd0.0" / "seed0.log"
    assert "step/s" in train_log.read_text()  # the tqdm bar with its rate goes to the job log


def test_a_completed_workflow_has_nothing_left_to_do(smoke_workdir):
    result = snakemake(smoke_workdir, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
