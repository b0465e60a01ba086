"""The checkpoint that stands for each phase edge of a run, and the model it holds.

Phase edges (phases.csv) are logged steps; checkpoints are a log-spaced subset of them. The
checkpoint of an edge is the one nearest to it in log10(step) (antigrok.runs.nearest_checkpoint_step:
the earlier one on a tie, step 0 only for an edge at step 0), so an edge
between two checkpoints is represented by the closer one, whichever side it lies on. ``last`` is the
last checkpoint. An edge the run does not have (a run that never collapses has no
anti_grokking_start_step) is left out, with a log line.

Checkpoints are read safely: ``step{step:09d}.pt`` (torch, weights_only) as the train rule writes
them, or ``step{step:09d}.safetensors`` (tensor names as the state_dict) as the references keep them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from antigrok.runs import checkpoint_files, nearest_checkpoint_step
from antigrok.study.phases import edges_from_phases
from antigrok.training.models import MLP

log = logging.getLogger(__name__)

EDGE_NAMES = ("fit_step", "grokking_start_step", "peak_step", "anti_grokking_start_step", "collapse_step", "last")


@dataclass(frozen=True)
class EdgeCheckpoint:
    """One phase edge of a run and the checkpoint that stands for it."""

    edge: str  # a name of EDGE_NAMES
    edge_step: int  # the edge's logged step (the last checkpoint's step for ``last``)
    step: int  # the checkpoint's step
    path: Path


def checkpoint_paths(folder: str | Path) -> dict[int, Path]:
    """{step: file} of the ``step*.pt`` and ``step*.safetensors`` files of a folder."""
    found = checkpoint_files(folder)
    if not found:
        raise FileNotFoundError(f"{folder}: no step*.pt or step*.safetensors checkpoints; rerun the train rule "
                                "or point at a reference's checkpoints/ folder")
    return found


def edge_checkpoints(phases: pd.DataFrame, checkpoints: Mapping[int, Path], edges: Sequence[str]) -> list[EdgeCheckpoint]:
    """The checkpoint of each requested edge the run has, in the order of ``edges``."""
    unknown = [edge for edge in edges if edge not in EDGE_NAMES]
    if unknown:
        raise ValueError(f"unknown phase edge(s) {unknown}; known: {list(EDGE_NAMES)}")
    found = edges_from_phases(phases)
    last = max(checkpoints)
    chosen = []
    for edge in edges:
        edge_step = last if edge == "last" else getattr(found, edge)
        if edge_step is None:
            log.info("the run has no %s; skipped", edge)
            continue
        step = nearest_checkpoint_step(checkpoints, edge_step)
        chosen.append(EdgeCheckpoint(edge, int(edge_step), step, Path(checkpoints[step])))
    return chosen


def mlp_widths(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
    """The widths of the MLP whose weights these are: fc1 (h1, in), fc2 (h2, h1), ... -> [in, h1, h2, ...]."""
    layers = sorted((int(match.group(1)), name) for name in state_dict
                    if (match := re.fullmatch(r"fc(\d+)\.weight", name)))
    if not layers or [index for index, _ in layers] != list(range(1, len(layers) + 1)):
        raise ValueError(f"not an antigrok MLP state_dict (fc1.weight, fc2.weight, ...): keys {sorted(state_dict)}; "
                         "the mechanism analyses are written for the MNIST MLP")
    weights = [state_dict[name] for _, name in layers]
    return [int(weights[0].shape[1])] + [int(weight.shape[0]) for weight in weights]


def mlp_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> MLP:
    """The float64 MLP holding these weights (its widths read from their shapes), in eval mode."""
    model = MLP(mlp_widths(state_dict)).to(torch.float64)
    model.load_state_dict({name: tensor.to(torch.float64) for name, tensor in state_dict.items()})
    return model.eval()


@torch.no_grad()
def layer_inputs(state_dict: Mapping[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each fc layer's float64 inputs on ``x`` under this MLP: x for fc1, the ReLU outputs after."""
    model = mlp_from_state_dict(state_dict)
    inputs, h = {}, x.to(torch.float64).flatten(1)
    for index, layer in enumerate(layer_names(state_dict), start=1):
        inputs[layer] = h
        h = getattr(model, layer)(h)
        if index < model.num_layers:
            h = getattr(model, f"act{index}")(h)
    return inputs


@torch.no_grad()
def outputs_from(state_dict: Mapping[str, torch.Tensor], inputs: torch.Tensor, first_layer: str) -> torch.Tensor:
    """The MLP's outputs given ``first_layer``'s inputs (the MLP's forward from that layer on, on the
    state_dict's tensors directly): a change of a later layer leaves the earlier outputs as they were,
    so they are not recomputed."""
    layers = layer_names(state_dict)
    h = inputs
    for layer in layers[layers.index(first_layer):]:
        h = torch.nn.functional.linear(h, state_dict[f"{layer}.weight"], state_dict[f"{layer}.bias"])
        if layer != layers[-1]:
            h = torch.relu(h)
    return h


def weight_matrix(state_dict: Mapping[str, torch.Tensor], layer: str) -> np.ndarray:
    """``layer``'s weight (out, in) as a float64 array."""
    return state_dict[f"{layer}.weight"].detach().cpu().numpy().astype(np.float64)


def layer_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """fc1, fc2, ... in order."""
    return [f"fc{index}" for index in range(1, len(mlp_widths(state_dict)))]
