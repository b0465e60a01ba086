"""HTSR alpha and Correlation Traps of a user's own model, read layer by layer (``antigrok analyze``).

``analyze_model(source)`` analyses the tensors of one ``antigrok.formats.loading.ModelSource`` one at a
time: each selected weight matrix or conv kernel (``antigrok.htsr.weight_skip_reason``; a kernel's
slices pooled as WeightWatcher pools them, antigrok.spectra.kernels) is read, converted to float64 (exact from
bf16, fp16 and fp32), analysed by ``antigrok.htsr.analyze_weights`` exactly as the workflow's spectra rule does
(so a workflow checkpoint gives its run's htsr.csv rows), its traps counted at Tracy-Widom scale
1.0, and dropped before the next is read. Memory is bounded by the largest layer, not the model.

Tensors that are not analysed are listed with the reason (``SKIPPED_COLUMNS``): not matched by
the layer filter, not floating point, 1-D (biases, norms), 3-D but not named ``*.weight`` (not a
Conv1d kernel), 5-D or more, too small or too large for WeightWatcher's fit, or holding NaN /
infinite entries.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from antigrok import htsr
from antigrok.formats.loading import ModelSource, TensorRef
from antigrok.spectra.primitives import layer_name

ALPHA_CRITICAL = 2.0  # htsr.alpha_critical: alpha below it is over-correlated (the paper's threshold)
SKIPPED_COLUMNS = ["path", "tensor", "shape", "dtype", "reason"]
NOT_SELECTED = "not matched by --layers"


def skip_reason(ref: TensorRef, layers: re.Pattern | None = None) -> str:
    """Why a tensor is not analysed, from its name, shape and dtype alone ("" if it is)."""
    if layers is not None and not layers.search(ref.name):
        return NOT_SELECTED
    if ref.skip_reason:
        return ref.skip_reason
    return htsr.weight_skip_reason(ref.name, ref.shape, ref.is_floating, ref.dtype)


# Correlation Traps at Tracy-Widom scale 1: WeightWatcher's count, and the count with the mean-shift
# outlier of the shuffled matrix removed (antigrok.spectra.traps)
TRAP_COUNTS = ["num_traps", "num_traps_centered"]


@dataclass
class ModelAnalysis:
    """The rows of one model (htsr.csv columns, ``num_traps``, ``num_traps_centered``, ``stored_dtype``)
    and its skip list."""

    source: ModelSource
    table: pd.DataFrame
    skipped: pd.DataFrame
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _skipped_row(source: ModelSource, ref: TensorRef, reason: str) -> dict:
    return {"path": str(source.path), "tensor": ref.name, "shape": "x".join(map(str, ref.shape)) or "scalar",
            "dtype": ref.dtype, "reason": reason}


def skipped_file_row(path, reason: str) -> dict:
    """A row of the skipped table for a whole file or folder not read (its tensor, shape, dtype empty)."""
    return {"path": str(path), "tensor": "", "shape": "", "dtype": "", "reason": reason}


def analyze_model(source: ModelSource, *, seed: int | None = None, layers: re.Pattern | str | None = None,
                  fix_fingers="clip_xmax", engine: str = htsr.DEFAULT_ENGINE,
                  on_tensor: Callable[[TensorRef, bool], None] | None = None) -> ModelAnalysis:
    """Every selected 2-D weight of one model, one tensor in memory at a time.

    ``seed``: the run seed of the randomization (default: the checkpoint's own seed, else 0); the step
    is the checkpoint's (else 0). ``layers``: a regular expression searched in the tensor names (None:
    every 2-D floating tensor, embeddings included). ``on_tensor(ref, analysed)`` is called after each
    tensor (progress bars).
    """
    if isinstance(layers, str):
        layers = re.compile(layers)
    run_seed = seed if seed is not None else (source.seed or 0)
    step = source.step or 0
    rows, skipped = [], []
    start = time.perf_counter()
    for ref in source.tensors:
        reason = skip_reason(ref, layers)
        weight = None if reason else ref.read_float64()
        if weight is not None and not np.all(np.isfinite(weight)):
            reason = "has NaN or infinite entries"
        if reason:
            skipped.append(_skipped_row(source, ref, reason))
        else:
            layer = layer_name(ref.name)
            table, traps = htsr.analyze_with_traps({layer: weight}, run_seed=run_seed, step=step,
                                                   fix_fingers=fix_fingers, engine=engine)
            del weight  # the next tensor is read only after this one is freed
            rows.append({**table.iloc[0].to_dict(), **{column: traps[column].iloc[0] for column in TRAP_COUNTS},
                         "stored_dtype": ref.dtype})
        if on_tensor is not None:
            on_tensor(ref, not reason)
    table = htsr.htsr_table(rows)
    for column in TRAP_COUNTS:
        table[column] = pd.array([row[column] for row in rows], dtype="Int64")
    table["stored_dtype"] = [row["stored_dtype"] for row in rows]
    return ModelAnalysis(source, table, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), time.perf_counter() - start,
                         notes=list(source.notes))


def summary_lines(tables: pd.DataFrame, skipped: pd.DataFrame, num_models: int, names_shown: int = 6) -> list[str]:
    """The end-of-run summary: layers analysed, tensors and files skipped, median alpha, alpha < 2,
    traps (and what a trap count counts)."""

    def named(names) -> str:
        names = list(dict.fromkeys(names))
        more = f", ... ({len(names) - names_shown} more)" if len(names) > names_shown else ""
        return ", ".join(names[:names_shown]) + more

    unit = "layers" if num_models <= 1 else "(file, layer) rows"
    is_file = skipped["tensor"] == ""
    files = f" and {int(is_file.sum())} file{'s' if is_file.sum() != 1 else ''}" if is_file.any() else ""
    lines = [f"summary: {len(tables)} {unit} analysed in {num_models} model{'s' if num_models != 1 else ''}, "
             f"{int((~is_file).sum())} tensors{files} skipped; every tensor analysed in float64 (bf16/fp16/fp32 "
             "upcast exactly)"]
    labels = skipped["tensor"].where(~is_file, skipped["path"].map(lambda p: Path(p).name))
    for reason, group in labels.groupby(skipped["reason"], sort=False):
        lines.append(f"  skipped {len(group)} ({reason}): {named(group)}")
    if len(tables):
        alpha = pd.to_numeric(tables["alpha"], errors="coerce")
        failed = int(alpha.isna().sum())
        median = f"{alpha.median():.3f}" if alpha.notna().any() else "n/a"
        lines.append(f"  median alpha {median}" + (f" ({failed} power-law fits failed)" if failed else ""))
        label = tables["layer"] if num_models <= 1 else tables["path"].map(str) + ":" + tables["layer"]
        low = alpha < ALPHA_CRITICAL
        lines.append(f"  alpha < {ALPHA_CRITICAL:g} (over-correlated): {int(low.sum())} of {len(tables)} {unit}"
                     + (f": {named(label[low])}" if low.any() else ""))
        traps = tables["num_traps"].fillna(0).astype(int) > 0
        lines.append(f"  with Correlation Traps: {int(traps.sum())} of {len(tables)} {unit}"
                     + (f": {named(label[traps])}" if traps.any() else ""))
        lines.append(POOLED_TRAPS_NOTE)
    return lines


# num_traps pools WeightWatcher's shuffled replicas (5 below 100 eigenvalues) and a conv kernel's slices
POOLED_TRAPS_NOTE = ("  (a trap count pools the shuffled copies: 5 of a layer with fewer than 100 eigenvalues, "
                     "one per kernel position of a conv layer; it can exceed the layer's eigenvalues, as "
                     "WeightWatcher's does)")


def analyze_path(path, *, seed: int | None = None, layers: re.Pattern | str | None = None, fix_fingers="clip_xmax",
                 engine: str = htsr.DEFAULT_ENGINE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model a path holds (a file, a Hugging Face folder, a folder of checkpoints), as
    ``antigrok analyze`` reads it: (rows with a ``path`` column first, skipped tensors).

    Raises antigrok.formats.loading.ModelFileError (a ValueError) for a path that cannot be read or refused.
    """
    from antigrok.formats.loading import model_openers

    tables, skipped = [], []
    for model_path, opener in model_openers(path):
        result = analyze_model(opener(), seed=seed, layers=layers, fix_fingers=fix_fingers, engine=engine)
        result.table.insert(0, "path", str(model_path))
        tables.append(result.table)
        skipped.append(result.skipped)
    return pd.concat(tables, ignore_index=True), pd.concat(skipped, ignore_index=True)
