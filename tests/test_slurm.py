"""profiles/slurm against a live single-node SLURM: the smoke DAG, training on a (fake) GPU.

Starts slurmctld, slurmd and munged (tests/slurm_cluster.py), runs the smoke workflow in a copy
with `--profile profiles/slurm` and the overrides a cluster without slurmdbd needs, and checks
that it produces exactly the output files of the DAG (what a local run makes, as
`snakemake --summary` lists them), with every training run in a SLURM job that was allocated a
GPU. It does not wait for a local smoke run (the session fixture): the DAG's own list is the
reference, which keeps the test to one workflow run. The DAG is the smoke DAG with the MNIST
experiment alone and one seed per weight decay (``one_seed_smoke_config``): every rule of the MNIST
pipeline, mechanism included, still runs as a SLURM job, in half the jobs (each SLURM job costs
seconds of submission and status polling on top of its work). Skipped where slurm-wlm/munge are
not installed or we are not root.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import copy_workflow, requires_mnist, snakemake
from slurm_cluster import SingleNodeSlurm, missing_requirements

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Test-only overrides on top of the shipped profile: no slurmdbd here, so `sacct` does not work
# and job status comes from `squeue` (finished jobs stay listed: the test cluster's MinJobAge is
# large); a short first status check keeps the test quick.
TEST_OVERRIDES = (
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
)
# The GPU is fake (gres on /dev/null): torch must stay on the CPU, as in tests/smoke.yaml.
CPU_TRAINING = {"train": {"device": "cpu"}}
TRAIN_LOG_LINE = re.compile(r"SLURM_JOB_ID=(\d+) CUDA_VISIBLE_DEVICES=(\S*)")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with SingleNodeSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def one_seed_smoke_config(workdir: Path) -> None:
    """Rewrite the copy's tests/smoke.yaml to its MNIST experiment with seed 0 alone (both weight
    decays, so the mechanism's weight-decay control stays in the DAG)."""
    smoke = workdir / "tests" / "smoke.yaml"
    config = yaml.safe_load(smoke.read_text(encoding="utf-8"))
    mnist = config["experiments"]["mnist_mlp"]
    config["experiments"] = {"mnist_mlp": {**mnist, "seeds": [0]}}
    config["htsr"]["average_layers"] = {"mnist_mlp": config["htsr"]["average_layers"]["mnist_mlp"]}
    smoke.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def result_files(workdir: Path) -> set[str]:
    return {str(path.relative_to(workdir)) for path in (workdir / "results").rglob("*") if path.is_file()}


def dag_outputs(workdir: Path) -> list[str]:
    """Every output file or directory of the smoke DAG (`snakemake --summary`), before running it."""
    summary = snakemake(workdir, "--summary", overrides=CPU_TRAINING).stdout
    rows = [line.split("\t") for line in summary.splitlines()]
    return [row[0] for row in rows[1:] if row and row[0]]


def expected_files(workdir: Path, outputs: list[str]) -> set[str]:
    """The files the DAG's outputs are: a file itself, or the files in an output directory."""
    files = set()
    for output in outputs:
        path = workdir / output
        if path.is_dir():
            inside = {str(f.relative_to(workdir)) for f in path.rglob("*") if f.is_file()}
            assert inside, f"output directory {output} is empty"
            files |= inside
        else:
            files.add(output)
    return files


def train_logs(workdir: Path) -> list[Path]:
    return sorted((workdir / "logs" / "train").rglob("*.log"))


@requires_mnist
def test_smoke_dag_runs_on_slurm_with_a_gpu_per_training_run(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    one_seed_smoke_config(workdir)
    outputs = dag_outputs(workdir)
    assert any(output.endswith("train_log.csv") for output in outputs), outputs
    assert not any("modadd" in output or "seed1" in output for output in outputs), outputs

    snakemake(workdir, "--profile", str(workdir / "profiles" / "slurm"), *TEST_OVERRIDES,
              overrides=CPU_TRAINING, timeout=1800)

    # Exactly the DAG's files (nothing missing, no leftovers such as a resume state), up to date.
    assert result_files(workdir) == expected_files(workdir, outputs)
    assert "Nothing to be done" in snakemake(workdir, "-n", overrides=CPU_TRAINING).stdout

    # Every training run ran inside a SLURM job that SLURM gave a GPU.
    logs = train_logs(workdir)
    assert len(logs) == len(list((workdir / "results").rglob("train_log.csv"))) > 0
    for log in logs:
        match = TRAIN_LOG_LINE.search(log.read_text())
        assert match, f"{log}: no SLURM_JOB_ID line, so the run did not go through SLURM"
        job_id, cuda_visible_devices = match.groups()
        assert cuda_visible_devices != "", f"{log}: SLURM set no CUDA_VISIBLE_DEVICES"
        job = slurm_cluster.job_info(job_id)
        assert "JobState=COMPLETED" in job, job
        assert f"Partition={slurm_cluster.partition}" in job, job
        assert re.search(r"TresPerJob=\S*gpu:1", job), f"job {job_id} got no GPU: {job}"

    # Analysis jobs went to SLURM too, without a GPU; the Snakefile's localrules stayed local.
    jobs = slurm_cluster.all_jobs()
    rules = {job["rule"] for job in jobs}
    assert {"train", "spectra", "traps", "progress", "prototypes", "trap_removal"} <= rules, rules
    assert not rules & {"prepare_data", "tables"}, rules
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        assert ("gpu" in job["tres_per_job"]) == (job["rule"] == "train"), job
