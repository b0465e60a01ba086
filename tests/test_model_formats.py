"""Users' models as they come: the checkpoint layouts people save, ONNX initializers, TorchScript
archives, folders of mixed files, and the message of every bad input (issue 34)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from antigrok import cli
from antigrok import htsr
from antigrok.formats import loading
from antigrok.formats.torchscript import is_torchscript_archive
from antigrok.spectra import primitives as spectral
from antigrok.spectra.ww_engine import import_weightwatcher
from antigrok.users.analyze import POOLED_TRAPS_NOTE, analyze_model

ERROR = "antigrok analyze: error:"


class Net(nn.Module):
    """A small conv net: a Conv2d, a BatchNorm (buffers, an int64 counter), a Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 16, 3)
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 24)


def expected_rows(state_dict: dict) -> pd.DataFrame:
    return htsr.analyze_state_dict({k: v for k, v in state_dict.items() if v.is_floating_point()}, seed=0)


def assert_rows_equal(table: pd.DataFrame, expected: pd.DataFrame):
    table, expected = table.set_index("layer"), expected.set_index("layer")
    assert list(table.index) == list(expected.index)
    for column in ["alpha", "xmin", "rand_sigma_mp", "num_traps", "num_evals"]:
        np.testing.assert_array_equal(table[column].to_numpy(float), expected[column].to_numpy(float), err_msg=column)


def run_cli(*args) -> tuple[int, str]:
    """``antigrok analyze ARGS -q``: exit code and stderr (through main, captured)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["analyze", *map(str, args), "-q"])
    return code, err.getvalue()


# --------------------------------------------------------------------------- checkpoint layouts


def tutorial_checkpoint(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.25}


LAYOUTS = {
    # the PyTorch tutorial's "Saving & loading a general checkpoint"
    "model_state_dict": lambda m: tutorial_checkpoint(m),
    "model_state": lambda m: {"model_state": m.state_dict(), "step": 10},
    "net": lambda m: {"net": m.state_dict(), "acc": 0.9},
    "model": lambda m: {"model": m.state_dict(), "optimizer": {"lr": 0.1}},
    "state_dict": lambda m: {"state_dict": m.state_dict(), "global_step": 0, "epoch": 1},
}


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_a_checkpoint_layout_is_read_and_the_key_is_named(tmp_path, key):
    model = Net()
    path = tmp_path / "checkpoint.pt"
    torch.save(LAYOUTS[key](model), path)
    [source] = loading.open_model(path)
    assert source.kind == f"torch checkpoint (state_dict under {key!r})"
    assert_rows_equal(analyze_model(source).table, expected_rows(model.state_dict()))
    code, err = run_cli(path)
    assert code == 0
    others = ", ".join(repr(k) for k in LAYOUTS[key](model) if k != key)
    assert f"{path}: read the state_dict under {key!r}; not analysed: {others}" in err


def test_lightnings_state_dict_keeps_its_prefixed_names(tmp_path):
    model = Net()
    prefixed = {f"model.{k}": v for k, v in model.state_dict().items()}  # a LightningModule's self.model
    torch.save({"state_dict": prefixed, "global_step": 5, "epoch": 0, "pytorch-lightning_version": "2.4.0",
                "optimizer_states": [{}], "lr_schedulers": []}, tmp_path / "last.ckpt")
    [result] = [analyze_model(s) for s in loading.open_model(tmp_path / "last.ckpt")]
    assert result.table["layer"].tolist() == ["model.conv", "model.fc"]
    assert result.source.step == 5  # Lightning's global_step seeds the shuffle, as the workflow's step


def test_a_checkpoint_without_a_state_dict_lists_its_keys_and_what_to_save(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "weights_of": {"fc": [1.0, 2.0]}, "config": {"lr": 0.1}}, path)
    code, err = run_cli(path)
    assert code == 1
    assert (f"{ERROR} {path}: no state_dict found: the file holds a dict with the top-level keys 'epoch', "
            "'weights_of', 'config' (a state_dict, a dict of tensors, is looked for as the whole file or under the "
            "keys 'model', 'model_state_dict', 'state_dict', 'model_state', 'net', ") in err
    assert "save the weights as torch.save(model.state_dict(), path)" in err


def test_a_whole_pickled_module_is_refused_with_what_to_save(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(Net(), path)  # torch.save(model): the class is pickled, loading would import and call it
    code, err = run_cli(path)
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert line.startswith(f"{ERROR} {path}: refused: it names the Python object ")
    assert line.endswith("save the weights as torch.save(model.state_dict(), path), or a dict with the state_dict "
                         "under one of the keys 'model', 'model_state_dict', 'state_dict', 'model_state', or as "
                         ".safetensors")


# --------------------------------------------------------------------------- bad inputs, messages


def test_an_empty_file_says_so(tmp_path):
    for name in ("empty.pt", "empty.safetensors", "empty.onnx"):
        (tmp_path / name).write_bytes(b"")
        code, err = run_cli(tmp_path / name)
        assert code == 1
        assert f"{ERROR} {tmp_path / name}: the file is empty (0 bytes)" in err.splitlines()


@pytest.mark.parametrize("tensor, reason", [
    (torch.ones(20, 30, dtype=torch.int8), "not floating point (int8)"),
    (torch.full((20, 30), float("nan")), "has NaN or infinite entries"),
])
def test_a_file_with_nothing_analysable_says_what_was_found(tmp_path, tensor, reason):
    path = tmp_path / "weights.safetensors"
    save_file({"fc.weight": tensor}, path)
    code, err = run_cli(path)
    assert code == 1
    assert f"{ERROR} {path}: nothing analysed: 1 tensor skipped: 1 {reason}: fc.weight" in err.splitlines()


def test_the_summary_explains_pooled_trap_counts(tmp_path):
    save_file(Net().state_dict(), tmp_path / "net.safetensors")
    code, err = run_cli(tmp_path / "net.safetensors")
    assert code == 0
    assert POOLED_TRAPS_NOTE in err.splitlines()
    assert "can exceed the layer's eigenvalues" in POOLED_TRAPS_NOTE


def test_help_is_plain_text():
    for args in (["--help"], ["analyze", "--help"]):
        result = subprocess.run([sys.executable, "-m", "antigrok.cli", *args], capture_output=True, text=True)
        assert result.returncode == 0
        assert "``" not in result.stdout and ":func:" not in result.stdout, result.stdout
    assert "HTSR alpha and Correlation Traps" in subprocess.run(
        [sys.executable, "-m", "antigrok.cli", "--help"], capture_output=True, text=True).stdout


# --------------------------------------------------------------------------- ONNX


def onnx_file(path: Path, conv: np.ndarray, fc: np.ndarray) -> Path:
    """An ONNX model as exporters write one: weights as initializers (a Conv, its bias, a MatMul)."""
    onnx = pytest.importorskip("onnx", reason="the onnx package (extra antigrok[onnx]) is not installed")
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(conv, "conv.weight"),
                    numpy_helper.from_array(np.zeros(conv.shape[0], np.float32), "conv.bias"),
                    numpy_helper.from_array(fc, "fc.weight")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["h"]),
             helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Mul", ["h", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=initializers)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_initializers_give_weightwatchers_onnx_numbers(tmp_path, ww):
    """WeightWatcher given the onnx ModelProto, layer by layer, seeded as antigrok seeds each layer."""
    import contextlib
    import io

    import onnx

    rng = np.random.default_rng(0)
    conv = (rng.standard_t(3, size=(16, 8, 3, 3)) / 10 + 0.01).astype(np.float32)
    fc = (rng.standard_t(3, size=(40, 24)) / 10).astype(np.float32)
    path = onnx_file(tmp_path / "net.onnx", conv, fc)
    [result] = [analyze_model(s) for s in loading.open_model(path)]
    ours = result.table.set_index("layer")
    assert ours.index.tolist() == ["conv", "fc"]
    assert result.skipped["tensor"].tolist() == ["conv.bias"]
    assert result.notes == ["1 Constant nodes not read (their tensors are not initializers; WeightWatcher reads "
                            "initializers only)"]
    model = onnx.load(str(path))
    for layer_id, layer in [(0, "conv"), (2, "fc")]:
        np.random.seed(spectral.layer_seed(0, 0, layer))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ww.WeightWatcher(model=model).analyze(layers=[layer_id], randomize=True, fix_fingers="clip_xmax",
                                                           plot=False, savefig=False).iloc[0]
        assert str(theirs["layer_type"]) == {"conv": "conv2d", "fc": "dense"}[layer]
        for ours_key, their_key in [("alpha", "alpha"), ("xmin", "xmin"), ("rand_sigma_mp", "rand_sigma_mp"),
                                    ("pl_ks_distance", "D")]:
            a, b = float(ours.loc[layer, ours_key]), float(theirs[their_key])
            assert abs(a - b) <= 1e-12 * abs(b), (layer, ours_key, a, b)
        assert ours.loc[layer, "num_traps"] == theirs["rand_num_spikes"]
        assert (ours.loc[layer, "rows"], ours.loc[layer, "cols"]) == (theirs["N"], theirs["M"])


def test_an_onnx_file_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x08\x07")  # not empty; never parsed here
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    code, err = run_cli(path)
    assert code == 1
    assert (f"{ERROR} {path}: an ONNX file; reading its weights needs the onnx package: pip install "
            "'antigrok[onnx]' (or pip install onnx)") in err.splitlines()


def test_a_file_named_onnx_that_is_not_says_so(tmp_path):
    pytest.importorskip("onnx", reason="the onnx package (extra antigrok[onnx]) is not installed")
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\xff\xff\xff not protobuf")
    code, err = run_cli(path)
    assert code == 1 and f"{ERROR} {path}: not an ONNX model (" in err


# --------------------------------------------------------------------------- TorchScript


def test_a_torchscript_archive_is_read_without_running_its_code(tmp_path, monkeypatch):
    model = Net()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated: not this test's concern
        torch.jit.script(model).save(str(path))

    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    monkeypatch.setattr(torch, "load", no_jit)
    [source] = loading.open_model(path)
    assert source.kind == "TorchScript archive"
    assert {ref.name for ref in source.tensors} == set(model.state_dict())
    assert_rows_equal(analyze_model(source).table, expected_rows(model.state_dict()))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_torchscript_archive_naming_other_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:  # the layout of torch.jit.save, with a crafted data.pkl
        archive.writestr("evil/data.pkl", pickle.dumps({"weight": _System(marker)}, protocol=2))
        archive.writestr("evil/code/__torch__/m.py", "def forward(self): pass\n")
    assert is_torchscript_archive(path)
    code, err = run_cli(path)
    assert code == 1 and not marker.exists()
    assert (f"{ERROR} {path}: refused: its TorchScript data names the Python object posix.system, which antigrok "
            "does not build; save the weights as torch.save(model.state_dict(), path), or a dict with the state_dict "
            "under one of the keys 'model', 'model_state_dict', 'state_dict', 'model_state', or as .safetensors") in err


# --------------------------------------------------------------------------- folders


def test_a_folder_analyses_every_model_file_and_lists_every_other_file(tmp_path):
    pytest.importorskip("onnx", reason="the onnx package (extra antigrok[onnx]) is not installed")
    folder = tmp_path / "models"
    folder.mkdir()
    model = Net()
    torch.save(model.state_dict(), folder / "a.pt")
    save_file(model.state_dict(), folder / "b.safetensors")
    rng = np.random.default_rng(1)
    onnx_file(folder / "c.onnx", rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
              rng.standard_normal((40, 24)).astype(np.float32))
    np.savez(folder / "d.npz", fc=rng.standard_normal((30, 20)))
    (folder / "notes.txt").write_text("trained on Tuesday")
    (folder / "runs").mkdir()
    skipped = tmp_path / "skipped.csv"
    out = tmp_path / "out.csv"
    code, err = run_cli(folder, "-o", out, "--skipped", skipped)
    assert code == 0, err
    table = pd.read_csv(out)
    assert [Path(p).name for p in dict.fromkeys(table["path"])] == ["a.pt", "b.safetensors", "c.onnx", "d.npz"]
    files = pd.read_csv(skipped, keep_default_na=False)
    files = files[files["tensor"] == ""]
    assert dict(zip(files["path"].map(lambda p: Path(p).name), files["reason"])) == {
        "notes.txt": loading.NOT_A_MODEL_FILE, "runs": "a subfolder (give its path to analyse it)"}
    assert f"skipped 1 ({loading.NOT_A_MODEL_FILE}): notes.txt" in err
    assert "4 models" in err and "and 2 files skipped" in err


def test_a_hugging_face_folder_lists_the_files_it_does_not_read(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    model = Net()
    save_file(model.state_dict(), folder / "model.safetensors")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    plan = loading.folder_plan(folder)
    assert [path for path, _ in plan.openers] == [folder]
    assert dict((p.name, r) for p, r in plan.skipped) == {
        "config.json": loading.NOT_A_MODEL_FILE,
        "pytorch_model.bin": "not read: the folder is one Hugging Face model, read from model.safetensors"}


def test_a_folder_without_model_files_names_what_it_holds(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(loading.ModelFileError, match=r"folder holds no model files .*; found: README.md$"):
        loading.folder_plan(tmp_path)


@pytest.fixture(scope="module")
def ww():
    return import_weightwatcher()
