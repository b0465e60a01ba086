"""The tensors of a TorchScript archive (``torch.jit.save``), read without running anything from it.

``torch.load`` hands such a file to ``torch.jit.load``, which compiles the archive's code, and
refuses it with ``weights_only=True``; antigrok runs neither. An archive is a zip holding
``<name>/data.pkl`` (the module tree, pickled), ``<name>/data/<key>`` (raw tensor bytes) and
``<name>/code/`` (TorchScript source, never read here). ``data.pkl`` is unpickled by
``_ArchiveUnpickler``, which resolves only these globals, each to antigrok's own code:

    __torch__.*                    a plain record of the module's attributes (``_ScriptRecord``)
    torch._utils _rebuild_tensor_v2 a tensor over the bytes of ``data/<key>`` (``_rebuild_tensor``)
    torch <Dtype>Storage           the dtype of those bytes
    collections OrderedDict        OrderedDict
    torch.jit._pickle build_*list  the list itself

Any other global makes the file refused (``RefusedGlobal``; antigrok.formats.loading turns it into its
UnsafeFileError) before anything is built from it. The
module tree becomes a state_dict: every tensor attribute, named by its dotted path (``0.weight``,
``encoder.conv1.weight``), as ``model.state_dict()`` names parameters and buffers.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip with ``<name>/data.pkl`` and ``<name>/code/``: what ``torch.jit.save`` writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/data.pkl") for name in names) and any("/code/" in name for name in names)


class RefusedGlobal(ValueError):
    """data.pkl names a Python object outside the allowlist: nothing was built from it."""


class UnreadableArchive(ValueError):
    """A TorchScript archive whose tensors cannot be read."""


class _ScriptRecord:
    """A TorchScript module or object of the archive: its pickled attributes, nothing else."""

    attributes: dict = {}  # replaced (never mutated) by __setstate__

    def __setstate__(self, state):
        self.attributes = dict(state) if isinstance(state, dict) else {}


class _Storage:
    """The bytes of one ``data/<key>`` record and their dtype (a storage, before any tensor views it)."""

    def __init__(self, data: bytes, dtype: str):
        self.data, self.dtype = data, dtype


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_):
    import torch

    flat = torch.frombuffer(bytearray(storage.data), dtype=getattr(torch, storage.dtype)) if storage.data else \
        torch.empty(0, dtype=getattr(torch, storage.dtype))
    return flat.as_strided(tuple(size), tuple(stride), int(offset)).clone()


class _StorageType(str):
    """What a ``torch <Dtype>Storage`` global resolves to: its dtype's name."""


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, stream, archive: zipfile.ZipFile, prefix: str):
        super().__init__(stream)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _ScriptRecord
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return list
        raise RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(dtype, _StorageType):
            raise pickle.UnpicklingError(f"unknown persistent id {pid[:2]!r}")
        return _Storage(self.archive.read(f"{self.prefix}data/{key}"), str(dtype))


def _tensors_of(record, prefix: str, found: dict) -> None:
    import torch

    for name, value in record.attributes.items():
        if isinstance(value, torch.Tensor):
            found[prefix + str(name)] = value
        elif isinstance(value, _ScriptRecord):
            _tensors_of(value, f"{prefix}{name}.", found)


def read_torchscript_state_dict(path: str | Path) -> dict:
    """The tensors of a TorchScript archive by dotted name, read without running its code.

    RefusedGlobal (its message: the object's dotted name) for a global outside the list above,
    UnreadableArchive for an archive that cannot be read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            [data_pkl] = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            prefix = data_pkl[: -len("data.pkl")]
            with archive.open(data_pkl) as stream:
                root = _ArchiveUnpickler(stream, archive, prefix).load()
    except RefusedGlobal:
        raise
    except Exception as error:
        raise UnreadableArchive(f"{type(error).__name__}: {' '.join(str(error).split())}") from None
    if not isinstance(root, _ScriptRecord):
        raise UnreadableArchive("its data.pkl holds no module")
    found: dict = {}
    _tensors_of(root, "", found)
    return found
