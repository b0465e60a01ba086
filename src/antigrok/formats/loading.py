"""Reading model files without running them: the one loader for every file from outside the job.

A model file is data, never code. Pickle-based formats can name any Python callable and have it
called while the file is read, so nothing here unpickles arbitrary objects:

    .pt .pth .bin .ckpt (torch)  ``torch.load(weights_only=True)``: tensors, numbers, strings,
                                 lists, tuples and dicts only; anything else is refused
    .safetensors                 ``safetensors.safe_open``: a JSON header and raw bytes, no pickle
    .npz                         ``numpy.load(allow_pickle=False)``; an object array (a pickle) is
                                 refused from its header, before any of it is read
    .onnx                        ``onnx.load`` (protobuf; extra ``antigrok[onnx]``): the initializers,
                                 nothing of the graph is run
    TorchScript archive          (``torch.jit.save``, any suffix) antigrok.formats.torchscript: the tensors of
                                 its data.pkl through an allowlist; its code is never compiled or run

A refused file raises ``UnsafeFileError`` (a ``ValueError``) whose message is one line naming the
file and what it would have needed; nothing of it has executed. Any other unreadable file raises
``ModelFileError`` (also a ``ValueError``), one line naming the file and why (an empty file: "the
file is empty").

``open_model(path)`` turns a path into ``ModelSource`` objects: lists of tensors with their name,
shape and stored dtype, each read only when asked (``TensorRef.read_float64``), and notes on how
the file was read (the key its state_dict was under, ...). Safetensors and ``.npz`` files are read
one tensor at a time, so a model larger than memory is analysed with memory bounded by its largest
tensor; torch files are memory-mapped where their format allows (``torch.save``'s zip format),
which bounds the resident memory by the pages actually touched.

    file.safetensors                    one model
    folder/ with model.safetensors.index.json (+ shards), model.safetensors,
            pytorch_model.bin.index.json (+ shards) or pytorch_model.bin: one Hugging Face model
            (safetensors preferred when a folder has both); gpt-oss's MXFP4 experts
            (``*.experts.*_blocks`` / ``_scales``) become one tensor per expert and
            projection (antigrok.formats.mxfp4), each read from its own slice; the folder's other
            files are listed with the reason they are not read
    any other folder/                   one model per model file (``MODEL_SUFFIXES``), every other
                                        file and subfolder listed with the reason (``folder_plan``)
    file.npz                            one model, one tensor per array
    file.onnx                           one model, one tensor per initializer
    file.pt                             a workflow checkpoint ({"step", "model", "seed", ...}), a
                                        bare state_dict, or a checkpoint holding one under a key of
                                        ``STATE_DICT_KEYS`` (the PyTorch tutorial's "model_state_dict",
                                        Lightning's "state_dict", ...), or a TorchScript archive
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
                   "double", "mxfp4"}  # mxfp4: a gpt-oss expert matrix, dequantized by antigrok.formats.mxfp4


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
                f"containers (torch.load weights_only=True); {SAVE_A_STATE_DICT}") from None
        raise ModelFileError(f"{path}: not a torch checkpoint ({type(error).__name__}: {_one_line(error)})") from None
    except Exception as error:
        raise ModelFileError(f"{path}: not a torch checkpoint ({type(error).__name__}: {_one_line(error)})") from None


# Where users' checkpoints keep the state_dict, in the order looked at: the workflow's and most
# training scripts' "model", the PyTorch tutorial's "model_state_dict", Lightning's "state_dict", ...
STATE_DICT_KEYS = ("model", "model_state_dict", "state_dict", "model_state", "net", "network", "module",
                   "model_state_dicts", "ema_state_dict", "weights")
SAVE_A_STATE_DICT = ("save the weights as torch.save(model.state_dict(), path), or a dict with the state_dict under "
                     f"one of the keys {', '.join(repr(k) for k in STATE_DICT_KEYS[:4])}, or as .safetensors")


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def is_state_dict(value) -> bool:
    """A dict of tensors (what ``nn.Module.state_dict()`` returns): at least one tensor, and nothing but
    tensors and plain numbers or strings (listed as skipped) beside them, nothing nested."""
    if not isinstance(value, dict) or not any(_is_tensor(v) for v in value.values()):
        return False
    return all(_is_tensor(v) or v is None or isinstance(v, (int, float, str)) for v in value.values())


def _describe(value) -> str:
    if _is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(repr(k) for k in keys[:12]) + (", ..." if len(keys) > 12 else "")
        return f"a dict with the top-level keys {shown}" if keys else "an empty dict"
    return f"a {type(value).__name__}"


def checkpoint_from_payload(payload: Any, path: str | Path) -> dict:
    """A checkpoint dict with a ``model`` state_dict (``step``/``seed`` None when absent) and
    ``state_dict_key``: where the state_dict was found ("" for a bare state_dict).

    Accepts the workflow's checkpoints ({"step", "model", ...}), a bare state_dict (every value a
    tensor), and a dict holding a state_dict under one of ``STATE_DICT_KEYS`` (the PyTorch tutorial's
    {"model_state_dict", "optimizer_state_dict", "epoch"}, Lightning's {"state_dict", "global_step",
    ...} with its keys as stored, e.g. ``model.fc1.weight``). ModelFileError otherwise, naming what
    the file holds and what to save instead.
    """
    if is_state_dict(payload):
        return {"step": None, "seed": None, "model": payload, "state_dict_key": "", "other_keys": []}
    if isinstance(payload, dict):
        # The workflow's own checkpoints, and the same layout without its "format" key (tests, the
        # older checkpoints, scripts that save {"step", "model", "seed"}): their step seeds the shuffle.
        workflow_layout = "format" in payload or isinstance(payload.get("step"), int)
        if workflow_layout and isinstance(payload.get("model"), dict):
            return {"seed": None, **payload, "state_dict_key": "model", "other_keys": []}
        for key in STATE_DICT_KEYS:
            if is_state_dict(payload.get(key)):
                # the step seeds the shuffle: the workflow's own, or Lightning's global_step; a user's "step"
                # or "epoch" counts something else, and such a file is seeded as step 0
                step = payload.get("global_step") if key == "state_dict" else None
                return {"step": step if isinstance(step, int) else None, "seed": None,
                        "model": payload[key], "state_dict_key": key,
                        "other_keys": [k for k in payload if k != key]}
    raise ModelFileError(f"{path}: no state_dict found: the file holds {_describe(payload)} (a state_dict, a dict "
                         f"of tensors, is looked for as the whole file or under the keys "
                         f"{', '.join(repr(k) for k in STATE_DICT_KEYS)}); {SAVE_A_STATE_DICT}")


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
    notes: list[str] = field(default_factory=list)  # how it was read, for the user (the state_dict's key, ...)


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
    step, seed, key = checkpoint.get("step"), checkpoint.get("seed"), checkpoint["state_dict_key"]
    if kind is None:
        kind = "antigrok checkpoint" if "format" in checkpoint else "torch state_dict"
    notes = []
    if key and "format" not in checkpoint:
        others = ", ".join(repr(k) for k in checkpoint["other_keys"])
        kind = f"torch checkpoint (state_dict under {key!r})"
        notes.append(f"read the state_dict under {key!r}" + (f"; not analysed: {others}" if others else ""))
    return ModelSource(path, kind, _state_dict_tensors(checkpoint["model"]),
                       step=None if step is None else int(step), seed=None if seed is None else int(seed),
                       notes=notes)


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
    (antigrok.formats.mxfp4), in natural name order; other listings unchanged."""
    from antigrok.formats import mxfp4

    if not mxfp4.has_mxfp4(refs):
        return refs
    try:
        expanded = mxfp4.expand_mxfp4(refs, file_of)
    except mxfp4.MXFP4Error as error:
        raise ModelFileError(f"{model}: {error}") from None
    return sorted(expanded, key=lambda ref: natural_key(ref.name))


def onnx_refs(path: Path) -> tuple[list[TensorRef], list[str]]:
    """The initializers of an ONNX file (name, shape, dtype; each read only when asked) and notes.

    ``onnx.load`` parses the protobuf; nothing of the graph is run (no onnxruntime). Weights kept
    in Constant nodes instead of initializers are not read (WeightWatcher reads initializers
    only); a note says how many such tensors there are.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ModelFileError(f"{path}: an ONNX file; reading its weights needs the onnx package: "
                             "pip install 'antigrok[onnx]' (or pip install onnx)") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ModelFileError(f"{path}: not an ONNX model ({type(error).__name__}: {_one_line(error)})") from None
    refs = []
    for initializer in model.graph.initializer:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(initializer.data_type)).name
        except Exception:
            dtype = f"onnx type {initializer.data_type}"
        refs.append(TensorRef(initializer.name, tuple(int(n) for n in initializer.dims), dtype,
                              read=lambda t=initializer: numpy_helper.to_array(t, base_dir=str(path.parent))))
    constants = sum(1 for node in model.graph.node if node.op_type == "Constant")
    notes = [f"{constants} Constant nodes not read (their tensors are not initializers; WeightWatcher reads "
             "initializers only)"] if constants else []
    if not refs:
        notes.append("the graph has no initializers")
    return refs, notes


def torchscript_source(path: Path) -> ModelSource:
    """A TorchScript archive's tensors, read without compiling or running its code (antigrok.formats.torchscript)."""
    from antigrok.formats.torchscript import RefusedGlobal, UnreadableArchive, read_torchscript_state_dict

    try:
        tensors = read_torchscript_state_dict(path)
    except RefusedGlobal as error:
        raise UnsafeFileError(f"{path}: refused: its TorchScript data names the Python object {error}, which "
                              f"antigrok does not build; {SAVE_A_STATE_DICT}") from None
    except UnreadableArchive as error:
        raise ModelFileError(f"{path}: a TorchScript archive whose tensors cannot be read ({error}); "
                             f"{SAVE_A_STATE_DICT}") from None
    return ModelSource(path, "TorchScript archive", _state_dict_tensors(tensors),
                       notes=["read the tensors of a TorchScript archive (its code is not run)"])


def file_source(path: Path) -> ModelSource:
    """One model file, by its suffix (unknown suffixes are tried as torch files)."""
    if path.is_file() and path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        refs = sorted(safetensors_refs(path), key=lambda ref: natural_key(ref.name))
        return ModelSource(path, "safetensors", _with_mxfp4_experts(refs, lambda _: path, path))
    if path.suffix == ".npz":
        return npz_source(path)
    if path.suffix == ".onnx":
        refs, notes = onnx_refs(path)
        return ModelSource(path, "ONNX initializers", refs, notes=notes)
    from antigrok.formats.torchscript import is_torchscript_archive

    if is_torchscript_archive(path):
        return torchscript_source(path)
    return torch_source(path)


MODEL_SUFFIXES = (".safetensors", ".npz", ".onnx", *TORCH_SUFFIXES)
NOT_A_MODEL_FILE = f"not a model file (antigrok reads {' '.join(MODEL_SUFFIXES)})"


@dataclass
class FolderPlan:
    """What a path holds: the models to open, in order, and every other file with why it is not read."""

    openers: list[tuple[Path, Callable[[], ModelSource]]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _hugging_face_plan(folder: Path) -> FolderPlan | None:
    """A Hugging Face model folder as one model (safetensors preferred), the other files listed."""
    for index_name in HF_INDEX_FILES:
        if (folder / index_name).is_file():
            opener = lambda: hugging_face_source(folder, index_name, None)  # noqa: E731
            read = {folder / index_name} | _shard_paths(folder, index_name)
            break
    else:
        for single_name in HF_SINGLE_FILES:
            if (folder / single_name).is_file():
                opener = lambda: hugging_face_source(folder, None, single_name)  # noqa: E731
                read = {folder / single_name}
                break
        else:
            return None
    model_name = next(p.name for p in sorted(read) if p.name in HF_INDEX_FILES + HF_SINGLE_FILES)
    skipped = []
    for file in sorted(p for p in folder.iterdir() if p not in read):
        if file.is_dir():
            skipped.append((file, "a folder inside the model folder (give its path to analyse it)"))
        elif file.suffix in MODEL_SUFFIXES:
            skipped.append((file, f"not read: the folder is one Hugging Face model, read from {model_name}"))
        else:
            skipped.append((file, NOT_A_MODEL_FILE))
    return FolderPlan([(folder, opener)], skipped)


def _shard_paths(folder: Path, index_name: str) -> set[Path]:
    try:
        return set(_shard_files(folder, index_name).values())
    except ModelFileError:
        return set()  # the error is raised, naming the shard, when the model is opened


def folder_plan(path: str | Path) -> FolderPlan:
    """Every model a path holds, each with the function that opens it, and the files not read.

    A Hugging Face folder is one model (safetensors preferred over pytorch_model.bin); any other
    folder gives one model per model file (``MODEL_SUFFIXES``), each opened only when its turn
    comes; every other file and subfolder is listed with the reason. ModelFileError for a path
    that does not exist or a folder without model files (naming what it holds).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    if not path.is_dir():
        return FolderPlan([(path, lambda: file_source(path))])
    hugging_face = _hugging_face_plan(path)
    if hugging_face is not None:
        return hugging_face
    entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    files = [p for p in entries if p.is_file() and p.suffix in MODEL_SUFFIXES]
    skipped = [(p, "a subfolder (give its path to analyse it)" if p.is_dir() else NOT_A_MODEL_FILE)
               for p in entries if p not in files]
    if not files:
        found = ", ".join(p.name for p, _ in skipped[:6]) + (", ..." if len(skipped) > 6 else "")
        raise ModelFileError(f"{path}: folder holds no model files ({' '.join(MODEL_SUFFIXES)}, or a Hugging Face "
                             f"model.safetensors / pytorch_model.bin with or without an index); "
                             f"{'found: ' + found if found else 'it is empty'}")
    return FolderPlan([(file, lambda file=file: file_source(file)) for file in files], skipped)


def model_openers(path: str | Path) -> list[tuple[Path, Callable[[], ModelSource]]]:
    """(path, function that opens the model) for every model a path holds, in order (``folder_plan``)."""
    return folder_plan(path).openers


def open_model(path: str | Path) -> list[ModelSource]:
    """Every model a path holds, opened (headers read; tensors still on disk where the format allows)."""
    return [opener() for _, opener in model_openers(path)]


def read_state_dict(path: str | Path) -> dict:
    """The float64 state_dict of a checkpoint file (.pt as antigrok.training.train writes it, or .safetensors)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = {name: read_safetensor(path, name) for name, _, _ in safetensors_headers(path)}
    else:
        tensors = dict(read_checkpoint(path)["model"])
    return {name: tensor.to(torch.float64) for name, tensor in tensors.items()}
