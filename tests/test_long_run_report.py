"""``scripts/long_run.py report`` (antigrok.report.long_run_report): the long runs' figures and tables from
their reference folder alone, labelled provisional while a run trains and never once it is done."""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from matplotlib.text import Text
from test_long_runs import SETTINGS, SMALL_EXPERIMENT, train_until_crash

from antigrok.report import figures
from antigrok.report import long_run_report
from antigrok.report.long_run_report import PAPER_TABLES, RunStatus, write_report
from antigrok.runs import read_run_files
from antigrok.study.long_runs import analyse, long_runs
from antigrok.study.paper import compare_with_paper, read_paper_tables
from antigrok.study.phases import PhaseThresholds
from antigrok.study.tables import TIDY_COLUMNS, table1_alpha, table2_traps, table4_mp_fit
from antigrok.training.train import train_run
from antigrok.workflow_config import load_workflow_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = SMALL_EXPERIMENT["steps"]  # 300
CRASH_STEP = 200  # the weight-decay-0 run is caught here, after it has fitted its train set (step ~126)
FIGURES = ["accuracy", "alpha", "progress", "traps"]
TABLE_NAMES = ["table1_alpha", "table2_traps", "table4_mp_fit", "paper_comparison"]

# The small MLP of test_long_runs, at init x1 and lr 1e-2 so that it fits its train set within
# 300 steps: the run reaches phase edges, and the reference folder keeps their checkpoints.
REPORT_CONFIG = {
    "experiments": {"small": {
        **SMALL_EXPERIMENT,
        "model": {**SMALL_EXPERIMENT["model"], "init_scale": 1.0},
        "optimizer": {**SMALL_EXPERIMENT["optimizer"], "lr": 1e-2},
        "weight_decays": [0.0, 0.01],
        "seeds": [3],
    }},
    "checkpoints": {"per_decade": 4},
    "log": {"per_decade": 10},
    "htsr": {"average_layers": {"small": ["fc1", "fc2"]}},
    "paper": {"experiment": "small"},
}


# The test accuracy of this toy rises with the train accuracy: "fitted" at 50 % makes the test
# accuracy's later rise a grokking phase, so that the tables have cells (the report reads phases.csv
# as it is; the thresholds only make the test rows).
ANALYSIS = dataclasses.replace(SETTINGS, phases=PhaseThresholds(train_fit=0.5))


def separable_dataset():
    """Ten classes around ten random centres: learnable, balanced."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(10, 12, generator=generator, dtype=torch.float64)
    labels = torch.arange(96) % 10
    x = centres[labels] + 0.1 * torch.randn(96, 12, generator=generator, dtype=torch.float64)
    return {"x_train": x[:64], "y_train": labels[:64], "x_test": x[64:], "y_test": labels[64:], "num_classes": 10}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The config file, and two reference folders of the same runs: ``provisional`` (wd 0.01 finished,
    wd 0 caught at CRASH_STEP) and ``finished`` (both done)."""
    root = tmp_path_factory.mktemp("report")
    config_file = root / "small.yaml"
    config_file.write_text(yaml.safe_dump(REPORT_CONFIG))
    config = load_workflow_config([config_file])
    dataset = separable_dataset()
    no_decay, decay = long_runs(config, root / "results", root / "finished")
    train_run(decay.spec, dataset, decay.run_dir, device="cpu", progress=False)
    analyse(decay, dataset, ANALYSIS)
    with pytest.MonkeyPatch.context() as patch:
        train_until_crash(no_decay.spec, dataset, no_decay.run_dir, patch, crash_step=CRASH_STEP)
    analyse(no_decay, dataset, ANALYSIS)
    shutil.copytree(root / "finished", root / "provisional")
    train_run(no_decay.spec, dataset, no_decay.run_dir, device="cpu", progress=False)
    analyse(no_decay, dataset, ANALYSIS)
    return config_file, root / "provisional", root / "finished"


def report(config_file: Path, reference: Path, out: Path) -> tuple[str, dict[str, str]]:
    """The report's status line, and every text drawn in each figure it saved, by file name."""
    drawn = {}
    original = figures.save_figure

    def recording_save(figure, paths):
        paths = list(paths)
        drawn[Path(paths[0]).name] = "\n".join(text.get_text() for text in figure.findobj(Text))
        original(figure, paths)

    config = load_workflow_config([config_file])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", recording_save)
        patch.setattr(long_run_report, "save_figure", recording_save)
        status = write_report(long_runs(config, "unused", reference), config, out, command="long_run.py report (test)")
    return status, drawn


@pytest.fixture(scope="module")
def finished_report(folders, tmp_path_factory):
    config_file, _, finished = folders
    out = tmp_path_factory.mktemp("finished_report")
    return (out, *report(config_file, finished, out))


@pytest.fixture(scope="module")
def provisional_report(folders, tmp_path_factory):
    config_file, provisional, _ = folders
    out = tmp_path_factory.mktemp("provisional_report")
    return (out, *report(config_file, provisional, out))


def text_outputs(out: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in [out / "REPORT.md", *sorted((out / "tables").glob("*"))]}


def test_a_finished_report_draws_every_figure_and_table_and_says_finished(folders, finished_report):
    finished = folders[2]
    out, status, titles = finished_report
    assert status == "finished: wd 0 (300 steps); wd 0.01 (300 steps)"
    expected_figures = {f"{name}_small_wd{wd}.png" for name in FIGURES for wd in ("0.0", "0.01")} | {
        "trap_counts_small.png"}
    assert {path.name for path in (out / "figures").iterdir()} == expected_figures
    assert set(titles) == expected_figures
    for path in (out / "figures").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {path.name for path in (out / "tables").iterdir()} == (
        {f"{name}.{ext}" for name in TABLE_NAMES for ext in ("csv", "md")} | {"run_status.csv"})
    texts = text_outputs(out)
    for name, text in {**texts, **titles}.items():
        assert "provisional" not in name + text, name
    for name in expected_figures | {f"{table}.md" for table in TABLE_NAMES}:
        assert name in texts["REPORT.md"]
    assert status in texts["REPORT.md"] and "long_run.py report (test)" in texts["REPORT.md"]
    # the trap figure: each kept edge checkpoint, its spectra recomputed as htsr.csv's rows were
    edges = pd.read_csv(finished / "runs" / "small" / "wd0.0" / "seed3" / "checkpoints.csv")
    assert set(edges["edge"]) >= {"fit", "grokking_start", "peak", "end"}
    for step in edges["checkpoint_step"]:
        assert f"(step {step})" in titles["traps_small_wd0.0.png"]
    assert "end of training (step 300)" in titles["traps_small_wd0.0.png"]
    assert "WARNING" not in texts["REPORT.md"] and "give htsr.csv's largest eigenvalue" in texts["REPORT.md"]


def test_while_a_run_trains_every_output_says_provisional_and_where_it_was(folders, provisional_report):
    provisional = folders[1]
    out, status, titles = provisional_report
    run = provisional / "runs" / "small" / "wd0.0" / "seed3"
    step = int(pd.read_csv(run / "train_log.csv")["step"].max())
    analysed = int(pd.read_csv(run / "htsr.csv")["step"].max())
    assert 0 < analysed <= step < STEPS
    where = f"wd 0 at step {step} of {STEPS}" + (f", rows analysed to step {analysed}" if analysed < step else "")
    assert status == f"provisional: {where}; wd 0.01 finished (300 steps)"
    assert len(titles) == 2 * len(FIGURES) + 1
    assert status in titles.pop("trap_counts_small.png")  # both runs in one figure: the whole status
    for name, title in titles.items():  # each figure says where its own runs were
        assert (f"provisional: {where}" in title) == name.endswith("_wd0.0.png"), name
        assert ("provisional" in title) == name.endswith("_wd0.0.png"), name
    texts = text_outputs(out)
    for name in ["REPORT.md"] + [f"{table}.md" for table in TABLE_NAMES]:
        assert f"**{status}**" in texts[name], name
    for table in TABLE_NAMES:
        rows = pd.read_csv(out / "tables" / f"{table}.csv")
        by_decay = rows.groupby("weight_decay")["status"].unique()
        assert list(by_decay[0.0]) == [f"provisional: {where}"], table
        assert list(by_decay[0.01]) == ["finished: wd 0.01 (300 steps)"], table
    run_status = pd.read_csv(out / "tables" / "run_status.csv")
    assert run_status[["trained_step", "analysed_step", "finished"]].values.tolist() == [
        [step, analysed, False], [STEPS, STEPS, True]]


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def test_the_tables_are_antigrok_summarys_on_the_same_rows(folders, provisional_report):
    provisional = folders[1]
    out = provisional_report[0]
    run_dirs = sorted((provisional / "runs" / "small").glob("wd*/seed3"))
    htsr, traps, phases = (read_run_files([folder / name for folder in run_dirs])
                           for name in ("htsr.csv", "traps.csv", "phases.csv"))
    expected = {
        "table1_alpha": table1_alpha(htsr, phases, {"small": ["fc1", "fc2"]}, ["small"]),
        "table2_traps": table2_traps(traps, phases, ["small"]),
        "table4_mp_fit": table4_mp_fit(htsr, traps, phases, ["small"]),
    }
    assert (expected["table1_alpha"]["n_seeds"] > 0).any()
    for name, table in expected.items():
        written = pd.read_csv(out / "tables" / f"{name}.csv")
        assert list(written.columns) == TIDY_COLUMNS + ["status"]
        pd.testing.assert_frame_equal(written.drop(columns="status"), roundtrip(table), obj=name)
    comparison = compare_with_paper(read_paper_tables(PAPER_TABLES, 0.01),
                                    {"table1": expected["table1_alpha"], "table2": expected["table2_traps"],
                                     "table4": expected["table4_mp_fit"]}, "small")
    written = pd.read_csv(out / "tables" / "paper_comparison.csv")
    pd.testing.assert_frame_equal(written.drop(columns="status"), roundtrip(comparison), obj="paper_comparison")


def test_a_missing_reference_file_is_named(folders, tmp_path, capsys):
    config_file, provisional, _ = folders
    broken = tmp_path / "reference"
    shutil.copytree(provisional, broken)
    run = broken / "runs" / "small" / "wd0.0" / "seed3"
    (run / "traps.csv").unlink()
    config = load_workflow_config([config_file])
    with pytest.raises(FileNotFoundError, match=r"lacks \S*wd0.0/seed3/traps.csv"):
        write_report(long_runs(config, "unused", broken), config, tmp_path / "out", command="test")

    sys.path.insert(0, str(ROOT / "scripts"))
    from long_run import main

    (run / "traps.csv").write_text((provisional / "runs" / "small" / "wd0.0" / "seed3" / "traps.csv").read_text())
    kept = pd.read_csv(run / "checkpoints.csv")["file"].iloc[0]
    (run / "checkpoints" / kept).unlink()  # an edge checkpoint listed in checkpoints.csv
    assert main(["report", "--configfile", str(config_file), "--out", str(broken),
                 "--report-dir", str(tmp_path / "out")]) == 1
    assert f"checkpoints/{kept}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "figures").exists()  # refused before anything was drawn


def test_a_reached_edge_without_its_checkpoint_is_said(folders, tmp_path):
    """An edge whose checkpoint left with its machine (dropped from the copy's checkpoints.csv): the report
    still draws what is kept and says which edge is missing and how to train it again."""
    config_file, _, finished = folders
    copy = tmp_path / "reference"
    shutil.copytree(finished, copy)
    run = copy / "runs" / "small" / "wd0.0" / "seed3"
    index = pd.read_csv(run / "checkpoints.csv")
    lost = index[index["edge"] != "end"].iloc[0]
    index[index["file"] != lost["file"]].to_csv(run / "checkpoints.csv", index=False)  # edges may share a file
    (run / "checkpoints" / lost["file"]).unlink()
    report(config_file, copy, tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert f"small/wd0.0/seed3: no checkpoint kept for the {long_run_report.EDGE_HEADINGS[lost['edge']]} " \
           f"(step {lost['edge_step']})" in text
    assert "long_run.py recover" in text
    assert "wd0.01/seed3: no checkpoint kept" not in text


def test_a_run_whose_rows_lag_its_training_says_both():
    status = RunStatus("mnist_mlp", 0.0, 0, trained_step=1039122, analysed_step=1000000, last_step=10_000_000)
    assert long_run_report.status_line([status]) == (
        "provisional: wd 0 at step 1039122 of 1e7, rows analysed to step 1000000")
    done = dataclasses.replace(status, trained_step=10_000_000, analysed_step=10_000_000)
    assert done.finished and long_run_report.status_line([done]) == "finished: wd 0 (1e7 steps)"
    # trained to the end but not yet analysed to it: still provisional
    assert not dataclasses.replace(status, trained_step=10_000_000).finished


def test_steps_are_written_as_the_config_gives_them():
    assert long_run_report.format_steps(10_000_000) == "1e7"
    assert long_run_report.format_steps(300) == "300"
    assert long_run_report.format_steps(1) == "1"


def test_beside_rescaled_runs_a_run_read_at_its_own_lr_x_step_matches_itself(folders, tmp_path, capsys):
    # The finished runs as their own "rescaled" runs: at equal lr x step every value must be the same,
    # so the table's pairing and step matching are checked on real report files.
    config_file, provisional, finished = folders
    sys.path.insert(0, str(ROOT / "scripts"))
    from long_run import main

    out = tmp_path / "out"
    assert main(["report", "--configfile", str(config_file), "--out", str(provisional), "--report-dir", str(out),
                 "--rescaled", str(finished), str(config_file)]) == 0
    assert (out / "figures" / "rescaled_small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "tables" / "same_time.csv")
    assert set(zip(table["long_run"], table["rescaled_run"])) == {
        ("small/wd0.0/seed3", "small/wd0.0/seed3"), ("small/wd0.01/seed3", "small/wd0.01/seed3")}
    decay = table[table["weight_decay"] == 0.01].dropna(subset=["long_value"])
    assert not decay.empty and (decay["long_value"] == decay["rescaled_value"]).all()
    assert (decay["long_step"] == decay["rescaled_step"]).all()
    # wd 0 stopped at CRASH_STEP in the provisional folder: the finished run's end is beyond its rows
    end = table[(table["weight_decay"] == 0.0) & (table["anchor_of"] == "rescaled") & (table["anchor"] == "end")]
    assert end["long_value"].isna().all() and end["long_step"].isna().all() and end["rescaled_step"].notna().all()
    report_text = (out / "REPORT.md").read_text()
    assert "## Beside the time-rescaled runs, at equal lr x step" in report_text
    assert "provisional" in (out / "tables" / "same_time_summary.md").read_text()
    assert set(pd.read_csv(out / "tables" / "same_time_summary.csv")["status"]) == {
        report_text.split("**")[1]}
