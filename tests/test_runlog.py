"""The SLURM allocation line of a job's log: written from the environment, read back by the SLURM test."""

from __future__ import annotations

from antigrok.runlog import UNSET, log_slurm_allocation, read_slurm_allocation, slurm_allocation_line, to_log_file


def test_no_allocation_line_outside_slurm():
    assert slurm_allocation_line({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert read_slurm_allocation("2026-12-06 INFO antigrok: step 1000\n") is None


def test_the_line_tells_an_unset_variable_from_an_empty_one():
    environ = {"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "1", "CUDA_VISIBLE_DEVICES": ""}
    line = slurm_allocation_line(environ)
    assert line == f"SLURM_JOB_ID=7 SLURM_JOB_GPUS={UNSET} SLURM_STEP_GPUS=1 CUDA_VISIBLE_DEVICES="
    assert read_slurm_allocation(f"2026-12-06 22:00:00,000 INFO antigrok: {line}\nnext line\n") == {
        "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": None, "SLURM_STEP_GPUS": "1", "CUDA_VISIBLE_DEVICES": "",
    }


def test_a_training_log_starts_with_the_allocation(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    log = tmp_path / "train.log"
    with to_log_file(log):
        log_slurm_allocation()
    assert read_slurm_allocation(log.read_text()) == {
        "SLURM_JOB_ID": "12", "SLURM_JOB_GPUS": "0", "SLURM_STEP_GPUS": None, "CUDA_VISIBLE_DEVICES": "0",
    }
