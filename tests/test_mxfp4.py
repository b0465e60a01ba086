"""antigrok.formats.mxfp4: gpt-oss's MXFP4 experts, dequantized as transformers does, one expert at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from antigrok import cli
from antigrok.formats import loading
from antigrok.formats import mxfp4
from antigrok.users.analyze import analyze_path
from gpt_oss_synthetic import write_gpt_oss_folder

LAYERS, EXPERTS, HIDDEN, INTERMEDIATE = 2, 3, 64, 96


@pytest.fixture(scope="module")
def gpt_oss_folder(tmp_path_factory):
    return write_gpt_oss_folder(tmp_path_factory.mktemp("gpt_oss") / "model", LAYERS, EXPERTS, HIDDEN, INTERMEDIATE)


def packed(seed=0, shape=(3, 8, 2)):
    generator = np.random.default_rng(seed)
    blocks = generator.integers(0, 256, size=shape + (16,), dtype=np.uint8)
    scales = generator.integers(100, 155, size=shape, dtype=np.uint8)
    return blocks, scales


def test_dequantize_known_values():
    # byte 0x21: low nibble 1 (+0.5) first, high nibble 2 (+1.0); byte 0xF8: 8 (-0) then 15 (-6)
    blocks = np.zeros((1, 1, 16), dtype=np.uint8)
    blocks[0, 0, 0], blocks[0, 0, 1] = 0x21, 0xF8
    values = mxfp4.dequantize(blocks, np.full((1, 1), 128, dtype=np.uint8))  # scale 2 ** (128 - 127)
    assert values.shape == (1, 32)
    assert values[0, :4].tolist() == [1.0, 2.0, -0.0, -12.0]
    assert np.signbit(values[0, 2])
    assert not values[0, 4:].any()
    half = mxfp4.dequantize(blocks, np.full((1, 1), 126, dtype=np.uint8))
    assert half[0, :4].tolist() == [0.25, 0.5, -0.0, -3.0]


def test_dequantize_rejects_mismatched_scales():
    blocks, scales = packed()
    with pytest.raises(ValueError, match="do not match"):
        mxfp4.dequantize(blocks, scales[..., :1])


def test_dequantize_equals_transformers():
    convert = pytest.importorskip("transformers.integrations.mxfp4").convert_moe_packed_tensors
    blocks, scales = packed(seed=1, shape=(4, 24, 3))
    expected = convert(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32).numpy()
    ours = mxfp4.dequantize(blocks, scales)
    # transformers returns each expert transposed, (in, out), as GptOssExperts' parameters
    np.testing.assert_array_equal(ours, np.swapaxes(expected, 1, 2).astype(np.float64))


def test_folder_lists_one_matrix_per_expert_and_projection(gpt_oss_folder):
    (source,) = loading.open_model(gpt_oss_folder)
    refs = {ref.name: ref for ref in source.tensors}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}.mlp.experts"
        assert f"{prefix}.gate_up_proj_blocks" not in refs and f"{prefix}.gate_up_proj_scales" not in refs
        assert refs[f"{prefix}.gate_up_proj_bias"].skip_reason == mxfp4.BIAS_SKIP_REASON
        for expert in range(EXPERTS):
            assert refs[f"{prefix}.{expert}.gate_proj"].shape == (INTERMEDIATE, HIDDEN)
            assert refs[f"{prefix}.{expert}.up_proj"].shape == (INTERMEDIATE, HIDDEN)
            assert refs[f"{prefix}.{expert}.down_proj"].shape == (HIDDEN, INTERMEDIATE)
            assert refs[f"{prefix}.{expert}.down_proj"].dtype == "mxfp4"
    assert sum(ref.dtype == "mxfp4" for ref in source.tensors) == LAYERS * EXPERTS * 3


def test_expert_matrices_equal_transformers_gate_up_and_down(gpt_oss_folder):
    """gate = gate_up[..., ::2], up = gate_up[..., 1::2] of transformers' (in, out) matrices."""
    convert = pytest.importorskip("transformers.integrations.mxfp4").convert_moe_packed_tensors
    from safetensors import safe_open

    (source,) = loading.open_model(gpt_oss_folder)
    refs = {ref.name: ref for ref in source.tensors}
    weight_map = json.loads((gpt_oss_folder / "model.safetensors.index.json").read_text())["weight_map"]
    prefix = "model.layers.1.mlp.experts"

    def packed_tensor(name):
        with safe_open(str(gpt_oss_folder / weight_map[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    gate_up = convert(packed_tensor(f"{prefix}.gate_up_proj_blocks"), packed_tensor(f"{prefix}.gate_up_proj_scales"),
                      dtype=torch.float32).double()
    down = convert(packed_tensor(f"{prefix}.down_proj_blocks"), packed_tensor(f"{prefix}.down_proj_scales"),
                   dtype=torch.float32).double()
    for expert in range(EXPERTS):
        gate = refs[f"{prefix}.{expert}.gate_proj"].read_float64()
        up = refs[f"{prefix}.{expert}.up_proj"].read_float64()
        np.testing.assert_array_equal(gate, gate_up[expert][..., ::2].T.numpy())
        np.testing.assert_array_equal(up, gate_up[expert][..., 1::2].T.numpy())
        np.testing.assert_array_equal(refs[f"{prefix}.{expert}.down_proj"].read_float64(), down[expert].T.numpy())


def test_expert_read_takes_only_its_slice(gpt_oss_folder, monkeypatch):
    """Reading one expert asks safetensors for that expert's slice, never for a whole packed tensor."""
    import safetensors

    real_safe_open = safetensors.safe_open
    sliced = []

    class SliceOnly:
        def __init__(self, *args, **kwargs):
            self.handle = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, name):
            pytest.fail(f"the whole tensor {name} was read")

        def get_slice(self, name):
            sliced.append(name)
            return self.inner.get_slice(name)

    (source,) = loading.open_model(gpt_oss_folder)
    ref = next(r for r in source.tensors if r.name == "model.layers.0.mlp.experts.2.up_proj")
    monkeypatch.setattr(safetensors, "safe_open", SliceOnly)
    weight = ref.read_float64()
    prefix = "model.layers.0.mlp.experts.gate_up_proj"
    assert sliced == [f"{prefix}_blocks", f"{prefix}_scales"]
    assert weight.shape == (INTERMEDIATE, HIDDEN) and np.isfinite(weight).all() and weight.any()


def test_missing_scales_is_an_error(tmp_path):
    from safetensors.torch import save_file

    blocks, _ = packed()
    save_file({"model.layers.0.mlp.experts.down_proj_blocks": torch.from_numpy(blocks)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(loading.ModelFileError, match="down_proj_scales"):
        loading.open_model(tmp_path)


def test_antigrok_analyze_reads_the_experts(gpt_oss_folder, tmp_path, capsys):
    out = tmp_path / "htsr.csv"
    assert cli.main(["analyze", str(gpt_oss_folder), "-q", "-o", str(out), "--layers", r"experts\.0\.|q_proj"]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    expected = {f"model.layers.{i}.mlp.experts.0.{p}" for i in range(LAYERS) for p in ("gate_proj", "up_proj",
                                                                                       "down_proj")}
    assert expected <= set(table["layer"])
    experts = table[table["stored_dtype"] == "mxfp4"]
    assert len(experts) == LAYERS * 3
    # expert 0 of the synthetic model is all non-negative (a mean shift): Correlation Traps in every matrix
    assert (experts["num_traps"] > 0).all()
    # the same rows as the library's one-process analysis
    library, _ = analyze_path(gpt_oss_folder, layers=r"experts\.0\.|q_proj")
    np.testing.assert_array_equal(table["alpha"].to_numpy(), library["alpha"].to_numpy())
