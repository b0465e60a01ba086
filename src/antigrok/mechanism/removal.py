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

Arms that tell the traps from the mean (issue 33). fc1's trap is mostly the entries' mean, and on
non-negative inputs the mean acts as an input-dependent bias (antigrok.mechanism.mean_component), so
``remove_traps`` alone cannot say whether the traps or that bias carry the accuracy:

- ``remove_traps_bias``: ``remove_traps`` with the removed part's average effect on the train inputs
  put back into the bias (b + C xbar).
- ``remove_mean``: W - mu 1 1^T, every layer (a trap or not).
- ``remove_mean_bias``: the same, compensated through the bias.
- ``remove_centred_traps``: the traps of the centred matrix (antigrok.mechanism.centred_traps)
  removed, the mean kept; in layers with a centred trap.
- ``input_matched_traps`` and ``input_matched_centred``: the controls of those two: W minus a
  rank-one change of the same Frobenius norm that the train inputs load as strongly
  (antigrok.mechanism.input_matched), ``draws`` draws each.

The layer inputs (for the bias and the input load) are the train images through the unmodified
network, also for the ``all`` scope.

Layers with 5 shuffle replicas (fewer than 100 eigenvalues: fc3) have a trap in each replica for
the same structure; only replica 0's components are removed (removing one per replica would remove
the same mean five times), so K there is replica 0's trap count, not traps.csv's pooled count.

Measured: train and test accuracy, and the Jensen-Shannon divergence (nats, 0 .. ln 2) between the
softmax of the modified and the original outputs, averaged over Gaussian probe inputs (the
revision's test for the MLP) and over the test images; ``probe_agreement`` is the share of probes
whose argmax is unchanged. ``relative_input_load`` is how far the weight change moves the
changed layers' pre-activations on the train inputs (rms ||dW x|| over rms ||W x + b||),
``relative_preactivation_change`` the same with the bias change included: their ratio is how exact
a bias compensation is on the train set. The MLP's outputs are regression targets (MSE on one-hot), so the
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
from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.centred_traps import centred_svd, centred_trap_indices
from antigrok.mechanism.checkpoints import (
    checkpoint_paths,
    edge_checkpoints,
    layer_inputs,
    layer_names,
    outputs_from,
    weight_matrix,
)
from antigrok.mechanism.input_matched import SecondMoment, input_load, input_loads, input_matched_rank_one
from antigrok.mechanism.mean_component import bias_compensation, mean_component
from antigrok.mechanism.trap_components import LayerTraps, ShuffledSVD, layer_traps, unshuffle
from antigrok.schema import section_defaults
from antigrok.spectra.primitives import layer_seed

log = logging.getLogger(__name__)

CONDITIONS = ("none", "remove_traps", "replace_traps_random", "perturb_random", "remove_next_nontrap",
              "remove_random_nontrap", "remove_traps_bias", "remove_mean", "remove_mean_bias",
              "remove_centred_traps", "input_matched_traps", "input_matched_centred")
REMOVAL_COLUMNS = [
    "edge", "edge_step", "step", "scope", "condition", "draw", "num_components", "singular_values",
    "relative_change", "relative_input_load", "relative_preactivation_change", "train_acc", "test_acc", "probe_js",
    "probe_agreement", "test_js",
]

_MECHANISM = section_defaults("mechanism")


@dataclass(frozen=True)
class RemovalSettings:
    """The removal keys of the ``mechanism`` config section and the trap threshold (defaults from the
    schema)."""

    edges: tuple[str, ...] = tuple(_MECHANISM["removal_edges"])
    probe_inputs: int = _MECHANISM["probe_inputs"]
    probe_std: float = _MECHANISM["probe_std"]
    draws: int = _MECHANISM["removal_draws"]
    seed: int = _MECHANISM["removal_seed"]
    tracy_widom_scale: float = section_defaults("traps")["tracy_widom_scale"]
    all_layers: bool = True  # also every layer at once (scope "all"); False: per layer only, about half the time

    @classmethod
    def from_config(cls, mechanism: Mapping, tracy_widom_scale: float, **overrides) -> "RemovalSettings":
        """The settings of a validated config's ``mechanism`` section and ``traps.tracy_widom_scale``."""
        return cls(**{"edges": tuple(mechanism["removal_edges"]), "probe_inputs": mechanism["probe_inputs"],
                      "probe_std": mechanism["probe_std"], "draws": mechanism["removal_draws"],
                      "seed": mechanism["removal_seed"], "tracy_widom_scale": tracy_widom_scale, **overrides})


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


def component_sum(traps: LayerTraps | ShuffledSVD, indices: Sequence[int], replica: int = 0) -> np.ndarray:
    """sum C_i over ``indices`` of one replica (or of one shuffled SVD), in W's coordinates."""
    svd = traps if isinstance(traps, ShuffledSVD) else traps.replicas[replica]
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


@dataclass(frozen=True)
class Layer:
    """One layer of a checkpoint as the constructions need it."""

    weight: np.ndarray
    bias: np.ndarray
    traps: LayerTraps
    train_inputs: np.ndarray  # (samples, in) under the unmodified network
    moment: SecondMoment
    preactivation: float  # rms ||W x + b|| over train_inputs


def modification(condition: str, draw: int, values: Sequence[float], weight: np.ndarray,
                 bias: np.ndarray | None = None) -> dict:
    """One changed layer: W' (and b' where the bias changes too) and the singular values of the
    components it removes or replaces."""
    return {"condition": condition, "draw": draw, "values": [float(v) for v in values], "weight": weight,
            "bias": bias}


def trap_modifications(layer: Layer, settings: RemovalSettings, rng: np.random.Generator) -> list[dict]:
    """The arms of issue 26 (and ``remove_traps_bias``, ``input_matched_traps``) in a layer with traps."""
    weight, traps = layer.weight, layer.traps
    trap_indices = traps.trap_indices(replica=0)
    count = len(trap_indices)
    if count == 0:
        return []
    singular_values = traps.replicas[0].singular_values
    non_trap = [index for index in range(len(singular_values)) if index not in trap_indices]
    removed = component_sum(traps, trap_indices)
    trap_values = singular_values[trap_indices]
    modifications = [modification("remove_traps", 0, trap_values, weight - removed)]
    for draw in range(settings.draws):
        modifications.append(modification("replace_traps_random", draw, trap_values,
                                          weight - removed + random_rank_one(traps, trap_indices, rng)))
    for draw in range(settings.draws):
        modifications.append(modification("perturb_random", draw, trap_values,
                                          weight + random_rank_one(traps, trap_indices, rng)))
    next_ranks = non_trap[:count]
    modifications.append(modification("remove_next_nontrap", 0, singular_values[next_ranks], weight - component_sum(traps, next_ranks)))
    for draw in range(settings.draws):
        chosen = sorted(rng.choice(non_trap, size=min(count, len(non_trap)), replace=False).tolist())
        modifications.append(modification("remove_random_nontrap", draw, singular_values[chosen], weight - component_sum(traps, chosen)))
    modifications.append(modification("remove_traps_bias", 0, trap_values, weight - removed,
                                      layer.bias + bias_compensation(removed, layer.train_inputs)))
    for draw in range(settings.draws):
        control = input_matched_rank_one(removed, layer.train_inputs, layer.moment, rng)
        modifications.append(modification("input_matched_traps", draw, [np.linalg.norm(control)], weight - control))
    return modifications


def mean_modifications(layer: Layer) -> list[dict]:
    """``remove_mean`` and ``remove_mean_bias``: in every layer."""
    mean = mean_component(layer.weight)
    value = [np.linalg.norm(mean)]  # a rank-one matrix: its one singular value
    return [modification("remove_mean", 0, value, layer.weight - mean),
            modification("remove_mean_bias", 0, value, layer.weight - mean,
                         layer.bias + bias_compensation(mean, layer.train_inputs))]


def centred_modifications(layer: Layer, settings: RemovalSettings, rng: np.random.Generator) -> list[dict]:
    """``remove_centred_traps`` and its input-matched control, in a layer with a centred trap."""
    svd = centred_svd(layer.weight, layer.traps)
    indices = centred_trap_indices(svd, layer.traps)
    if not indices:
        return []
    removed = component_sum(svd, indices)
    modifications = [modification("remove_centred_traps", 0, svd.singular_values[indices], layer.weight - removed)]
    for draw in range(settings.draws):
        control = input_matched_rank_one(removed, layer.train_inputs, layer.moment, rng)
        modifications.append(modification("input_matched_centred", draw, [np.linalg.norm(control)], layer.weight - control))
    return modifications


def layer_modifications(layer: Layer, settings: RemovalSettings, rng_seed: int) -> list[dict]:
    """The modified weights of one layer: one dict per (condition, draw) with W', b' (or None),
    the components' indices and the draw. The issue-26 arms draw first, so their draws do not
    depend on the arms added after them."""
    rng = np.random.default_rng(rng_seed)
    return (trap_modifications(layer, settings, rng) + mean_modifications(layer)
            + centred_modifications(layer, settings, rng))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).to(torch.float64).mean())


def outputs_on(state_dict: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLP's outputs on each named input set."""
    return {name: outputs_from(state_dict, x.to(torch.float64).flatten(1), "fc1") for name, x in inputs.items()}


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
             "relative_change": 0.0, "relative_input_load": 0.0, "relative_preactivation_change": 0.0,
             **evaluate(baseline, baseline, dataset)}]
    # every layer's inputs under the unmodified network: a change of fc2 reruns only fc2 onwards
    cached = {name: layer_inputs(state_dict, x) for name, x in inputs.items()}
    per_layer = {}
    for index, name in enumerate(layer_names(state_dict)):
        weight = weight_matrix(state_dict, name)
        layer = Layer(weight=weight, bias=state_dict[f"{name}.bias"].detach().cpu().numpy().astype(np.float64),
                      traps=layer_traps(weight, layer_seed(run_seed, step, name), settings.tracy_widom_scale),
                      train_inputs=cached["train"][name].numpy(), moment=SecondMoment.of(cached["train"][name].numpy()),
                      preactivation=input_load(weight, cached["train"][name].numpy(), state_dict[f"{name}.bias"].numpy()))
        rng_seed = settings.seed * 1_000_003 + step * 17 + index
        per_layer[name] = (layer, layer_modifications(layer, settings, rng_seed))

    def modified_row(scope, changes):
        new_state = dict(state_dict)
        sums = dict.fromkeys(("change", "weight", "load", "shift", "preactivation"), 0.0)
        values = []
        for name, (layer, changed) in changes.items():
            new_state[f"{name}.weight"] = torch.from_numpy(changed["weight"])
            bias_change = None
            if changed["bias"] is not None:
                new_state[f"{name}.bias"] = torch.from_numpy(changed["bias"])
                bias_change = changed["bias"] - layer.bias
            delta = changed["weight"] - layer.weight
            sums["change"] += float(np.sum(delta**2))
            sums["weight"] += float(np.sum(layer.weight**2))
            load, shift = input_loads(delta, layer.train_inputs, bias_change)
            sums["load"] += load**2
            sums["shift"] += shift**2
            sums["preactivation"] += layer.preactivation**2
            values += [f"{value:.6g}" for value in changed["values"]]
        first = next(iter(changes.values()))[1]
        start = min(changes, key=lambda name: int(name.removeprefix("fc")))
        outputs = {name: outputs_from(new_state, cached[name][start], start) for name in inputs}
        return {"scope": scope, "condition": first["condition"], "draw": first["draw"],
                "num_components": len(values), "singular_values": ";".join(values),
                "relative_change": math.sqrt(sums["change"] / sums["weight"]),
                "relative_input_load": math.sqrt(sums["load"] / sums["preactivation"]),
                "relative_preactivation_change": math.sqrt(sums["shift"] / sums["preactivation"]),
                **evaluate(outputs, baseline, dataset)}

    for name, (layer, modifications) in per_layer.items():
        for changed in modifications:
            rows.append(modified_row(name, {name: (layer, changed)}))
    if not settings.all_layers:
        return rows
    # all layers at once: the same (condition, draw) in every layer that has it
    keys = [(m["condition"], m["draw"]) for _, modifications in per_layer.values() for m in modifications]
    for condition, draw in dict.fromkeys(keys):
        changes = {name: (layer, m) for name, (layer, modifications) in per_layer.items()
                   for m in modifications if (m["condition"], m["draw"]) == (condition, draw)}
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
    from antigrok.training.data import load_dataset

    table = removal_table(checkpoint_dir, pd.read_csv(phases_csv), load_dataset(dataset_path), run_seed, settings)
    write_csv_atomically(table, output)
    return table
