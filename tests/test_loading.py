"""antigrok.formats.loading: no file runs code; every format reads the same weights, one tensor at a time."""

from __future__ import annotations

import builtins
import gc
import json
import os
import pickle
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from antigrok import cli
from antigrok import htsr
from antigrok.formats import loading
from antigrok.training.train import load_checkpoint
from antigrok.users.analyze import NOT_SELECTED, analyze_model, analyze_path

ERROR = "antigrok analyze: error:"


# ----------------------------------------------------------------------------- files that would run code


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class RunsShell:
    """Unpickling this runs ``touch marker`` in a shell."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Files whose unpickling would create ``marker``: torch zip, plain pickle, shell, .bin, .npz."""
    files = {}
    files["torch_zip"] = folder / "evil.pt"
    torch.save({"step": 1, "model": {"w": torch.zeros(20, 20)}, "payload": CreatesFile(marker)}, files["torch_zip"])
    files["plain_pickle"] = folder / "evil_pickle.pt"
    files["plain_pickle"].write_bytes(pickle.dumps({"w": CreatesFile(marker)}))
    files["shell"] = folder / "pytorch_model.bin"
    torch.save(RunsShell(marker), files["shell"])
    files["npz_object_array"] = folder / "evil.npz"
    np.savez(files["npz_object_array"], w=np.array([CreatesFile(marker)], dtype=object))
    return files


CRAFTED = ["torch_zip", "plain_pickle", "shell", "npz_object_array"]


def test_the_crafted_payload_is_live(tmp_path):
    """Without the safe loader the file does run code: the refusal tests below can fail."""
    marker = tmp_path / "created"
    pickle.loads(pickle.dumps(CreatesFile(marker)))
    assert marker.exists()
    marker.unlink()
    np.load(crafted_files(tmp_path, marker)["npz_object_array"], allow_pickle=True)["w"]
    assert marker.exists()


@pytest.mark.parametrize("kind", CRAFTED)
def test_python_loaders_refuse_a_crafted_file_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "created"
    path = crafted_files(tmp_path, marker)[kind]
    openers = [loading.open_model]
    if kind != "npz_object_array":
        openers += [loading.safe_torch_load, load_checkpoint]
    for open_file in openers:
        with pytest.raises(loading.UnsafeFileError) as error:
            open_file(path)
        message = str(error.value)
        assert message.startswith(f"{path}: refused:") and "\n" not in message, message
        assert not marker.exists(), f"{open_file.__name__} ran code from {path.name}"


@pytest.mark.parametrize("kind", CRAFTED)
def test_analyze_refuses_a_crafted_file_with_one_line_and_exit_1(tmp_path, kind, capsys):
    marker = tmp_path / "created"
    path = crafted_files(tmp_path, marker)[kind]
    assert cli.main(["analyze", str(path), "-q"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1 and f"{path}: refused:" in lines[0], err
    assert "Traceback" not in err
    assert not marker.exists()


def test_the_console_script_refuses_a_shell_command_file(tmp_path):
    marker = tmp_path / "created"
    path = crafted_files(tmp_path, marker)["shell"]
    script = Path(sys.executable).parent / "antigrok"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "antigrok.cli"]
    result = subprocess.run([*command, "analyze", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1 and "posix.system" in lines[0] and "refused" in lines[0], result.stderr
    assert not marker.exists()
    assert result.stdout == ""


def test_a_hugging_face_folder_prefers_safetensors_and_never_opens_the_pickle(tmp_path):
    marker = tmp_path / "created"
    crafted_files(tmp_path, marker)  # pytorch_model.bin runs a shell command
    save_file(small_model(), tmp_path / "model.safetensors")
    [source] = loading.open_model(tmp_path)
    assert source.kind == "Hugging Face folder (model.safetensors)"
    assert not marker.exists()


# ----------------------------------------------------------------------------- formats


def small_model(dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A tiny transformer-like state_dict: embeddings, 2-D weights, a norm, a depthwise conv kernel
    with too few eigenvalues for WeightWatcher (9: one per position), ids."""
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=g).to(dtype),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).to(dtype),
        "model.layers.0.mlp.up_proj.weight": torch.randn(40, 16, generator=g).to(dtype),
        "model.layers.0.input_layernorm.weight": torch.ones(16, dtype=dtype),
        "model.layers.2.mlp.up_proj.weight": torch.randn(40, 16, generator=g).to(dtype),
        "model.layers.10.mlp.up_proj.weight": torch.randn(40, 16, generator=g).to(dtype),
        "lm_head.weight": torch.randn(6, 16, generator=g).to(dtype),
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g).to(dtype),
        "position_ids": torch.arange(24).reshape(2, 12),
    }


ANALYSED = ["model.embed_tokens", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
            "model.layers.2.mlp.up_proj", "model.layers.10.mlp.up_proj"]


def expected_table(state_dict: dict) -> pd.DataFrame:
    """What analyze_state_dict gives for the same weights, upcast to float64 beforehand."""
    as_float64 = {k: v.to(torch.float64) for k, v in state_dict.items() if v.is_floating_point()}
    return htsr.analyze_state_dict(as_float64, seed=0).set_index("layer")


def assert_same_rows(table: pd.DataFrame, expected: pd.DataFrame):
    table = table.set_index("layer")
    assert sorted(table.index) == sorted(expected.index)
    for column in ["alpha", "xmin", "rand_sigma_mp", "max_rand_eval", "log_norm"]:
        np.testing.assert_array_equal(table[column].to_numpy(float), expected.loc[table.index, column].to_numpy(float),
                                      err_msg=column)
    assert table["num_traps"].tolist() == expected.loc[table.index, "num_traps"].tolist()


def analyse(path) -> list:
    return [analyze_model(source) for source in loading.open_model(path)]


def write_shards(folder: Path, state_dict: dict, suffix: str) -> Path:
    """A Hugging Face sharded folder: two shards and their index, as transformers writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state_dict)
    shards = {f"model-00001-of-00002{suffix}": names[::2], f"model-00002-of-00002{suffix}": names[1::2]}
    if suffix == ".bin":
        shards = {name.replace("model-", "pytorch_model-"): keys for name, keys in shards.items()}
    for shard, keys in shards.items():
        part = {k: state_dict[k].contiguous() for k in keys}
        save_file(part, folder / shard) if suffix == ".safetensors" else torch.save(part, folder / shard)
    index = {"metadata": {"total_size": 0}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    index_name = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps(index))
    return folder


def test_a_safetensors_file_gives_the_rows_of_its_state_dict(tmp_path):
    state_dict = small_model()
    save_file(state_dict, tmp_path / "model.safetensors")
    [result] = analyse(tmp_path / "model.safetensors")
    assert result.source.kind == "safetensors"
    assert result.table["layer"].tolist() == ANALYSED  # layers.2 before layers.10
    assert_same_rows(result.table, expected_table(state_dict))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_a_sharded_hugging_face_folder_is_one_model(tmp_path, suffix, monkeypatch):
    state_dict = small_model()
    folder = write_shards(tmp_path / "hf", state_dict, suffix)
    [source] = loading.open_model(folder)
    mapped = []
    original = loading.read_checkpoint
    monkeypatch.setattr(loading, "read_checkpoint", lambda path, mmap=False: mapped.append(path) or original(path, mmap))
    result = analyze_model(source)
    assert result.source.path == folder
    assert result.source.kind.startswith("Hugging Face folder (2 ")
    if suffix == ".safetensors":
        assert result.table["layer"].tolist() == ANALYSED
        assert mapped == []
    else:  # shard by shard, each torch shard mapped once
        assert sorted(result.table["layer"]) == sorted(ANALYSED)
        assert [path.name for path in mapped] == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    table, skipped = analyze_path(folder)  # the Python API: what antigrok analyze writes
    assert table["path"].unique().tolist() == [str(folder)] and len(skipped) == len(result.skipped)
    assert_same_rows(result.table, expected_table(state_dict))
    assert set(result.skipped["tensor"]) == set(state_dict) - {f"{layer}.weight" for layer in ANALYSED}


def test_a_missing_shard_or_a_shard_outside_the_folder_is_named(tmp_path):
    folder = write_shards(tmp_path / "hf", small_model(), ".safetensors")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(loading.ModelFileError, match="model-00002-of-00002.safetensors named in model.safetensors"):
        loading.open_model(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../outside.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(loading.ModelFileError, match="is not a file name in the folder"):
        loading.open_model(folder)


def test_single_file_hugging_face_folders(tmp_path):
    state_dict = small_model()
    (tmp_path / "bin").mkdir()
    torch.save(state_dict, tmp_path / "bin" / "pytorch_model.bin")
    [result] = analyse(tmp_path / "bin")
    assert result.source.kind == "Hugging Face folder (pytorch_model.bin)"
    assert_same_rows(result.table, expected_table(state_dict))


def test_npz_bare_state_dict_and_lightning_checkpoint(tmp_path):
    state_dict = small_model()
    expected = expected_table(state_dict)
    np.savez(tmp_path / "weights.npz", **{k: v.numpy() for k, v in state_dict.items()})
    torch.save(state_dict, tmp_path / "bare.pt")
    torch.save({"state_dict": state_dict, "global_step": 7, "epoch": 1}, tmp_path / "lightning.ckpt")
    for name, kind in [("weights.npz", "npz"), ("bare.pt", "torch state_dict"),
                       ("lightning.ckpt", "torch checkpoint (state_dict under 'state_dict')")]:
        [result] = analyse(tmp_path / name)
        assert result.source.kind == kind
        assert_same_rows(result.table, expected if name != "lightning.ckpt" else
                         htsr.analyze_state_dict({k: v.to(torch.float64) for k, v in state_dict.items()
                                                  if v.is_floating_point()}, seed=0, step=7).set_index("layer"))


def test_workflow_checkpoints_keep_their_step_and_seed(tmp_path):
    model = {k: v.to(torch.float64) for k, v in small_model().items() if v.is_floating_point()}
    torch.save({"format": "antigrok.checkpoint/1", "step": 30, "seed": 4, "model": model,
                "model_config": {"name": "mlp", "widths": [16, 40]}}, tmp_path / "step000000030.pt")
    [result] = analyse(tmp_path)
    assert result.source.kind == "antigrok checkpoint"
    assert (result.source.step, result.source.seed) == (30, 4)
    assert_same_rows(result.table, htsr.analyze_state_dict(model, seed=4, step=30).set_index("layer"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_analysed_in_float64(tmp_path, dtype):
    state_dict = small_model(dtype)
    save_file(state_dict, tmp_path / "half.safetensors")
    [result] = analyse(tmp_path / "half.safetensors")
    assert set(result.table["stored_dtype"]) == {str(dtype).removeprefix("torch.")}
    assert_same_rows(result.table, expected_table(state_dict))  # the upcast is exact
    ref = next(r for r in loading.open_model(tmp_path / "half.safetensors")[0].tensors if r.name == "lm_head.weight")
    weight = ref.read_float64()
    assert weight.dtype == np.float64 and weight.flags.c_contiguous
    np.testing.assert_array_equal(weight, state_dict["lm_head.weight"].to(torch.float64).numpy())


# ----------------------------------------------------------------------------- layers, skips, memory


def test_the_layer_filter_and_the_skip_list(tmp_path):
    state_dict = small_model()
    state_dict["model.layers.3.mlp.up_proj.weight"] = torch.full((40, 16), float("nan"))
    save_file(state_dict, tmp_path / "model.safetensors")
    [source] = loading.open_model(tmp_path / "model.safetensors")
    result = analyze_model(source, layers=r"mlp\.")
    assert result.table["layer"].tolist() == ["model.layers.0.mlp.up_proj", "model.layers.2.mlp.up_proj",
                                              "model.layers.10.mlp.up_proj"]
    reasons = dict(zip(result.skipped["tensor"], result.skipped["reason"]))
    assert reasons["model.layers.3.mlp.up_proj.weight"] == "has NaN or infinite entries"
    assert reasons["model.embed_tokens.weight"] == NOT_SELECTED
    everything = dict(zip(*analyze_model(source).skipped[["tensor", "reason"]].to_numpy().T))
    assert everything["model.layers.0.input_layernorm.weight"].startswith("1-D tensor")
    assert everything["conv.weight"] == ("shape 4x1x3x3 has fewer than 10 eigenvalues (1 per kernel position x 9 "
                                         "positions = 9); WeightWatcher does not analyze it")
    assert everything["lm_head.weight"] == "shape 6x16 has fewer than 10 eigenvalues; WeightWatcher does not analyze it"
    assert everything["position_ids"] == "not floating point (int64)"
    assert len(everything) == len(state_dict) - len(ANALYSED)  # every tensor is either analysed or listed


def test_tensors_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Each tensor is read only when its turn comes and is freed before the next is read."""
    save_file(small_model(), tmp_path / "model.safetensors")
    alive, read_names = [], []
    original = loading.read_safetensor

    def tracked(path, name):
        gc.collect()
        assert all(ref() is None for ref in alive), f"a tensor read before {name} is still in memory"
        tensor = original(path, name)
        alive.append(weakref.ref(tensor))
        read_names.append(name)
        return tensor

    monkeypatch.setattr(loading, "read_safetensor", tracked)
    [source] = loading.open_model(tmp_path / "model.safetensors")
    assert read_names == []  # opening reads the header only
    analyze_model(source)
    assert read_names == [f"{layer}.weight" for layer in ANALYSED]  # skipped tensors are never read


def test_open_model_errors_name_the_path(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(loading.ModelFileError, match="broken.safetensors: not a safetensors file"):
        loading.open_model(tmp_path / "broken.safetensors")
    with pytest.raises(loading.ModelFileError, match="missing: no such file"):
        loading.open_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(loading.ModelFileError, match="empty: folder holds no model files"):
        loading.open_model(tmp_path / "empty")


def test_an_unreadable_npz_array_is_reported_as_unreadable_not_as_unsafe(tmp_path):
    # Any ValueError of np.load was reported as an unsafe (pickled) file; only the pickle refusal is.
    import zipfile

    from antigrok.formats.loading import ModelFileError, UnsafeFileError, read_npz_array

    path = tmp_path / "broken.npz"
    with zipfile.ZipFile(path, "w") as archive:
        header = b"{'descr': '<f8'}".ljust(63) + b"\n"  # an npy header without shape and order
        archive.writestr("w.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(ModelFileError, match="cannot be read") as raised:
        read_npz_array(path, "w")
    assert not isinstance(raised.value, UnsafeFileError)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeFileError, match="refused"):
        read_npz_array(pickled, "w")


@pytest.mark.parametrize("payload_extra", [{}, {"format": 1}])
def test_a_step_model_seed_checkpoint_keeps_its_step_and_seed(payload_extra):
    # The step and seed seed the shuffled spectra (trap counts): a checkpoint laid out as the
    # workflow's, with or without its format key, must not be read as step 0.
    state_dict = {"fc.weight": torch.zeros(12, 12)}
    checkpoint = loading.checkpoint_from_payload({"step": 5, "model": state_dict, "seed": 4, **payload_extra}, "x.pt")
    assert checkpoint["step"] == 5 and checkpoint["seed"] == 4 and checkpoint["model"] is state_dict
    assert checkpoint["state_dict_key"] == "model"
