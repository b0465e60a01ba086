"""Removing the traps: the causal test of "traps cause the collapse".

Construction (why this one): a trap is an eigenvalue of the shuffled W_rand, not of W, so "the
trap's part of W" is defined through the shuffle. W_rand's SVD mapped back to W's coordinates
(antigrok.mechanism.trap_components) splits W exactly into components C_i, one per singular value of
W_rand; a trap's C_i is what makes that trap (the mean of the entries for a mean-made trap, the
entry itself for a trap made by one large weight; the planted-entry construction is the special
case). Removing it (W - C_trap) removes exactly that eigenvalue from W_rand under the same
permutation and leaves every other component of W as it was. The alternative, W's own top singular
component, is not what the detector measures (it is reported beside, in prototypes.csv).

Conditions, per layer and for all layers at once ("all"), at the checkpoints of chosen phase edges:

- ``none``: the checkpoint as it is (one row per checkpoint, scope ``none``).
- ``remove_traps``: W - sum C_trap over the layer's trap components.
- ``replace_traps_random``: each trap component s u v^T replaced by s a b^T with random unit a, b
  (same singular value, so equal norm; mapped back through the same permutation), ``draws`` draws.
- ``perturb_random``: the control of equal norm: W plus the random s a b^T alone (a change of the
  same Frobenius norm as ``remove_traps``, in a random direction), ``draws`` draws.
- ``remove_next_nontrap``: the control of nearly equal singular value: the K non-trap components that
  follow the K traps in rank (ranks K .. 2K-1).
- ``remove_random_nontrap``: K non-trap components of random rank, ``draws`` draws.

Layers with 5 shuffle replicas (fewer than 100 eigenvalues: fc3) have a trap in each replica for
the same structure; only replica 0's components are removed (removing one per replica would remove
the same mean five times), so K there is replica 0's trap count, not traps.csv's pooled count.

Measured: train and test accuracy, and the Jensen-Shannon divergence (nats, 0 .. ln 2) between the
softmax of the modified and the original outputs, averaged over Gaussian probe inputs (the
revision's test for the MLP) and over the test images; ``probe_agreement`` is the share of probes
whose argmax is unchanged. The MLP's outputs are regression targets (MSE on one-hot), so the
softmax is a choice made here to compare them as distributions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from antigrok.files import write_csv_atomically
from antigrok.mechanism.checkpoints import (
    checkpoint_paths,
    edge_checkpoints,
    layer_names,
    mlp_from_state_dict,
    read_state_dict,
    weight_matrix,
)
from antigrok.mechanism.trap_components import LayerTraps, layer_traps, unshuffle
from antigrok.spectral import layer_seed

log = logging.getLogger(__name__)

CONDITIONS = ("none", "remove_traps", "replace_traps_random", "perturb_random", "remove_next_nontrap",
              "remove_random_nontrap")
REMOVAL_COLUMNS = [
    "edge", "edge_step", "step", "scope", "condition", "draw", "num_components", "singular_values",
    "relative_change", "train_acc", "test_acc", "probe_js", "probe_agreement", "test_js",
]


@dataclass(frozen=True)
class RemovalSettings:
    """The ``mechanism.removal`` config keys and the trap threshold."""

    edges: tuple[str, ...] = ("peak_step", "anti_grokking_start_step", "last")
    probe_inputs: int = 2000
    probe_std: float = 1.0
    draws: int = 5
    seed: int = 0
    tracy_widom_scale: float = 1.0


# ----------------------------------------------------------------------------- divergences


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between the rows of two probability tables (..., classes)."""
    m = 0.5 * (p + q)
    return 0.5 * (torch.xlogy(p, p / m).nansum(-1) + torch.xlogy(q, q / m).nansum(-1))


def mean_output_js(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Mean JS divergence of the softmax of two models' outputs on the same inputs."""
    return float(js_divergence(torch.softmax(logits_a, -1), torch.softmax(logits_b, -1)).mean())


def gaussian_probes(count: int, features: int, std: float, seed: int) -> torch.Tensor:
    """``count`` float64 inputs with i.i.d. N(0, std^2) features, from their own generator."""
    generator = torch.Generator().manual_seed(int(seed))
    return std * torch.randn(count, features, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------- constructions


def component_sum(traps: LayerTraps, indices: Sequence[int], replica: int = 0) -> np.ndarray:
    """sum C_i over ``indices`` of one replica, in W's coordinates."""
    svd = traps.replicas[replica]
    total = np.zeros((svd.left.shape[0], svd.right.shape[1]))
    for index in indices:
        total += svd.mapped_back(index)
    return total


def random_rank_one(traps: LayerTraps, indices: Sequence[int], rng: np.random.Generator, replica: int = 0) -> np.ndarray:
    """sum s_i a_i b_i^T (random unit a_i, b_i, W_rand's singular values s_i) mapped back to W."""
    svd = traps.replicas[replica]
    total = np.zeros((svd.left.shape[0], svd.right.shape[1]))
    for index in indices:
        a = rng.standard_normal(svd.left.shape[0])
        b = rng.standard_normal(svd.right.shape[1])
        total += svd.singular_values[index] * np.outer(a / np.linalg.norm(a), b / np.linalg.norm(b))
    return unshuffle(total, svd.permutation)


def layer_modifications(weight: np.ndarray, traps: LayerTraps, settings: RemovalSettings,
                        rng_seed: int) -> list[dict]:
    """The modified weights of one layer: one dict per (condition, draw) with W', indices, draw."""
    trap_indices = traps.trap_indices(replica=0)
    count = len(trap_indices)
    if count == 0:
        return []
    rank = len(traps.replicas[0].singular_values)
    non_trap = [index for index in range(rank) if index not in trap_indices]
    rng = np.random.default_rng(rng_seed)
    removed = component_sum(traps, trap_indices)
    modifications = [{"condition": "remove_traps", "draw": 0, "indices": trap_indices, "weight": weight - removed}]
    for draw in range(settings.draws):
        modifications.append({"condition": "replace_traps_random", "draw": draw, "indices": trap_indices,
                              "weight": weight - removed + random_rank_one(traps, trap_indices, rng)})
    for draw in range(settings.draws):
        modifications.append({"condition": "perturb_random", "draw": draw, "indices": trap_indices,
                              "weight": weight + random_rank_one(traps, trap_indices, rng)})
    next_ranks = non_trap[:count]
    modifications.append({"condition": "remove_next_nontrap", "draw": 0, "indices": next_ranks,
                          "weight": weight - component_sum(traps, next_ranks)})
    for draw in range(settings.draws):
        chosen = sorted(rng.choice(non_trap, size=min(count, len(non_trap)), replace=False).tolist())
        modifications.append({"condition": "remove_random_nontrap", "draw": draw, "indices": chosen,
                              "weight": weight - component_sum(traps, chosen)})
    return modifications


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).to(torch.float64).mean())


@torch.no_grad()
def outputs_on(state_dict: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLP's outputs on each named input set."""
    model = mlp_from_state_dict(state_dict)
    return {name: model(x) for name, x in inputs.items()}


def evaluate(outputs: Mapping[str, torch.Tensor], baseline: Mapping[str, torch.Tensor], dataset: Mapping) -> dict:
    """Accuracies and the output divergences from the unmodified model."""
    return {
        "train_acc": accuracy(outputs["train"], dataset["y_train"]),
        "test_acc": accuracy(outputs["test"], dataset["y_test"]),
        "probe_js": mean_output_js(outputs["probe"], baseline["probe"]),
        "probe_agreement": float((outputs["probe"].argmax(-1) == baseline["probe"].argmax(-1)).double().mean()),
        "test_js": mean_output_js(outputs["test"], baseline["test"]),
    }


def removal_rows(state_dict: Mapping[str, torch.Tensor], dataset: Mapping, run_seed: int, step: int,
                 settings: RemovalSettings) -> list[dict]:
    """Every condition at one checkpoint (without the edge columns)."""
    inputs = {
        "train": dataset["x_train"].to(torch.float64),
        "test": dataset["x_test"].to(torch.float64),
        "probe": gaussian_probes(settings.probe_inputs, dataset["x_train"].shape[1], settings.probe_std,
                                 settings.seed),
    }
    baseline = outputs_on(state_dict, inputs)
    rows = [{"scope": "none", "condition": "none", "draw": 0, "num_components": 0, "singular_values": "",
             "relative_change": 0.0, **evaluate(baseline, baseline, dataset)}]
    per_layer = {}
    for index, layer in enumerate(layer_names(state_dict)):
        weight = weight_matrix(state_dict, layer)
        traps = layer_traps(weight, layer_seed(run_seed, step, layer), settings.tracy_widom_scale)
        rng_seed = settings.seed * 1_000_003 + step * 17 + index
        per_layer[layer] = (weight, traps, layer_modifications(weight, traps, settings, rng_seed))

    def modified_row(scope, changes):
        new_state = dict(state_dict)
        change_sq, total_sq, values = 0.0, 0.0, []
        for layer, (weight, traps, modification) in changes.items():
            new_state[f"{layer}.weight"] = torch.from_numpy(modification["weight"])
            change_sq += float(np.sum((modification["weight"] - weight) ** 2))
            total_sq += float(np.sum(weight**2))
            values += [f"{traps.replicas[0].singular_values[i]:.6g}" for i in modification["indices"]]
        first = next(iter(changes.values()))[2]
        return {"scope": scope, "condition": first["condition"], "draw": first["draw"],
                "num_components": len(values), "singular_values": ";".join(values),
                "relative_change": math.sqrt(change_sq / total_sq),
                **evaluate(outputs_on(new_state, inputs), baseline, dataset)}

    for layer, (weight, traps, modifications) in per_layer.items():
        for modification in modifications:
            rows.append(modified_row(layer, {layer: (weight, traps, modification)}))
    # all layers at once: the same (condition, draw) in every layer that has traps
    keys = [(m["condition"], m["draw"]) for mods in per_layer.values() for m in mods[2]]
    for condition, draw in dict.fromkeys(keys):
        changes = {layer: (weight, traps, m) for layer, (weight, traps, mods) in per_layer.items()
                   for m in mods if (m["condition"], m["draw"]) == (condition, draw)}
        if len(changes) > 1:
            rows.append(modified_row("all", changes))
    return rows


def removal_table(checkpoint_dir: str | Path, phases: pd.DataFrame, dataset: Mapping, run_seed: int,
                  settings: RemovalSettings, progress: bool = True) -> pd.DataFrame:
    """trap_removal.csv of a run: every condition at the checkpoints of ``settings.edges``."""
    chosen = edge_checkpoints(phases, checkpoint_paths(checkpoint_dir), settings.edges)
    rows = []
    for edge in tqdm(chosen, desc="trap removal", unit="ckpt", disable=not progress):
        state_dict = read_state_dict(edge.path)
        for row in removal_rows(state_dict, dataset, run_seed, edge.step, settings):
            rows.append({"edge": edge.edge, "edge_step": edge.edge_step, "step": edge.step, **row})
        log.info("%s (edge step %d): checkpoint step %d done", edge.edge, edge.edge_step, edge.step)
    return pd.DataFrame(rows, columns=REMOVAL_COLUMNS)


def write_removal(checkpoint_dir: str | Path, phases_csv: str | Path, dataset_path: str | Path, output: str | Path,
                  run_seed: int, settings: RemovalSettings) -> pd.DataFrame:
    """The rule ``trap_removal``."""
    from antigrok.data import load_dataset

    table = removal_table(checkpoint_dir, pd.read_csv(phases_csv), load_dataset(dataset_path), run_seed, settings)
    write_csv_atomically(table, output)
    return table
