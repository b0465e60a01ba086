"""scripts/export_study_run.py: a finished run's CSVs and its phase-edge checkpoints, exported once."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from export_study_run import edge_checkpoints  # noqa: E402


def fake_run(folder: Path, decline: bool) -> Path:
    run = folder / "results/runs/mnist_x/wd0.0/seed3"
    (run / "checkpoints").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for step in (0, 100, 1000, 3162, 10000):
        model = {"fc1.weight": torch.tensor(rng.standard_normal((4, 6))), "fc1.bias": torch.tensor(rng.standard_normal(4))}
        torch.save({"step": step, "model": model}, run / "checkpoints" / f"step{step:09d}.pt")
    steps = [0, 100, 1000, 3000, 10000]
    phases = pd.DataFrame({"step": steps, "peak_step": 1100, "anti_grokking_start_step": 2900 if decline else pd.NA})
    phases.to_csv(run / "phases.csv", index=False)
    for name in ("train_log.csv", "htsr.csv", "traps.csv", "progress.csv"):
        (run / name).write_text(f"step,{name}\n0,1\n")
    return run


@pytest.mark.parametrize("decline", [True, False])
def test_export_writes_the_edge_checkpoints_as_safetensors_and_refuses_a_second_export(tmp_path, decline):
    from safetensors.numpy import load_file

    run = fake_run(tmp_path, decline)
    out = tmp_path / "reference"
    command = [sys.executable, str(ROOT / "scripts/export_study_run.py"), str(run), "--out", str(out),
               "--command", "snakemake ...", "--workdir", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    target = out / "runs/mnist_x/wd0.0/seed3"
    index = pd.read_csv(target / "checkpoints.csv")
    expected = [("peak", 1000), ("decline_start", 3162), ("end", 10000)] if decline else [("peak", 1000), ("end", 10000)]
    assert list(zip(index["edge"], index["checkpoint_step"])) == expected
    for step in index["checkpoint_step"]:
        saved = load_file(target / "checkpoints" / f"step{step:09d}.safetensors")
        original = torch.load(run / "checkpoints" / f"step{step:09d}.pt", weights_only=True)["model"]
        assert saved.keys() == original.keys()
        for name, tensor in original.items():
            np.testing.assert_array_equal(saved[name], tensor.numpy())
            assert saved[name].dtype == np.float64
    assert (target / "train_log.csv").read_bytes() == (run / "train_log.csv").read_bytes()
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["experiment", "weight_decay", "seed"]].values.tolist() == [["mnist_x", 0.0, 3]]
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode != 0 and "exported already" in again.stderr


def test_edges_without_a_decline_skip_the_decline_start():
    phases = pd.DataFrame({"step": [0, 10, 100], "peak_step": 10, "anti_grokking_start_step": pd.NA})
    assert edge_checkpoints(phases, [0, 10, 100]) == [("peak", 10, 10), ("end", 100, 100)]
