"""The comparative progress measures of Prakash & Martin (2025), Appendix B, Eqs. 7-10.

The negative control of the study: measures from Golechha (2024) and Liu et al. (2022) that track
pre-grokking and grokking but miss anti-grokking. Every function takes a model and data tensors,
never layer indices, so the MLP and the transformer experiment share the code:

* weight matrices: parameters named ``*.weight`` with ``ndim >= 2`` (nn.Linear, nn.Embedding);
  the layer name is the parameter name without ``.weight`` (``fc1``);
* activations: the outputs of the model's ``nn.ReLU`` modules (``antigrok.training.models.relu_modules``),
  caught with forward hooks; inputs may be float images or int64 tokens.

All measures are computed in float64 on the checkpoint's (float64) weights.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from antigrok.files import write_csv_atomically
from antigrok.formats.loading import read_checkpoint
from antigrok.runs import checkpoint_files, refuse_held_elsewhere
from antigrok.schema import section_defaults
from antigrok.spectra.primitives import layer_name
from antigrok.training.models import build_model, relu_modules

log = logging.getLogger(__name__)

PRUNE_MODES = ("random", "magnitude")
_DEFAULTS = section_defaults("progress")
# Examples per forward pass: bounds memory for large train sets, same result as one pass.
DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class ProgressSettings:
    """The ``progress:`` section of the config (defaults from the schema)."""

    sparsity_threshold: float = _DEFAULTS["sparsity_threshold"]  # tau of Eq. 8
    prune_fraction: float = _DEFAULTS["prune_fraction"]  # Eq. 10: fraction of the weight-matrix entries zeroed
    prune_mode: str = _DEFAULTS["prune_mode"]  # random | magnitude
    prune_seed: int = _DEFAULTS["prune_seed"]  # seed of the random pruning mask
    l2_include_biases: bool = _DEFAULTS["l2_include_biases"]  # Eq. 7 over weight matrices only, or every parameter
    entropy_eps: float = _DEFAULTS["entropy_eps"]  # Eq. 9 as |w| log(|w| + eps)
    sparsity_module: str | None = _DEFAULTS["sparsity_module"]  # ReLU module of the headline sparsity; None = the first

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> "ProgressSettings":
        """Settings from a config section; unknown keys are an error that names them."""
        values = dict(values or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown progress setting(s) {unknown}; known: {sorted(known)}")
        settings = cls(**values)
        if settings.prune_mode not in PRUNE_MODES:
            raise ValueError(f"progress.prune_mode is {settings.prune_mode!r}; choose one of {PRUNE_MODES}")
        if not 0.0 <= settings.prune_fraction <= 1.0:
            raise ValueError(f"progress.prune_fraction is {settings.prune_fraction}; it must lie in [0, 1]")
        if settings.entropy_eps < 0:
            raise ValueError(f"progress.entropy_eps is {settings.entropy_eps}; it must be >= 0")
        return settings


def column_suffix(name: str) -> str:
    """A module or layer name as it appears in a column name: ``blocks.0.mlp`` -> ``blocks_0_mlp``."""
    return name.replace(".", "_")


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weight matrices by layer name: parameters ``<layer>.weight`` with ndim >= 2."""
    return {
        layer_name(name): parameter
        for name, parameter in model.named_parameters()
        if name.endswith(".weight") and parameter.ndim >= 2
    }


# --- Eq. 7 -----------------------------------------------------------------------------------------

@torch.no_grad()
def l2_norm(model: nn.Module, include_biases: bool = False) -> float:
    """Eq. 7: sqrt(sum_l ||W_l||_F^2) over the weight matrices, or over every parameter."""
    tensors = list(model.parameters()) if include_biases else list(weight_matrices(model).values())
    squares = sum(tensor.detach().to(torch.float64).pow(2).sum() for tensor in tensors)
    return float(torch.as_tensor(squares, dtype=torch.float64).sqrt())


# --- Eq. 8 -----------------------------------------------------------------------------------------

def _as_model_input(inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float features in the model's dtype; integer tokens untouched."""
    return inputs.to(dtype) if inputs.is_floating_point() else inputs


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def activation_sparsity(model: nn.Module, inputs: torch.Tensor, threshold: float,
                        chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Eq. 8 per ReLU module: the fraction of its outputs ``< threshold`` over all of ``inputs``.

    An output of shape (batch, positions, width) counts every position as an example, so a
    transformer's value is the mean over examples, positions and neurons; a module called more than
    once per forward pass counts every call. Returned in the model's module order.
    """
    modules = relu_modules(model)
    if not modules:
        raise ValueError("activation_sparsity: the model has no nn.ReLU module to measure")
    below = dict.fromkeys(modules, 0)
    total = dict.fromkeys(modules, 0)

    def counter(name):
        def hook(module, args, output):
            below[name] += int((output < threshold).sum())
            total[name] += output.numel()
        return hook

    handles = [module.register_forward_hook(counter(name)) for name, module in modules.items()]
    try:
        dtype = _model_dtype(model)
        for start in range(0, len(inputs), chunk):
            model(_as_model_input(inputs[start:start + chunk], dtype))
    finally:
        for handle in handles:
            handle.remove()
    return {name: below[name] / total[name] for name in modules}


def headline_module(model: nn.Module, sparsity_module: str | None = None) -> str:
    """The ReLU module of the headline sparsity: ``sparsity_module``, or the model's first ReLU."""
    names = list(relu_modules(model))
    if not names:
        raise ValueError("the model has no nn.ReLU module for the headline activation sparsity")
    if sparsity_module is None:
        return names[0]
    if sparsity_module not in names:
        raise ValueError(
            f"progress.sparsity_module is {sparsity_module!r}, not a ReLU module of the model; "
            f"choose one of {names} (or null for the first)"
        )
    return sparsity_module


# --- Eq. 9 -----------------------------------------------------------------------------------------

@torch.no_grad()
def abs_weight_entropy(model: nn.Module, eps: float = 1e-8) -> dict[str, float]:
    """Eq. 9 per weight matrix: -sum |w| log(|w| + eps), in nats. w = 0 contributes 0."""
    entropies = {}
    for layer, weight in weight_matrices(model).items():
        magnitude = weight.detach().to(torch.float64).abs()
        # xlogy(0, .) = 0, so eps = 0 is finite too
        entropies[layer] = float(-torch.xlogy(magnitude, magnitude + eps).sum())
    return entropies


# --- Eq. 10 ----------------------------------------------------------------------------------------

@torch.no_grad()
def pruning_masks(model: nn.Module, fraction: float, mode: str = "random",
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Boolean keep-masks per weight matrix with ``round(fraction * N)`` of all N entries dropped.

    One pool across all weight matrices (the paper's "10% of the weights"; biases are kept).
    ``random``: a uniform draw from ``torch.Generator().manual_seed(seed)``, so a given
    architecture and seed always drop the same positions. ``magnitude``: the entries of smallest
    |w| over the pool (ties in parameter order).
    """
    if mode not in PRUNE_MODES:
        raise ValueError(f"prune mode {mode!r} unknown; choose one of {PRUNE_MODES}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune fraction {fraction} must lie in [0, 1]")
    matrices = weight_matrices(model)
    sizes = [weight.numel() for weight in matrices.values()]
    total = sum(sizes)
    num_pruned = int(round(fraction * total))
    if mode == "random":
        generator = torch.Generator().manual_seed(seed)
        pruned = torch.randperm(total, generator=generator)[:num_pruned]
    else:
        magnitudes = torch.cat([weight.detach().to(torch.float64).abs().flatten()
                                for weight in matrices.values()])
        pruned = torch.argsort(magnitudes, stable=True)[:num_pruned]
    keep = torch.ones(total, dtype=torch.bool)
    keep[pruned] = False
    return {layer: part.view_as(weight)
            for (layer, weight), part in zip(matrices.items(), keep.split(sizes))}


@torch.no_grad()
def pruned_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A float64 copy of ``model`` with the weight-matrix entries where ``masks`` is False zeroed."""
    pruned = copy.deepcopy(model).to(torch.float64)
    matrices = weight_matrices(pruned)
    for layer, keep in masks.items():
        matrices[layer].mul_(keep.to(torch.float64))
    return pruned


@torch.no_grad()
def summed_kl_divergence(model_p: nn.Module, model_q: nn.Module, inputs: torch.Tensor,
                         chunk: int = DEFAULT_CHUNK) -> float:
    """sum_k KL(softmax(p(x_k)) || softmax(q(x_k))) in nats, float64, from log-softmax differences.

    Classes are the logits' last dimension; every other dimension (examples, and positions if the
    model returns logits per position) is summed over.
    """
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(inputs), chunk):
        batch = _as_model_input(inputs[start:start + chunk], torch.float64)
        log_p = F.log_softmax(model_p(batch).to(torch.float64), dim=-1)
        log_q = F.log_softmax(model_q(batch).to(torch.float64), dim=-1)
        total += (log_p.exp() * (log_p - log_q)).sum()
    return float(total)


def circuit_complexity(model: nn.Module, inputs: torch.Tensor, prune_fraction: float = 0.1,
                       prune_mode: str = "random", prune_seed: int = 0,
                       chunk: int = DEFAULT_CHUNK) -> float:
    """Eq. 10: KL(full || ``prune_fraction`` of the weights zeroed), summed over ``inputs``, nats."""
    full = copy.deepcopy(model).to(torch.float64).eval()
    pruned = pruned_copy(full, pruning_masks(full, prune_fraction, prune_mode, prune_seed)).eval()
    return summed_kl_divergence(full, pruned, inputs, chunk)


# --- One checkpoint, many checkpoints --------------------------------------------------------------

def progress_measures(model: nn.Module, inputs: torch.Tensor, settings: ProgressSettings) -> dict:
    """One progress.csv row (without ``step``) for ``model`` on the training inputs."""
    model = model.eval()
    sparsity = activation_sparsity(model, inputs, settings.sparsity_threshold)
    entropy = abs_weight_entropy(model, settings.entropy_eps)
    headline = headline_module(model, settings.sparsity_module)
    row = {
        "l2_norm": l2_norm(model, settings.l2_include_biases),
        "activation_sparsity": sparsity[headline],
        **{f"activation_sparsity_{column_suffix(name)}": value for name, value in sparsity.items()},
        "activation_sparsity_mean": sum(sparsity.values()) / len(sparsity),
        "abs_weight_entropy": sum(entropy.values()),
        **{f"abs_weight_entropy_{column_suffix(layer)}": value for layer, value in entropy.items()},
        "circuit_complexity": circuit_complexity(
            model, inputs, settings.prune_fraction, settings.prune_mode, settings.prune_seed
        ),
    }
    return row


def model_from_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> nn.Module:
    """The float64 model a checkpoint dict describes, with its weights loaded."""
    if "model_config" not in checkpoint:
        raise ValueError(
            f"{path}: has no model_config, so the model cannot be rebuilt; progress measures need "
            "a checkpoint written by antigrok.training.train (format antigrok.checkpoint/1)"
        )
    model = build_model(checkpoint["model_config"], "float64")
    model.load_state_dict({name: tensor.to(torch.float64) for name, tensor in checkpoint["model"].items()})
    return model.eval()


def progress_for_checkpoints(checkpoint_paths: Iterable[str | Path], dataset: Mapping,
                             settings: ProgressSettings | Mapping | None = None,
                             progress: bool = True) -> pd.DataFrame:
    """progress.csv: one row per checkpoint, sorted by step, on ``dataset["x_train"]``."""
    if not isinstance(settings, ProgressSettings):
        settings = ProgressSettings.from_mapping(settings)
    paths = [Path(path) for path in checkpoint_paths]
    if not paths:
        raise ValueError("progress_for_checkpoints: no checkpoint files given; did training finish?")
    inputs = dataset["x_train"]
    rows = []
    for path in tqdm(paths, desc="progress measures", unit="ckpt", disable=not progress):
        started = time.perf_counter()
        checkpoint = read_checkpoint(path)
        if checkpoint.get("step") is None:
            raise ValueError(f"{path}: the checkpoint has no step; expected an antigrok.training.train checkpoint")
        model = model_from_checkpoint(checkpoint, path)
        rows.append({"step": int(checkpoint["step"]), **progress_measures(model, inputs, settings)})
        log.info("%s: step %d in %.2f s", path.name, checkpoint["step"], time.perf_counter() - started)
    table = pd.DataFrame(rows).sort_values("step", kind="stable").reset_index(drop=True)
    if table["step"].duplicated().any():
        raise ValueError(f"two checkpoints share a step: {table['step'][table['step'].duplicated()].tolist()}")
    return table


def write_progress_csv(checkpoint_dir: str | Path, dataset_path: str | Path, output: str | Path,
                       settings: ProgressSettings | Mapping | None = None) -> pd.DataFrame:
    """The ``progress`` rule: every ``step*.pt`` in ``checkpoint_dir`` to ``output`` (atomically)."""
    from antigrok.training.data import load_dataset

    refuse_held_elsewhere(checkpoint_dir)
    paths = list(checkpoint_files(checkpoint_dir, (".pt",)).values())
    if not paths:
        raise FileNotFoundError(f"no step*.pt checkpoints in {checkpoint_dir}; rerun the train rule")
    table = progress_for_checkpoints(paths, load_dataset(dataset_path), settings)
    write_csv_atomically(table, output)
    return table
