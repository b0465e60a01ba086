"""The ``antigrok analyze`` command: tables for checkpoints and folders, one-line errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from antigrok import cli
from antigrok import htsr


def save_checkpoint(path: Path, step: int = 10, seed: int = 2, rows: int = 16) -> Path:
    rng = np.random.default_rng(step)
    model = {"fc1.weight": torch.tensor(rng.standard_normal((rows, 24))), "fc1.bias": torch.zeros(rows),
             "fc2.weight": torch.tensor(rng.standard_normal((12, rows)))}
    torch.save({"format": "antigrok.checkpoint/1", "step": step, "model": model, "seed": seed}, path)
    return path


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("antigrok analyze: error:")]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    save_checkpoint(folder / "step000000010.pt", step=10)
    save_checkpoint(folder / "step000000020.pt", step=20)
    return folder


def test_folder_gives_one_row_per_checkpoint_and_layer(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "out" / "htsr.csv"
    assert cli.main(["analyze", str(checkpoint_dir), "-o", str(out), "-q"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path"] + htsr.HTSR_COLUMNS + ["num_traps", "num_traps_centered", "stored_dtype"]
    assert list(zip(table["step"], table["layer"])) == [(10, "fc1"), (10, "fc2"), (20, "fc1"), (20, "fc2")]
    assert table["path"].str.endswith(".pt").all()
    assert (table["fit_status"] == "ok").all()
    # Without --seed the checkpoint's own run seed is used: the rows are its run's htsr.csv rows.
    checkpoint = torch.load(checkpoint_dir / "step000000020.pt")
    expected = htsr.analyze_state_dict(checkpoint["model"], seed=2, step=20)
    assert table.loc[table["step"] == 20, "rand_sigma_mp"].tolist() == pytest.approx(
        expected["rand_sigma_mp"].tolist(), rel=1e-12)
    # and the numbers are WeightWatcher 0.7.5.5's own on those matrices (not the same code path twice)
    reference = htsr.analyze_state_dict(checkpoint["model"], seed=2, step=20, engine="weightwatcher")
    rows = table[table["step"] == 20]
    for column in ("alpha", "rand_sigma_mp", "log_norm"):
        assert rows[column].tolist() == pytest.approx(reference[column].tolist(), rel=1e-9, nan_ok=True)
    assert rows["ww_num_traps"].tolist() == reference["ww_num_traps"].tolist()
    fc2 = checkpoint["model"]["fc2.weight"].numpy()
    assert rows["log_norm"].iloc[1] == pytest.approx(np.log10(np.sum(fc2**2)), rel=1e-12)
    err = capsys.readouterr().err
    assert "wrote 4 rows" in err
    # the biases of both checkpoints are listed once, with the reason
    assert "skipped 1 (1-D tensor (bias, norm, ...): not a weight matrix): fc1.bias" in err


def test_seed_option_changes_the_shuffle_and_stdout_gets_the_csv(checkpoint_dir, capsys):
    path = str(checkpoint_dir / "step000000010.pt")
    assert cli.main(["analyze", path, "--seed", "7", "-q"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    expected = htsr.analyze_state_dict(torch.load(path)["model"], seed=7, step=10)
    assert table["max_rand_eval"].tolist() == pytest.approx(expected["max_rand_eval"].tolist(), rel=1e-12)
    assert table["alpha"].tolist() == pytest.approx(expected["alpha"].tolist(), rel=1e-12)


def test_bad_files_get_one_error_line_and_a_nonzero_exit(checkpoint_dir, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    no_matrices = tmp_path / "biases.pt"
    torch.save({"step": 1, "model": {"fc.bias": torch.zeros(10), "fc.weight": torch.zeros(10, 3)}}, no_matrices)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    out = tmp_path / "partial.csv"
    good = checkpoint_dir / "step000000010.pt"
    code = cli.main(["analyze", str(not_a_checkpoint), str(good), str(no_matrices), str(empty_folder),
                     str(tmp_path / "missing.pt"), "-o", str(out), "-q"])
    assert code == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 4, err
    assert any("notes.pt: not a torch checkpoint" in line for line in lines)
    assert f"antigrok analyze: error: {no_matrices}: nothing analysed: 2 tensors skipped: 1 1-D tensor (bias, norm, " \
           "...): not a weight matrix: fc.bias; 1 shape 10x3 has fewer than 10 eigenvalues; WeightWatcher does not " \
           "analyze it: fc.weight" in lines
    assert f"antigrok analyze: error: {empty_folder}: folder holds no model files (.safetensors .npz .onnx .pt .pth .bin " \
           ".ckpt, or a Hugging Face model.safetensors / pytorch_model.bin with or without an index); it is empty" in lines
    assert any("missing.pt: no such file" in line for line in lines)
    assert "Traceback" not in err
    assert pd.read_csv(out)["path"].unique().tolist() == [str(good)]  # the good file is still analyzed


def test_console_script_exits_nonzero_without_a_traceback(tmp_path):
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"\x00\x01 not a zip")
    script = Path(sys.executable).parent / "antigrok"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "antigrok.cli"]
    result = subprocess.run([*command, "analyze", str(not_a_checkpoint)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert len(error_lines(result.stderr)) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze"])
    assert exit_info.value.code == 2
    assert "PATH" in capsys.readouterr().err


def write_safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    low_rank = torch.randn(48, 1, generator=g).abs() @ torch.randn(1, 40, generator=g).abs()
    save_file({
        "embed.weight": torch.randn(60, 24, generator=g).to(torch.bfloat16),
        "block.0.mlp.weight": (torch.randn(48, 40, generator=g) * 0.1 + low_rank).to(torch.bfloat16),
        "block.0.norm.weight": torch.ones(24, dtype=torch.bfloat16),
        "block.1.mlp.weight": torch.randn(48, 40, generator=g).to(torch.bfloat16),
    }, path)
    return path


def test_summary_on_stderr_counts_alpha_below_2_and_traps(tmp_path, capsys):
    path = write_safetensors(tmp_path / "model.safetensors")
    out, skipped = tmp_path / "rows.csv", tmp_path / "skipped.csv"
    assert cli.main(["analyze", str(path), "-o", str(out), "--skipped", str(skipped), "-q"]) == 0
    err = capsys.readouterr().err
    table = pd.read_csv(out)
    assert table["layer"].tolist() == ["block.0.mlp", "block.1.mlp", "embed"]
    assert set(table["stored_dtype"]) == {"bfloat16"}
    assert table.loc[table["layer"] == "block.0.mlp", "num_traps"].item() >= 1  # the positive rank-one part
    summary = err[err.index("summary:"):].splitlines()
    assert summary[0].startswith("summary: 3 layers analysed in 1 model, 1 tensors skipped")
    assert "analysed in float64" in summary[0]
    assert f"median alpha {table['alpha'].median():.3f}" in err
    low = table.loc[table["alpha"] < 2, "layer"].tolist()
    assert f"alpha < 2 (over-correlated): {len(low)} of 3 layers" in err
    with_traps = table.loc[table["num_traps"] > 0, "layer"].tolist()
    assert f"with Correlation Traps: {len(with_traps)} of 3 layers: {', '.join(with_traps)}" in err
    assert pd.read_csv(skipped).to_dict("records") == [{
        "path": str(path), "tensor": "block.0.norm.weight", "shape": 24, "dtype": "bfloat16",
        "reason": "1-D tensor (bias, norm, ...): not a weight matrix"}]


def test_layers_option_selects_by_regex_and_a_filter_matching_nothing_is_an_error(tmp_path, capsys):
    path = write_safetensors(tmp_path / "model.safetensors")
    assert cli.main(["analyze", str(path), "--layers", r"mlp", "-q"]) == 0
    captured = capsys.readouterr()
    assert pd.read_csv(io.StringIO(captured.out))["layer"].tolist() == ["block.0.mlp", "block.1.mlp"]
    assert "skipped 2 (not matched by --layers): block.0.norm.weight, embed.weight" in captured.err
    assert cli.main(["analyze", str(path), "--layers", "attention", "-q"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"antigrok analyze: error: {path}: no tensor name matches --layers 'attention'"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", str(path), "--layers", "("])
    assert exit_info.value.code == 2


def test_one_model_gets_a_progress_bar_over_its_layers(tmp_path, capsys):
    path = write_safetensors(tmp_path / "model.safetensors")
    assert cli.main(["analyze", str(path)]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and ("layer/s" in err or "s/layer" in err), err


def test_a_seed_that_is_no_integer_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", "model.pt", "--seed", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "antigrok analyze: error: argument --seed: invalid int value: 'x'"]


def test_the_mean_shift_trap_is_counted_raw_and_not_centred(tmp_path):
    # a Gaussian matrix plus a constant: its shuffled copy keeps the mean, a rank-one spike that
    # WeightWatcher counts as a trap and the centred count does not (antigrok.spectra.traps)
    rng = np.random.default_rng(3)
    weights = {"shifted.weight": torch.tensor(rng.standard_normal((120, 300)) * 0.1 + 0.05),
               "plain.weight": torch.tensor(rng.standard_normal((120, 300)) * 0.1)}
    path = tmp_path / "model.pt"
    torch.save(weights, path)
    out = tmp_path / "rows.csv"
    assert cli.main(["analyze", str(path), "-o", str(out), "-q"]) == 0
    table = pd.read_csv(out).set_index("layer")
    assert (table.loc["shifted", "num_traps"], table.loc["shifted", "num_traps_centered"]) == (1, 0)
    assert (table.loc["plain", "num_traps"], table.loc["plain", "num_traps_centered"]) == (0, 0)
