"""Traps against the largest weight: the follow-up's theorem quantity beside the trap count.

The follow-up's theorem: one entry with ``|W_pq| / sqrt(N) > sigma (1 + sqrt(gamma))`` guarantees a
trap (N the larger dimension, gamma = M / N <= 1, sigma the entry scale of the bulk). Why: the
shuffle keeps the entry, so the column of W_rand that holds it has norm >= |W_pq|, and
``W_rand^T W_rand`` has an eigenvalue >= W_pq^2 > N sigma^2 (1 + sqrt(gamma))^2, the MP bulk edge. So
the ratio below > 1 puts an eigenvalue above lambda_plus; a trap also needs the Tracy-Widom margin.

``bound_ratio`` uses the sigma the trap detector itself fits: WeightWatcher's rand_sigma_mp is in
units where the mean eigenvalue is 1, i.e. sigma_entry = rand_sigma_mp x rms(W), so the bound is
exactly ``max W^2 > rand_lambda_plus``. ``bound_ratio_std`` uses the plain standard deviation of
W's entries instead (the theorem's sigma for a zero-mean bulk).

Localization of the trap (the largest trap eigenvalue's component of W_rand, unit vectors u, v):
participation ratios ``1 / sum(u^4)`` and ``1 / sum(v^4)`` as fractions of their length (1/len: one
coordinate, ~1/3 for a Gaussian vector, 1: flat), the weight ``u_p'^2`` and ``v_q'^2`` on the
largest entry's row and column (p', q') in W_rand, the share of that entry the component carries,
and ``mean_share``: the cosine between the component mapped back to W and a constant matrix (1: the
trap is the mean of the entries).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from antigrok.files import write_csv_atomically
from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.checkpoints import checkpoint_paths, layer_names, weight_matrix
from antigrok.mechanism.trap_components import LayerTraps, layer_traps
from antigrok.spectra.primitives import layer_seed

log = logging.getLogger(__name__)

LARGEST_WEIGHT_COLUMNS = [
    "step", "layer", "rows", "cols", "num_traps", "max_abs_weight", "max_row", "max_col", "entry_sigma_fit",
    "entry_std", "bound_ratio", "bound_ratio_std", "top_rand_eval", "trap_threshold", "trap_pr_left",
    "trap_pr_right", "trap_entry_overlap_left", "trap_entry_overlap_right", "trap_entry_share", "trap_mean_share",
]


def participation_fraction(vector: np.ndarray) -> float:
    """1 / sum(x^4) of the unit-normalised vector, over its length: 1/len (one coordinate) .. 1 (flat)."""
    vector = np.asarray(vector, dtype=np.float64)
    vector = vector / np.linalg.norm(vector)
    return float(1.0 / np.sum(vector**4) / len(vector))


def bound_ratios(weight: np.ndarray, rand_sigma_mp: float) -> dict:
    """The theorem quantity of W (out, in): max|W_pq| / sqrt(N) over sigma (1 + sqrt(gamma)), two sigmas."""
    weight = np.asarray(weight, dtype=np.float64)
    N, M = max(weight.shape), min(weight.shape)
    edge = 1.0 + math.sqrt(M / N)
    flat = int(np.argmax(np.abs(weight)))
    largest = float(np.abs(weight.reshape(-1)[flat]))
    sigma_fit = rand_sigma_mp * float(np.sqrt(np.mean(weight**2)))  # rescaled units -> entry units
    sigma_std = float(np.std(weight))
    scaled = largest / math.sqrt(N)
    return {
        "rows": N, "cols": M, "max_abs_weight": largest,
        "max_row": flat // weight.shape[1], "max_col": flat % weight.shape[1], "max_flat_index": flat,
        "entry_sigma_fit": sigma_fit, "entry_std": sigma_std,
        "bound_ratio": scaled / (sigma_fit * edge) if sigma_fit > 0 else math.nan,
        "bound_ratio_std": scaled / (sigma_std * edge) if sigma_std > 0 else math.nan,
    }


def trap_localization(weight: np.ndarray, traps: LayerTraps, max_flat_index: int) -> dict:
    """Where the largest trap of a layer sits: participation ratios, overlap with the largest entry."""
    empty = dict.fromkeys(["trap_pr_left", "trap_pr_right", "trap_entry_overlap_left", "trap_entry_overlap_right",
                           "trap_entry_share", "trap_mean_share"], math.nan)
    if not traps.traps:
        return empty
    replica_index, index = traps.traps[0]
    replica = traps.replicas[replica_index]
    u, v = replica.left[:, index], replica.right[index]
    row, col = replica.position_in_rand(max_flat_index)
    component = replica.mapped_back(index)
    entry = weight.reshape(-1)[max_flat_index]
    return {
        "trap_pr_left": participation_fraction(u),
        "trap_pr_right": participation_fraction(v),
        "trap_entry_overlap_left": float(u[row] ** 2),
        "trap_entry_overlap_right": float(v[col] ** 2),
        "trap_entry_share": float(component.reshape(-1)[max_flat_index] / entry),
        "trap_mean_share": float(abs(component.sum()) / (np.linalg.norm(component) * math.sqrt(component.size))),
    }


def largest_weight_row(weight: np.ndarray, seed: int, tracy_widom_scale: float = 1.0) -> dict:
    """One largest_weight.csv row (without step and layer) of a weight matrix (out, in)."""
    traps = layer_traps(weight, seed, tracy_widom_scale)
    bounds = bound_ratios(weight, traps.rand_sigma_mp)
    top = max(float(replica.singular_values[0] ** 2) for replica in traps.replicas)
    row = {key: value for key, value in bounds.items() if key != "max_flat_index"}
    row.update(num_traps=traps.num_traps, top_rand_eval=top, trap_threshold=traps.trap_threshold)
    row.update(trap_localization(weight, traps, bounds["max_flat_index"]))
    return row


def largest_weight_table(checkpoint_dir: str | Path, run_seed: int, tracy_widom_scale: float = 1.0,
                         progress: bool = True) -> pd.DataFrame:
    """largest_weight.csv of a run: every checkpoint, every layer."""
    paths = checkpoint_paths(checkpoint_dir)
    rows = []
    for step, path in tqdm(paths.items(), desc="largest weight", unit="ckpt", disable=not progress, mininterval=2.0):
        state_dict = read_state_dict(path)
        for layer in layer_names(state_dict):
            weight = weight_matrix(state_dict, layer)
            seed = layer_seed(run_seed, step, layer)  # the workflow's randomization of this layer
            rows.append({"step": step, "layer": layer, **largest_weight_row(weight, seed, tracy_widom_scale)})
    table = pd.DataFrame(rows, columns=LARGEST_WEIGHT_COLUMNS)
    return table


def write_largest_weight(checkpoint_dir: str | Path, output: str | Path, run_seed: int,
                         tracy_widom_scale: float = 1.0) -> pd.DataFrame:
    """The rule ``largest_weight``."""
    table = largest_weight_table(checkpoint_dir, run_seed, tracy_widom_scale)
    write_csv_atomically(table, output)
    trap = table["num_traps"] > 0
    above = table["bound_ratio"] > 1
    log.info("%d (step, layer) rows: trap and bound %d, trap only %d, bound only %d, neither %d", len(table),
             int((trap & above).sum()), int((trap & ~above).sum()), int((~trap & above).sum()),
             int((~trap & ~above).sum()))
    return table
