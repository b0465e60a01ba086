"""A tiny synthetic gpt-oss model folder, made from a seed: the tests' and benchmarks' stand-in for
gpt-oss-20b / -120b (nothing is downloaded).

The folder has what ``huggingface-cli download openai/gpt-oss-20b`` writes that antigrok reads:
``config.json`` (model_type gpt_oss, MXFP4 quantization_config), ``model.safetensors.index.json``
and its shards, with the real tensor names, dtypes and layouts: bf16 attention, router, embedding
and head; MXFP4 experts (``model.layers.{i}.mlp.experts.{gate_up_proj,down_proj}_{blocks,scales}``
uint8 and ``_bias`` bf16). Only the sizes are small. The experts' values are random E2M1 codes
with a per-row scale, so their spectra are those of random matrices with varied row norms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VALUES_PER_BYTE = 2
BLOCK = 32


def _packed_experts(generator: np.random.Generator, experts: int, rows: int, cols: int):
    """Random MXFP4 (blocks, scales) of ``experts`` matrices (rows, cols): codes uniform, each row's
    scale exponent 2**-6 .. 2**-3 (a row-norm spread). Expert 0 has no negative values (its sign bits
    cleared): a mean shift, a rank-one structure that survives shuffling, so it has Correlation Traps."""
    groups = cols // BLOCK
    blocks = generator.integers(0, 256, size=(experts, rows, groups, BLOCK // VALUES_PER_BYTE), dtype=np.uint8)
    blocks[0] &= 0x77
    row_scales = generator.integers(127 - 6, 127 - 2, size=(experts, rows, 1), dtype=np.uint8)
    scales = np.broadcast_to(row_scales, (experts, rows, groups)).copy()
    return blocks, scales


def gpt_oss_tensors(num_layers: int, num_experts: int, hidden: int, intermediate: int, *, vocab: int = 64,
                    heads: int = 4, kv_heads: int = 2, seed: int = 0) -> dict:
    """name -> torch tensor of a gpt-oss-shaped model (transformers' GptOss names and layouts)."""
    import torch

    if hidden % BLOCK or intermediate % BLOCK:
        raise ValueError(f"hidden ({hidden}) and intermediate ({intermediate}) sizes must be multiples of {BLOCK}")
    generator = np.random.default_rng(seed)
    head_dim = hidden // heads

    def bf16(*shape, scale=0.02):
        return torch.from_numpy(generator.standard_normal(shape) * scale).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": bf16(vocab, hidden), "lm_head.weight": bf16(vocab, hidden),
               "model.norm.weight": bf16(hidden, scale=1.0)}
    for layer in range(num_layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = bf16(hidden, scale=1.0)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = bf16(hidden, scale=1.0)
        for name, out in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim),
                          ("v_proj", kv_heads * head_dim)):
            tensors[f"{prefix}.self_attn.{name}.weight"] = bf16(out, hidden)
            tensors[f"{prefix}.self_attn.{name}.bias"] = bf16(out)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = bf16(hidden, heads * head_dim)
        tensors[f"{prefix}.self_attn.o_proj.bias"] = bf16(hidden)
        tensors[f"{prefix}.self_attn.sinks"] = bf16(heads)
        tensors[f"{prefix}.mlp.router.weight"] = bf16(num_experts, hidden)
        tensors[f"{prefix}.mlp.router.bias"] = bf16(num_experts)
        for name, rows, cols in (("gate_up_proj", 2 * intermediate, hidden), ("down_proj", hidden, intermediate)):
            blocks, scales = _packed_experts(generator, num_experts, rows, cols)
            tensors[f"{prefix}.mlp.experts.{name}_blocks"] = torch.from_numpy(blocks)
            tensors[f"{prefix}.mlp.experts.{name}_scales"] = torch.from_numpy(scales)
            tensors[f"{prefix}.mlp.experts.{name}_bias"] = bf16(num_experts, rows)
    return tensors


def write_gpt_oss_folder(folder: str | Path, num_layers: int = 2, num_experts: int = 4, hidden: int = 64,
                         intermediate: int = 64, *, layers_per_shard: int = 1, seed: int = 0) -> Path:
    """A gpt-oss-shaped Hugging Face folder (config.json, index, shards of ``layers_per_shard``
    blocks; embedding in the first shard, norm and head in the last). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = gpt_oss_tensors(num_layers, num_experts, hidden, intermediate, seed=seed)
    num_shards = max(1, -(-num_layers // layers_per_shard))

    def shard_of(name: str) -> int:
        if name.startswith("model.layers."):
            return int(name.split(".")[2]) // layers_per_shard
        return 0 if "embed" in name else num_shards - 1

    shard_names = [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]
    weight_map = {name: shard_names[shard_of(name)] for name in tensors}
    for index, shard in enumerate(shard_names):
        save_file({name: t.contiguous() for name, t in tensors.items() if weight_map[name] == shard},
                  str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": num_layers,
              "num_local_experts": num_experts, "hidden_size": hidden, "intermediate_size": intermediate,
              "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                  "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
