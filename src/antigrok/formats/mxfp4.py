"""MXFP4 mixture-of-experts tensors (gpt-oss), dequantized one expert matrix at a time.

gpt-oss checkpoints store each block's experts packed, in the layout of Hugging Face transformers'
``integrations/mxfp4.py``:

    model.layers.{i}.mlp.experts.gate_up_proj_blocks   uint8 (E, 2 * intermediate, hidden / 32, 16)
    model.layers.{i}.mlp.experts.gate_up_proj_scales   uint8 (E, 2 * intermediate, hidden / 32)
    model.layers.{i}.mlp.experts.gate_up_proj_bias     float (E, 2 * intermediate)
    model.layers.{i}.mlp.experts.down_proj_{blocks,scales,bias}   (E, hidden, intermediate / 32, ...)

Each byte of ``blocks`` holds two E2M1 (4-bit float) values, the low nibble first, looked up in
``E2M1_VALUES``; every 32 values along the input dimension share one scale, ``2 ** (scale - 127)``.
The rows are output features, so an expert's dequantized matrix is (out, in), torch's ``nn.Linear``
layout (transformers' ``convert_moe_packed_tensors`` returns its transpose). In ``gate_up`` the gate
and up projections are interleaved: gate is rows 0, 2, 4, ..., up rows 1, 3, 5, ... (transformers'
``gate_up[..., ::2], gate_up[..., 1::2]`` on the transposed matrix).

``expand_mxfp4(refs, file_of)`` replaces the blocks/scales pairs of a model's tensor listing
(``antigrok.formats.loading.TensorRef``s) by one per (block, expert, projection), named
``model.layers.{i}.mlp.experts.{e}.gate_proj`` (``up_proj``, ``down_proj``), dtype ``mxfp4``.
Each reads only its expert's slice of the packed tensors (safetensors slices), so memory is
bounded by one expert matrix in float64, not by the block's packed tensor. The dequantization is
exact in float64 (E2M1 values have two significant bits; the scales are powers of two). The
per-expert biases are listed, not analysed. A malformed or incomplete packed tensor raises
``MXFP4Error`` (a ``ValueError``; antigrok.formats.loading reports it as a ModelFileError naming the model).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import numpy as np

# E2M1 code -> value: sign bit, 2 exponent bits, 1 mantissa bit (OCP Microscaling spec)
E2M1_VALUES = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64)
SCALE_BIAS = 127  # the E8M0 scale's exponent bias
VALUES_PER_BLOCK = 32
MXFP4_DTYPE = "mxfp4"
PACKED = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<tensor>gate_up_proj|down_proj)_(?P<part>blocks|scales|bias)$")
# the projections an expert's packed tensor holds, with the rows of each
PROJECTIONS = {"gate_up_proj": (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))),
               "down_proj": (("down_proj", slice(None)),)}
BIAS_SKIP_REASON = "MXFP4 experts' biases (experts, out): only the experts' weight matrices are analysed"


class MXFP4Error(ValueError):
    """Packed MXFP4 tensors that cannot be read; the message names them and says why."""


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 ``blocks`` (..., rows, G, 16) uint8 and ``scales`` (..., rows, G) uint8 -> float64
    (..., rows, G * 32): value 2k of a block from the low nibble of byte k, 2k + 1 from the high one,
    each times ``2 ** (scale - 127)``. Exact."""
    blocks = np.asarray(blocks)
    scales = np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError(f"MXFP4 blocks and scales must be uint8; got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[-1] != VALUES_PER_BLOCK // 2 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not match: blocks must be "
                         "(..., rows, G, 16) and scales (..., rows, G)")
    values = np.empty(blocks.shape[:-1] + (VALUES_PER_BLOCK,), dtype=np.float64)
    values[..., 0::2] = E2M1_VALUES[blocks & 0x0F]
    values[..., 1::2] = E2M1_VALUES[blocks >> 4]
    exponents = scales.astype(np.int32) - SCALE_BIAS
    values = np.ldexp(values, exponents[..., None], out=values)
    return values.reshape(blocks.shape[:-2] + (blocks.shape[-2] * VALUES_PER_BLOCK,))


def read_expert_slice(path: Path, name: str, expert: int, fallback: Callable[[], object]) -> np.ndarray:
    """Expert ``expert``'s slice of a packed tensor as a NumPy array: from a safetensors file only that
    slice is read; otherwise the whole tensor (``fallback()``) is read and sliced."""
    if path is not None and path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_slice(name)[expert].numpy()
        except Exception as error:
            raise MXFP4Error(f"{path}: expert {expert} of tensor {name!r} cannot be read "
                                 f"({type(error).__name__}: {' '.join(str(error).split())})") from None
    tensor = fallback()[expert]
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def _expert_matrix_reader(blocks, scales, expert: int, rows: slice,
                          file_of: Callable[[str], Path | None]) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        packed = read_expert_slice(file_of(blocks.name), blocks.name, expert, blocks.read)[rows]
        exponents = read_expert_slice(file_of(scales.name), scales.name, expert, scales.read)[rows]
        return dequantize(packed, exponents)

    return read


def _check_pair(blocks, scales) -> None:
    if (len(blocks.shape) != 4 or blocks.shape[-1] != VALUES_PER_BLOCK // 2 or blocks.shape[:-1] != scales.shape
            or blocks.dtype != "uint8" or scales.dtype != "uint8"):
        raise MXFP4Error(f"{blocks.name} {blocks.shape} {blocks.dtype} and {scales.name} {scales.shape} "
                             f"{scales.dtype} are not MXFP4 blocks (E, rows, G, 16) and scales (E, rows, G) of "
                             "uint8; is this a gpt-oss checkpoint?")


def expand_mxfp4(refs: list, file_of: Callable[[str], Path | None]) -> list:
    """A model's tensor listing with every MXFP4 blocks/scales pair replaced by its expert matrices.

    ``file_of(name)``: the safetensors file holding a tensor (None: read it whole with its ``read``).
    The expert matrices take the place of the blocks tensor; the scales tensor is dropped (it is part
    of them); the bias tensors stay, marked not to be analysed. Other tensors are unchanged.
    A blocks tensor without its scales (or the reverse) is an MXFP4Error.
    """
    by_name = {ref.name: ref for ref in refs}
    expanded = []
    for ref in refs:
        match = PACKED.match(ref.name)
        if match is None:
            expanded.append(ref)
            continue
        stem = f"{match['prefix']}.{match['tensor']}"
        if match["part"] == "bias":
            expanded.append(dataclasses.replace(ref, skip_reason=BIAS_SKIP_REASON))
            continue
        blocks, scales = by_name.get(f"{stem}_blocks"), by_name.get(f"{stem}_scales")
        if blocks is None or scales is None:
            missing = f"{stem}_scales" if scales is None else f"{stem}_blocks"
            raise MXFP4Error(f"MXFP4 tensor {ref.name!r} has no {missing!r}: the model folder is incomplete")
        if match["part"] == "scales":
            continue
        _check_pair(blocks, scales)
        num_experts, num_rows, num_groups, _ = blocks.shape
        for expert in range(num_experts):
            for projection, rows in PROJECTIONS[match["tensor"]]:
                shape = (len(range(num_rows)[rows]), num_groups * VALUES_PER_BLOCK)
                expanded.append(dataclasses.replace(
                    blocks, name=f"{match['prefix']}.{expert}.{projection}", shape=shape, dtype=MXFP4_DTYPE,
                    read=_expert_matrix_reader(blocks, scales, expert, rows, file_of)))
    return expanded


def has_mxfp4(refs: list) -> bool:
    """Whether a listing holds MXFP4 packed expert tensors."""
    return any(PACKED.match(ref.name) and ref.name.endswith("_blocks") for ref in refs)
