"""Reading model files without running them: the one loader for every file from outside the job.

A model file is data, never code. Pickle-based formats can name any Python callable and have it
called while the file is read, so nothing here unpickles arbitrary objects:

    .pt .pth .bin .ckpt (torch)  ``torch.load(weights_only=True)``: tensors, numbers, strings,
                                 lists, tuples and dicts only; anything else is refused
    .safetensors                 ``safetensors.safe_open``: a JSON header and raw bytes, no pickle
    .npz                         ``numpy.load(allow_pickle=False)``; an object array (a pickle) is
                                 refused from its header, before any of it is read

A refused file raises ``UnsafeFileError`` (a ``ValueError``) whose message is one line naming the
file and what it would have needed; nothing of it has executed. Any other unreadable file raises
``ModelFileError`` (also a ``ValueError``), one line naming the file and why.

``open_model(path)`` turns a path into ``ModelSource`` objects: lists of tensors with their name,
shape and stored dtype, each read only when asked (``TensorRef.read_float64``). Safetensors and
``.npz`` files are read one tensor at a time, so a model larger than memory is analysed with
memory bounded by its largest tensor; torch files are memory-mapped where their format allows
(``torch.save``'s zip format), which bounds the resident memory by the pages actually touched.

    file.safetensors                    one model
    folder/ with model.safetensors.index.json (+ shards), model.safetensors,
            pytorch_model.bin.index.json (+ shards) or pytorch_model.bin: one Hugging Face model
            (safetensors preferred when a folder has both); gpt-oss's MXFP4 experts
            (``*.experts.*_blocks`` / ``_scales``) become one tensor per expert and
            projection (antigrok.mxfp4), each read from its own slice
    folder/ of *.pt files               one model per file: the workflow's checkpoints
    file.npz                            one model, one tensor per array
    file.pt                             a workflow checkpoint ({"step", "model", "seed", ...}), a
                                        bare state_dict, or a Lightning-style {"state_dict": ...}
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# safetensors' dtype names -> torch's, for the listing before a tensor is read
SAFETENSORS_DTYPES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8", "I16": "int16",
    "U16": "uint16", "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "BOOL": "bool",
}
FLOATING_DTYPES = {"bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "half", "float",
                   "double", "mxfp4"}  # mxfp4: a gpt-oss expert matrix, dequantized by antigrok.mxfp4


class ModelFileError(ValueError):
    """A file or folder that cannot be read as model weights; the message names it and says why."""


class UnsafeFileError(ModelFileError):
    """A file that could only be read by unpickling arbitrary objects (which can run code): refused."""


# ----------------------------------------------------------------------------- the safe loaders


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _refusal_reason(error: Exception) -> str:
    """What torch's weights-only unpickler met, from its (long, multi-line) message."""
    message = str(error)
    match = re.search(r"GLOBAL ([\w.]+)", message)
    if match:
        return f"it names the Python object {match.group(1)}, which unpickling would call or import"
    match = re.search(r"Unsupported operand \d+", message)
    if match:
        return f"it is a pickle that is not a torch tensor file ({match.group(0)})"
    return f"its pickle holds more than tensors, numbers, strings and containers ({_one_line(message)[-200:]})"


def safe_torch_load(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, the only torch.load of a file.

    Raises UnsafeFileError when the file needs more than tensors, numbers, strings, lists, tuples and
    dicts (the weights-only unpickler stops before calling anything), ModelFileError when it is not
    a torch file. ``mmap``: memory-map the tensors (zip-format files; others are read as usual).
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ..." and friends
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not (mmap and "mmap can only be used" in str(error)):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise UnsafeFileError(
                f"{path}: refused: {_refusal_reason(error)}; antigrok reads only tensors, numbers, strings and "
                "containers (torch.load weights_only=True); save the weights as a state_dict of tensors or "
                "as .safetensors") from None
        raise ModelFileError(f"{path}: not a torch checkpoint ({type(error).__name__}: {_one_line(error)})") from None
    except Exception as error:
        raise ModelFileError(f"{path}: not a torch checkpoint ({type(error).__name__}: {_one_line(error)})") from None


def checkpoint_from_payload(payload: Any, path: str | Path) -> dict:
    """A checkpoint dict with a ``model`` state_dict (``step``/``seed`` None when absent).

    Accepts the workflow's checkpoints ({"step", "model", ...}), a bare state_dict (every value a
    tensor) and {"state_dict": state_dict} (Lightning). ModelFileError otherwise.
    """
    import torch

    def is_state_dict(value) -> bool:
        return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())

    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        return payload
    if is_state_dict(payload):
        return {"step": None, "model": payload}  # a bare state_dict from a user's own training
    if isinstance(payload, dict) and is_state_dict(payload.get("state_dict")):
        return {"step": payload.get("global_step"), "model": payload["state_dict"]}
    raise ModelFileError(f"{path}: holds neither a state_dict nor a dict with a 'model' state_dict")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A torch checkpoint file, read safely, as ``checkpoint_from_payload`` gives it."""
    return checkpoint_from_payload(safe_torch_load(path, mmap=mmap), path)


def npz_headers(path: str | Path) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, shape, dtype) of every array of an .npz file, from the .npy headers alone.

    UnsafeFileError for an object array (numpy stores those as pickles), ModelFileError for a file
    that is not an .npz archive of .npy arrays.
    """
    path = Path(path)
    headers = []
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise ModelFileError(f"{path}: not an .npz of arrays (member {member!r} is not a .npy array)")
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(stream)
                name = member[: -len(".npy")]
                if dtype.hasobject:
                    raise UnsafeFileError(
                        f"{path}: refused: array {name!r} holds Python objects, which numpy stores as a pickle "
                        "(numpy.load allow_pickle=False); save numeric arrays only")
                headers.append((name, tuple(int(n) for n in shape), dtype))
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(f"{path}: not an .npz file ({type(error).__name__}: {_one_line(error)})") from None
    return headers


def read_npz_array(path: str | Path, name: str) -> np.ndarray:
    """One array of an .npz file: ``numpy.load(allow_pickle=False)``, the only np.load of a file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[name]
    except ValueError as error:
        if "allow_pickle" in str(error):  # NumPy's refusal of an object array: only that is unsafe
            raise UnsafeFileError(f"{path}: refused: array {name!r}: {_one_line(error)}") from None
        raise ModelFileError(f"{path}: array {name!r} cannot be read ({_one_line(error)}); "
                             f"the file may be truncated or not written by numpy") from None


def safetensors_headers(path: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor of a .safetensors file, from its header."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = []
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                dtype = tensor_slice.get_dtype()
                found.append((name, tuple(int(n) for n in tensor_slice.get_shape()),
                              SAFETENSORS_DTYPES.get(dtype, dtype.lower())))
            return found
    except Exception as error:
        raise ModelFileError(f"{path}: not a safetensors file ({type(error).__name__}: {_one_line(error)})") from None


def read_safetensor(path: str | Path, name: str):
    """One tensor of a .safetensors file (a torch tensor). The file is mapped only while it is read,
    so the pages of the tensors read before are not kept resident."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(name)
    except Exception as error:
        raise ModelFileError(f"{path}: tensor {name!r} cannot be read ({type(error).__name__}: "
                             f"{_one_line(error)})") from None


# ----------------------------------------------------------------------------- tensors and models


def to_float64(value) -> np.ndarray:
    """A torch tensor or array as a C-contiguous float64 NumPy array (exact for every float dtype)."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.ascontiguousarray(value, dtype=np.float64)


@dataclass(frozen=True)
class TensorRef:
    """One stored tensor: its name, shape and stored dtype, read only by ``read_float64``.
    ``skip_reason``: why the format says it is not analysed ("" if it does not say)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], Any] = field(repr=False, compare=False)
    skip_reason: str = ""

    @property
    def is_floating(self) -> bool:
        return self.dtype in FLOATING_DTYPES

    def read_float64(self) -> np.ndarray:
        return to_float64(self.read())


@dataclass
class ModelSource:
    """One model (a file, or a folder of shards): its tensors in order, and step/seed if it has them."""

    path: Path
    kind: str
    tensors: list[TensorRef]
    step: int | None = None
    seed: int | None = None


def natural_key(name: str) -> list:
    """``layers.2`` before ``layers.10``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _torch_dtype_name(value) -> str:
    return str(value.dtype).removeprefix("torch.") if hasattr(value, "dtype") else type(value).__name__


def _state_dict_tensors(state_dict: dict) -> list[TensorRef]:
    refs = []
    for name, value in state_dict.items():
        shape = tuple(value.shape) if hasattr(value, "shape") else ()
        dtype = _torch_dtype_name(value) if hasattr(value, "dtype") else "not a tensor"
        refs.append(TensorRef(str(name), tuple(int(n) for n in shape), dtype, read=lambda v=value: v))
    return refs


def torch_source(path: Path, kind: str | None = None) -> ModelSource:
    checkpoint = read_checkpoint(path, mmap=True)
    step, seed = checkpoint.get("step"), checkpoint.get("seed")
    if kind is None:
        kind = "antigrok checkpoint" if "format" in checkpoint else "torch state_dict"
    return ModelSource(path, kind, _state_dict_tensors(checkpoint["model"]),
                       step=None if step is None else int(step), seed=None if seed is None else int(seed))


def safetensors_refs(path: Path) -> list[TensorRef]:
    return [TensorRef(name, shape, dtype, read=lambda p=path, n=name: read_safetensor(p, n))
            for name, shape, dtype in safetensors_headers(path)]


def npz_source(path: Path) -> ModelSource:
    refs = [TensorRef(name, shape, str(dtype), read=lambda n=name: read_npz_array(path, n))
            for name, shape, dtype in npz_headers(path)]
    return ModelSource(path, "npz", refs)


def _shard_files(folder: Path, index_name: str) -> dict[str, Path]:
    """tensor name -> shard file of a Hugging Face ``*.index.json``; every shard must be there."""
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("its weight_map is empty")
    except Exception as error:
        raise ModelFileError(f"{index_path}: not a Hugging Face index ({type(error).__name__}: "
                             f"{_one_line(error)})") from None
    shards = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ModelFileError(f"{index_path}: shard {shard!r} of {tensor!r} is not a file name in the folder")
        shards[tensor] = folder / shard
    missing = sorted({p.name for p in shards.values() if not p.is_file()})
    if missing:
        raise ModelFileError(f"{folder}: shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} named in "
                             f"{index_name} missing; download the whole model folder")
    return shards


class _TorchShardCache:
    """The state_dict of one torch shard at a time, memory-mapped: a tensor of another shard drops it
    (and its mapping) before that shard is mapped."""

    def __init__(self):
        self.path: Path | None = None
        self.state_dict: dict | None = None

    def tensor(self, path: Path, name: str):
        if path != self.path:
            self.state_dict = None
            self.state_dict = read_checkpoint(path, mmap=True)["model"]
            self.path = path
        return self.state_dict[name]


def _torch_shard_refs(file: Path, cache: _TorchShardCache) -> list[TensorRef]:
    """The tensors of one ``pytorch_model-0000x-of-0000y.bin`` (a bare state_dict), read through ``cache``."""
    listing = torch_source(file, kind="torch state_dict").tensors  # names, shapes, dtypes; then unmapped
    return [TensorRef(ref.name, ref.shape, ref.dtype, read=lambda n=ref.name: cache.tensor(file, n)) for ref in listing]


def hugging_face_source(folder: Path, index_name: str | None, single_name: str | None) -> ModelSource:
    """A Hugging Face model folder: its sharded (index) or single weights file.

    Safetensors tensors come in natural name order; torch shards shard by shard (each mapped once).
    """
    if index_name is not None:
        shards = _shard_files(folder, index_name)
        files = list(dict.fromkeys(shards.values()))
        refs, order = {}, {}
        cache = _TorchShardCache()
        for position, file in enumerate(files):
            file_refs = safetensors_refs(file) if file.suffix == ".safetensors" else _torch_shard_refs(file, cache)
            for ref in file_refs:
                if shards.get(ref.name) == file:
                    refs[ref.name] = ref
                    order[ref.name] = (0 if file.suffix == ".safetensors" else position, natural_key(ref.name))
        absent = [name for name in shards if name not in refs]
        if absent:
            raise ModelFileError(f"{folder}: {len(absent)} tensors of {index_name} are not in their shard "
                                 f"(first: {absent[0]!r} in {shards[absent[0]].name})")
        kind = f"Hugging Face folder ({len(files)} {files[0].suffix.lstrip('.')} shards)"
        ordered = [refs[name] for name in sorted(refs, key=order.__getitem__)]
        return ModelSource(folder, kind, _with_mxfp4_experts(ordered, shards.get, folder))
    file = folder / single_name
    if file.suffix == ".safetensors":
        refs = sorted(safetensors_refs(file), key=lambda ref: natural_key(ref.name))
    else:
        refs = torch_source(file, kind="torch state_dict").tensors
    refs = _with_mxfp4_experts(refs, lambda _: file, folder)
    return ModelSource(folder, f"Hugging Face folder ({single_name})", refs)


def _with_mxfp4_experts(refs: list[TensorRef], file_of: Callable[[str], Path | None],
                        model: Path) -> list[TensorRef]:
    """A listing with gpt-oss's MXFP4 packed experts replaced by one matrix per expert and projection
    (antigrok.mxfp4), in natural name order; other listings unchanged."""
    from antigrok import mxfp4

    if not mxfp4.has_mxfp4(refs):
        return refs
    try:
        expanded = mxfp4.expand_mxfp4(refs, file_of)
    except mxfp4.MXFP4Error as error:
        raise ModelFileError(f"{model}: {error}") from None
    return sorted(expanded, key=lambda ref: natural_key(ref.name))


def file_source(path: Path) -> ModelSource:
    """One model file, by its suffix (unknown suffixes are tried as torch files)."""
    if path.suffix == ".safetensors":
        refs = sorted(safetensors_refs(path), key=lambda ref: natural_key(ref.name))
        return ModelSource(path, "safetensors", _with_mxfp4_experts(refs, lambda _: path, path))
    if path.suffix == ".npz":
        return npz_source(path)
    return torch_source(path)


def _folder_model_files(folder: Path) -> list[Path]:
    """A folder's ``*.pt`` checkpoints, sorted; without any, its other model files."""
    checkpoints = sorted(folder.glob("*.pt"))
    if checkpoints:
        return checkpoints
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".npz", *TORCH_SUFFIXES) and p.is_file())


def model_openers(path: str | Path) -> list[tuple[Path, Callable[[], ModelSource]]]:
    """(path, function that opens the model) for every model a path holds, in order.

    A Hugging Face folder is one model (safetensors preferred over pytorch_model.bin); any other
    folder gives one model per checkpoint file, opened only when its turn comes. ModelFileError for
    a path that does not exist or a folder without model files.
    """
    path = Path(path)
    if path.is_dir():
        for index_name in HF_INDEX_FILES:
            if (path / index_name).is_file():
                return [(path, lambda: hugging_face_source(path, index_name, None))]
        for single_name in HF_SINGLE_FILES:
            if (path / single_name).is_file():
                return [(path, lambda: hugging_face_source(path, None, single_name))]
        files = _folder_model_files(path)
        if not files:
            raise ModelFileError(f"{path}: folder holds no *.pt checkpoint files and no model files (model.safetensors, "
                                 "model.safetensors.index.json, pytorch_model.bin, *.safetensors, *.npz)")
        return [(file, lambda file=file: file_source(file)) for file in files]
    if path.exists():
        return [(path, lambda: file_source(path))]
    raise ModelFileError(f"{path}: no such file or folder")


def open_model(path: str | Path) -> list[ModelSource]:
    """Every model a path holds, opened (headers read; tensors still on disk where the format allows)."""
    return [opener() for _, opener in model_openers(path)]
