"""Pixel-shuffled MNIST: the test images with one fixed permutation of their 784 pixels, through a
checkpoint. The follow-up reports that most predictions then fall into one class; the share of the
most-predicted class says how much.

The permutation is ``numpy.random.default_rng(seed).permutation(pixels)``, the same for every
checkpoint and run, so the phases are compared on the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from antigrok.files import write_csv_atomically
from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.checkpoints import checkpoint_paths, edge_checkpoints, mlp_from_state_dict

CONFUSION_COLUMNS = ["edge", "edge_step", "step", "inputs", "true_class", "predicted_class", "count"]


def pixel_permutation(pixels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(pixels)


def confusion_counts(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def top_class_share(counts: np.ndarray) -> tuple[int, float]:
    """The most-predicted class and the share of all predictions that fall into it."""
    per_class = counts.sum(axis=0)
    return int(np.argmax(per_class)), float(per_class.max() / per_class.sum())


@torch.no_grad()
def confusion_rows(state_dict, images: torch.Tensor, labels: torch.Tensor, permutation: np.ndarray) -> list[dict]:
    """Tidy counts for the plain and the pixel-shuffled test images at one checkpoint."""
    model = mlp_from_state_dict(state_dict)
    classes = int(labels.max()) + 1
    images = images.to(torch.float64).reshape(len(images), -1)
    rows = []
    for name, x in (("plain", images), ("pixel_shuffled", images[:, torch.from_numpy(permutation)])):
        counts = confusion_counts(model(x).argmax(-1).numpy(), labels.numpy(), classes)
        rows += [{"inputs": name, "true_class": t, "predicted_class": p, "count": int(counts[t, p])}
                 for t in range(classes) for p in range(classes)]
    return rows


def confusion_table(checkpoint_dir: str | Path, phases: pd.DataFrame, dataset: Mapping, edges: Sequence[str],
                    seed: int) -> pd.DataFrame:
    permutation = pixel_permutation(dataset["x_test"][0].numel(), seed)
    table = []
    for edge in edge_checkpoints(phases, checkpoint_paths(checkpoint_dir), edges):
        for row in confusion_rows(read_state_dict(edge.path), dataset["x_test"], dataset["y_test"], permutation):
            table.append({"edge": edge.edge, "edge_step": edge.edge_step, "step": edge.step, **row})
    return pd.DataFrame(table, columns=CONFUSION_COLUMNS)


def write_confusion(checkpoint_dir: str | Path, phases_csv: str | Path, dataset_path: str | Path, output: str | Path,
                    edges: Sequence[str], seed: int) -> pd.DataFrame:
    """The rule ``shuffled_confusion``."""
    from antigrok.training.data import load_dataset

    table = confusion_table(checkpoint_dir, pd.read_csv(phases_csv), load_dataset(dataset_path), edges, seed)
    write_csv_atomically(table, output)
    return table
