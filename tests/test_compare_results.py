"""scripts/compare_results.py: two results folders are the same when their CSVs, spectra and tensors are."""

import sys

import numpy as np
import pandas as pd
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import compare_results  # noqa: E402 (scripts/ is no package)


def test_values_compare_tensors_inside_containers():
    one = {"step": 3, "model": {"w": torch.ones(2, 2)}, "x_train": torch.arange(4)}
    assert compare_results.same_value(one, {"step": 3, "model": {"w": torch.ones(2, 2)}, "x_train": torch.arange(4)})
    assert not compare_results.same_value(one, {**one, "x_train": torch.arange(4) + 1})
    assert not compare_results.same_value(one, {**one, "model": {"w": torch.ones(2, 2, dtype=torch.float32).double()}})
    assert not compare_results.same_value({"a": 1}, {"a": 1.0})


def test_folders_differ_in_one_file_and_the_timing_column_is_ignored(tmp_path, capsys):
    for side, seconds, alpha in (("old", 1.0, 2.5), ("new", 9.0, 2.5)):
        run = tmp_path / side / "runs" / "e" / "wd0.0" / "seed0"
        run.mkdir(parents=True)
        pd.DataFrame({"step": [1], "alpha": [alpha], "analysis_seconds": [seconds]}).to_csv(run / "htsr.csv", index=False)
        np.savez(run / "spectra.npz", evals=np.arange(3.0))
        torch.save({"step": 1, "model": {"w": torch.zeros(2)}}, run / "step1.pt")
    assert compare_results.main(tmp_path / "old", tmp_path / "new") == 0
    torch.save({"step": 1, "model": {"w": torch.ones(2)}}, tmp_path / "new" / "runs" / "e" / "wd0.0" / "seed0" / "step1.pt")
    assert compare_results.main(tmp_path / "old", tmp_path / "new") == 1
    assert "differs: runs/e/wd0.0/seed0/step1.pt" in capsys.readouterr().out
