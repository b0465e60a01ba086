"""antigrok.runs: the run-folder layout (paths, checkpoint files, the checkpoint nearest a step)."""

from __future__ import annotations

import pandas as pd

from conftest import REPO

from antigrok.runs import RUN_DIR, checkpoint_files, checkpoint_path, nearest_checkpoint_step, parse_run_dir


def test_a_run_folder_and_its_checkpoint_files(tmp_path):
    run = tmp_path / RUN_DIR.format(experiment="mnist_mlp", weight_decay="0.01", seed=2)
    folder = run / "checkpoints"
    folder.mkdir(parents=True)
    for step, suffix in [(10, ".pt"), (10, ".safetensors"), (100, ".safetensors"), (1, ".pt")]:
        checkpoint_path(folder, step, suffix).write_text("")
    (folder / "held_elsewhere.json").write_text("{}")
    (folder / "notes.pt").write_text("")  # not step{N}: not a checkpoint
    assert checkpoint_path(folder, 10).name == "step000000010.pt"
    assert checkpoint_files(folder) == {1: folder / "step000000001.pt", 10: folder / "step000000010.pt",
                                        100: folder / "step000000100.safetensors"}
    assert list(checkpoint_files(folder, (".safetensors",))) == [10, 100]
    assert checkpoint_files(tmp_path / "absent") == {}
    assert parse_run_dir(run / "htsr.csv") == ("mnist_mlp", 0.01, 2)


def test_the_nearest_checkpoint_is_nearest_in_log_step():
    steps = [0, 1, 10, 100, 1000, 10000]
    assert nearest_checkpoint_step(steps, 300) == 100  # log10 300 = 2.48: nearer 2 than 3
    assert nearest_checkpoint_step(steps, 400) == 1000
    assert nearest_checkpoint_step(steps, 0) == 0
    assert nearest_checkpoint_step(steps, 50000) == 10000
    assert nearest_checkpoint_step([10, 1000], 100) == 10  # a tie: the earlier one


def test_the_one_metric_picks_every_committed_edge_checkpoint():
    # The edge checkpoints that the references keep (scripts/export_study_run.py, long_runs) are
    # the ones this metric picks from the run's analysed steps.
    rows = 0
    for index in sorted((REPO / "docs" / "reference").rglob("checkpoints.csv")):
        steps = sorted(set(pd.read_csv(index.parent / "htsr.csv")["step"]))
        for row in pd.read_csv(index).itertuples():
            if row.edge != "end":
                assert nearest_checkpoint_step(steps, row.edge_step) == row.checkpoint_step, (index, row)
                rows += 1
    assert rows >= 20
