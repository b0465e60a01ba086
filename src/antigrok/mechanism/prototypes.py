"""Prototypes: the top singular vectors of the weights as 28 x 28 images, and how much each looks
like a digit, measured.

fc1 (h1 x 784): its top right singular vectors are images directly, and the rows of W1 with the
largest weight in the top left singular vector are the "top rows" the follow-up shows. fc2 and fc3
live in hidden space: their right singular vectors are back-projected to pixels through the layers
below, linearly (biases and ReLUs left out): ``W1^T v`` for fc2, ``W1^T W2^T v`` for fc3.

The measure beside each picture: the Pearson correlation of the image with each class-mean image of
the train subset, best class and value (``corr``), and the same with the class means minus the mean
of all train images (``corr_centered``: digit-specific, since every raw class mean shares the central
blob). A singular vector's sign is arbitrary, so the absolute value is taken. For reference, a random
Gaussian image has |corr| of about 1/sqrt(784) = 0.036 with a fixed image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from antigrok.files import write_csv_atomically
from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.checkpoints import checkpoint_paths, edge_checkpoints, layer_names, weight_matrix

log = logging.getLogger(__name__)

PROTOTYPE_COLUMNS = [
    "edge", "edge_step", "step", "layer", "kind", "index", "singular_value", "best_class", "corr",
    "best_class_centered", "corr_centered",
]


def class_means(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(classes, pixels): the mean image of each class."""
    images = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    labels = np.asarray(labels)
    return np.stack([images[labels == label].mean(axis=0) for label in range(int(labels.max()) + 1)])


def correlations(image: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """|Pearson correlation| of one image with each template (rows)."""
    x = image - image.mean()
    t = templates - templates.mean(axis=1, keepdims=True)
    return np.abs(t @ x) / (np.linalg.norm(t, axis=1) * np.linalg.norm(x))


def best_match(image: np.ndarray, means: np.ndarray) -> dict:
    """Best class and |corr| against the class means, raw and with the overall mean subtracted."""
    raw = correlations(image, means)
    centered = correlations(image, means - means.mean(axis=0))
    return {"best_class": int(np.argmax(raw)), "corr": float(raw.max()),
            "best_class_centered": int(np.argmax(centered)), "corr_centered": float(centered.max())}


def pixel_images(state_dict: Mapping[str, torch.Tensor], layer: str, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(singular values, images (components, pixels)): layer's top right singular vectors in pixel space."""
    names = layer_names(state_dict)
    weight = weight_matrix(state_dict, layer)
    _, singular_values, right = np.linalg.svd(weight, full_matrices=False)
    vectors = right[:components]  # (k, in)
    for below in reversed(names[: names.index(layer)]):
        vectors = vectors @ weight_matrix(state_dict, below)  # v^T W_below = (W_below^T v)^T
    return singular_values[:components], vectors


def top_rows(state_dict: Mapping[str, torch.Tensor], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, rows of W1): the rows with the largest |u_1| of W1's top left singular vector."""
    weight = weight_matrix(state_dict, layer_names(state_dict)[0])
    left, _, _ = np.linalg.svd(weight, full_matrices=False)
    order = np.argsort(-np.abs(left[:, 0]), kind="stable")[:rows]
    return order, weight[order]


def prototype_rows(state_dict: Mapping[str, torch.Tensor], means: np.ndarray, components: int, rows: int) -> list[dict]:
    """prototypes.csv rows of one checkpoint (without the edge columns)."""
    found = []
    for layer in layer_names(state_dict):
        values, images = pixel_images(state_dict, layer, components)
        for index, (value, image) in enumerate(zip(values, images)):
            found.append({"layer": layer, "kind": "singular_vector", "index": index, "singular_value": float(value),
                          **best_match(image, means)})
    indices, images = top_rows(state_dict, rows)
    for index, image in zip(indices, images):
        found.append({"layer": layer_names(state_dict)[0], "kind": "top_row", "index": int(index),
                      "singular_value": np.nan, **best_match(image, means)})
    return found


def prototype_table(checkpoint_dir: str | Path, phases: pd.DataFrame, dataset: Mapping, edges: Sequence[str],
                    components: int, rows: int) -> pd.DataFrame:
    """prototypes.csv of a run."""
    means = class_means(dataset["x_train"], dataset["y_train"])
    table = []
    for edge in edge_checkpoints(phases, checkpoint_paths(checkpoint_dir), edges):
        for row in prototype_rows(read_state_dict(edge.path), means, components, rows):
            table.append({"edge": edge.edge, "edge_step": edge.edge_step, "step": edge.step, **row})
    return pd.DataFrame(table, columns=PROTOTYPE_COLUMNS)


def write_prototypes(checkpoint_dir: str | Path, phases_csv: str | Path, dataset_path: str | Path,
                     output: str | Path, edges: Sequence[str], components: int, rows: int) -> pd.DataFrame:
    """The rule ``prototypes``."""
    from antigrok.training.data import load_dataset

    table = prototype_table(checkpoint_dir, pd.read_csv(phases_csv), load_dataset(dataset_path), edges,
                            components, rows)
    write_csv_atomically(table, output)
    return table
