"""One large model analysed as many jobs: scatter over its transformer blocks, gather one table.

A model of thousands of weight matrices (gpt-oss-120b: 36 blocks x 128 experts x 3 projections) is
split into *parts*: ``block000``, ``block001``, ... (every tensor named ``model.layers.{i}.*``) and
``other`` (embedding, final norm, head). With ``experts_per_part`` K > 0 a block's experts are split
further, K experts per part (``block003_experts032``: experts 32 .. 32 + K - 1 of block 3), so that a
cluster can run more jobs than the model has blocks. Each part is one job (``analyze_part``) that writes its
own CSV, so a killed or preempted job reruns only its part; ``gather_parts`` puts the parts back in
the model's tensor order. Every matrix is analysed exactly as ``antigrok analyze`` analyses it (same
seed: ``layer_seed(run seed, 0, layer)``), so the gathered table has the one-process table's rows,
plus columns that say where each matrix sits: ``block``, ``expert``, ``projection``, ``layer_type``.

Figures (the 2026 follow-up's): a histogram of alpha per layer type, and the trap count per matrix
against the block; ``flagged_layers`` lists the matrices with alpha < 2 or with traps.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from antigrok.formats.loading import ModelSource, model_openers
from antigrok.spectra.primitives import layer_name
from antigrok.users.analyze import ALPHA_CRITICAL, SKIPPED_COLUMNS, analyze_model

OTHER_PART = "other"
BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
EXPERT = re.compile(r"\.experts\.(\d+)\.")
ANNOTATION_COLUMNS = ["block", "expert", "projection", "layer_type"]
FLAGGED_COLUMNS = ["layer", "layer_type", "block", "expert", "projection", "alpha", "num_traps", "flag"]


def open_single_model(path: str | Path) -> ModelSource:
    """The one model a path holds (a Hugging Face folder or a model file); ValueError for a folder
    of several checkpoints, which ``antigrok analyze`` handles instead."""
    openers = model_openers(path)
    if len(openers) != 1:
        raise ValueError(f"{path}: holds {len(openers)} models; the LLM workflow analyses one model (a Hugging "
                         "Face folder or one file): run `antigrok analyze` on a folder of checkpoints")
    return openers[0][1]()


def part_of(tensor_name: str, experts_per_part: int = 0) -> str:
    """``model.layers.7.mlp.experts.3.up_proj`` -> ``block007`` (``experts_per_part`` 0) or
    ``block007_experts002`` (2: experts 2 and 3); tensors outside the blocks -> ``other``."""
    match = BLOCK.search(tensor_name)
    if not match:
        return OTHER_PART
    part = f"block{int(match.group(1)):03d}"
    expert = EXPERT.search(tensor_name + ".")
    if expert and experts_per_part > 0:
        first = int(expert.group(1)) // experts_per_part * experts_per_part
        part += f"_experts{first:03d}"
    return part


def model_parts(source: ModelSource, experts_per_part: int = 0) -> list[str]:
    """The parts of a model, blocks in order, then ``other`` if it has tensors outside the blocks."""
    names = {part_of(ref.name, experts_per_part) for ref in source.tensors}
    return sorted(names - {OTHER_PART}) + ([OTHER_PART] if OTHER_PART in names else [])


def part_source(source: ModelSource, part: str, experts_per_part: int = 0) -> ModelSource:
    """The model restricted to the tensors of one part (same path, step and seed)."""
    tensors = [ref for ref in source.tensors if part_of(ref.name, experts_per_part) == part]
    if not tensors:
        parts = ", ".join(model_parts(source, experts_per_part))
        raise ValueError(f"{source.path}: has no part {part!r} (experts_per_part {experts_per_part}); its parts "
                         f"are {parts}")
    return ModelSource(source.path, source.kind, tensors, step=source.step, seed=source.seed)


def analyze_part(model: str | Path, part: str, *, experts_per_part: int = 0, seed: int = 0,
                 layers: str | None = None, fix_fingers="clip_xmax", engine: str = "fast",
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, skipped tensors) of one part, one tensor in memory at a time, with a tqdm bar."""
    from tqdm import tqdm

    source = part_source(open_single_model(model), part, experts_per_part)
    with tqdm(total=len(source.tensors), desc=part, unit="tensor", disable=not progress, mininterval=5) as bar:
        result = analyze_model(source, seed=seed, layers=layers, fix_fingers=fix_fingers, engine=engine,
                               on_tensor=lambda ref, _: bar.update(1))
    table = result.table
    table.insert(0, "path", str(source.path))
    return table, result.skipped


def layer_type(layer: str) -> str:
    """What kind of matrix a layer is, from its name: ``expert gate_proj``, ``attention q_proj``, ..."""
    last = layer.rsplit(".", 1)[-1]
    if EXPERT.search(layer + "."):
        return f"expert {last}"
    if ".self_attn." in layer or ".attention." in layer or ".attn." in layer:
        return f"attention {last}"
    if ".mlp." in layer:
        return f"mlp {last}"
    if "embed" in layer:
        return "embedding"
    if "lm_head" in layer or layer.endswith("head"):
        return "head"
    return last


def annotate(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with block and expert (empty where the name has none), projection (the name's last
    part) and layer_type, from the layer name."""
    names = table["layer"].astype(str)
    annotated = table.copy()
    block = names.str.extract(BLOCK)[0]
    expert = (names + ".").str.extract(EXPERT)[0]
    annotated["block"] = pd.array(pd.to_numeric(block), dtype="Int64")
    annotated["expert"] = pd.array(pd.to_numeric(expert), dtype="Int64")
    annotated["projection"] = names.str.rsplit(".", n=1).str[-1]
    annotated["layer_type"] = names.map(layer_type)
    return annotated


def gather_parts(model: str | Path, tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts' rows as one table in the model's tensor order (``antigrok analyze``'s order),
    annotated. ValueError when a layer is in two parts or is not a tensor of the model (parts of
    another model or run); that every part is there is the workflow's to ensure."""
    source = open_single_model(model)
    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    duplicated = table["layer"][table["layer"].duplicated()]
    if len(duplicated):
        raise ValueError(f"layer {duplicated.iloc[0]!r} is in two parts: the parts are of different models or runs")
    order = {layer_name(ref.name): position for position, ref in enumerate(source.tensors)}
    unknown = [layer for layer in table["layer"] if layer not in order]
    if unknown:
        raise ValueError(f"layer {unknown[0]!r} of the parts is not a tensor of {model}")
    table = table.iloc[np.argsort([order[layer] for layer in table["layer"]], kind="stable")]
    return annotate(table.reset_index(drop=True))


def gather_skipped(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts' skipped tensors, one table."""
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SKIPPED_COLUMNS)


def flagged_layers(table: pd.DataFrame) -> pd.DataFrame:
    """The matrices with alpha < 2 (over-correlated) or Correlation Traps, one row each, ``flag``
    ``alpha<2``, ``traps`` or ``alpha<2 and traps``."""
    alpha = pd.to_numeric(table["alpha"], errors="coerce")
    traps = table["num_traps"].fillna(0).astype(int) > 0
    low = (alpha < ALPHA_CRITICAL).to_numpy()
    flagged = table[low | traps.to_numpy()].copy()
    flagged["flag"] = np.where(low & traps.to_numpy(), f"alpha<{ALPHA_CRITICAL:g} and traps",
                               np.where(low, f"alpha<{ALPHA_CRITICAL:g}", "traps"))[low | traps.to_numpy()]
    return flagged[FLAGGED_COLUMNS].reset_index(drop=True)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Per layer type: matrices, median alpha, how many with alpha < 2, how many with traps."""
    lines = [f"{len(table)} matrices analysed"]
    for kind, group in table.groupby("layer_type", sort=True):
        alpha = pd.to_numeric(group["alpha"], errors="coerce")
        lines.append(f"  {kind}: {len(group)} matrices, median alpha {alpha.median():.3f}, "
                     f"alpha < {ALPHA_CRITICAL:g}: {int((alpha < ALPHA_CRITICAL).sum())}, "
                     f"with traps: {int((group['num_traps'].fillna(0) > 0).sum())}")
    return lines


# ----------------------------------------------------------------------------- figures


def figure_alpha_by_type(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Histogram of alpha per layer type (one panel each, shared bins), alpha = 2 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(table["layer_type"].unique())
    alpha = pd.to_numeric(table["alpha"], errors="coerce")
    finite = alpha[np.isfinite(alpha)]
    bins = np.linspace(min(1.0, finite.min()) if len(finite) else 1.0,
                       max(8.0, finite.max()) if len(finite) else 8.0, 41)
    columns = min(3, max(1, len(kinds)))
    rows = -(-len(kinds) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False, sharex=True)
    for axis, kind in zip(axes.flat, kinds):
        values = alpha[table["layer_type"] == kind].dropna()
        axis.hist(np.clip(values, bins[0], bins[-1]), bins=bins, color="tab:blue")
        axis.axvline(ALPHA_CRITICAL, color="tab:red", linestyle="--", linewidth=1)
        low = int((values < ALPHA_CRITICAL).sum())
        axis.set_title(f"{kind} (n={len(values)}, {low} below {ALPHA_CRITICAL:g})", fontsize=9)
    for axis in axes.flat[len(kinds):]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("HTSR alpha")
    fig.suptitle(title or "alpha per layer type", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_traps_per_layer(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Correlation Traps of every matrix against its block, one marker colour per layer type; the
    matrices outside the blocks at block -1."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(table["layer_type"].unique())
    fig, axis = plt.subplots(figsize=(8, 3.6))
    offsets = np.linspace(-0.3, 0.3, len(kinds)) if len(kinds) > 1 else [0.0]
    for offset, kind in zip(offsets, kinds):
        group = table[table["layer_type"] == kind]
        block = group["block"].fillna(-1).astype(float) + offset
        axis.plot(block, group["num_traps"].fillna(0).astype(float), "o", markersize=3, alpha=0.6,
                  label=f"{kind} ({int((group['num_traps'].fillna(0) > 0).sum())} of {len(group)} with traps)")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("block (model.layers.i; -1: outside the blocks)")
    axis.set_ylabel("Correlation Traps")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title(title or "trap count per matrix", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the workflow's steps


def write_part(model: str | Path, part: str, htsr_csv: str | Path, skipped_csv: str | Path, *,
               experts_per_part: int = 0, seed: int = 0, layers: str | None = None, fix_fingers="clip_xmax",
               engine: str = "fast", threads: int = 1) -> None:
    """One job of the scatter: a part's rows and skipped tensors, each CSV written atomically (a
    killed job leaves no partial table, and Snakemake reruns it)."""
    import torch
    from threadpoolctl import threadpool_limits

    from antigrok.files import write_csv_atomically

    threadpool_limits(threads)
    torch.set_num_threads(threads)
    table, skipped = analyze_part(model, part, experts_per_part=experts_per_part, seed=seed, layers=layers,
                                  fix_fingers=fix_fingers, engine=engine)
    write_csv_atomically(skipped, skipped_csv)
    write_csv_atomically(table, htsr_csv)


def read_part_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    if "num_traps" in table:
        table["num_traps"] = table["num_traps"].astype("Int64")
    return table


def write_gathered(model: str | Path, part_tables: list[str], part_skipped: list[str], htsr_csv: str | Path,
                   skipped_csv: str | Path, flagged_csv: str | Path) -> None:
    """The gather: the parts' tables as one (``gather_parts``), their skipped tensors, the flagged list."""
    import logging

    from antigrok.files import write_csv_atomically

    table = gather_parts(model, [read_part_table(path) for path in part_tables])
    write_csv_atomically(gather_skipped([pd.read_csv(path) for path in part_skipped]), skipped_csv)
    write_csv_atomically(flagged_layers(table), flagged_csv)
    write_csv_atomically(table, htsr_csv)
    for line in summary_lines(table):
        logging.getLogger(__name__).info(line)


def write_figures(htsr_csv: str | Path, alpha_png: str | Path, traps_png: str | Path, name: str) -> None:
    """The follow-up's two figures of one model's gathered table."""
    table = read_part_table(htsr_csv)
    figure_alpha_by_type(table, alpha_png, title=f"{name}: HTSR alpha per layer type")
    figure_traps_per_layer(table, traps_png, title=f"{name}: Correlation Traps per matrix")
