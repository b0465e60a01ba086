"""Datasets: the stratified MNIST subset of the paper and modular addition (tokens [a, b, =]),
each saved once as a small file for training.

A dataset file is a ``torch.save`` dict with tensors ``x_train``, ``y_train``, ``x_test``,
``y_test`` (labels as int64), ``num_classes`` and ``meta`` (how it was made).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from antigrok.files import write_atomically
from antigrok.formats.loading import safe_torch_load

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(RuntimeError):
    """The data cannot be found or made; the message says what to do."""


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` examples, exactly ``size / num_classes`` per class, chosen by ``seed``.

    Sorted, so the subset does not depend on the order classes are visited in.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if size % len(classes):
        raise DataError(
            f"data.train_size={size} is not a multiple of the {len(classes)} classes; "
            "choose a multiple so that every class has the same count"
        )
    per_class = size // len(classes)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in classes:
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise DataError(f"class {label} has {len(pool)} examples, fewer than {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _load_mnist_split(root: Path, train: bool, download: bool = True):
    import torchvision

    try:
        dataset = torchvision.datasets.MNIST(root=str(root), train=train, download=download)
    except Exception as error:  # torchvision raises RuntimeError/URLError depending on version
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        missing = [f for f in MNIST_RAW_FILES if not (root / "MNIST" / "raw" / f).exists()]
        raise DataError(
            f"MNIST is not under data.root={root} and could not be downloaded ({reason}). "
            f"Put the four raw files {', '.join(MNIST_RAW_FILES)} in {root / 'MNIST' / 'raw'} "
            f"(missing: {', '.join(missing) or 'none'}), or set data.root to a folder that has them."
        ) from error
    images = dataset.data.reshape(len(dataset.data), -1).to(torch.float32) / 255.0
    return images, dataset.targets.to(torch.int64)


def prepare_mnist(root: str | Path, train_size: int, subset_seed: int, download: bool = True) -> dict:
    """The paper's data: a stratified ``train_size`` subset of the train split, the full test split.

    Pixels are scaled to [0, 1] and flattened to 784 features (torchvision's ToTensor, as in the
    authors' notebook); no further normalisation.
    """
    root = Path(root)
    x_train_full, y_train_full = _load_mnist_split(root, train=True, download=download)
    x_test, y_test = _load_mnist_split(root, train=False, download=download)
    index = stratified_subset(y_train_full.numpy(), train_size, subset_seed)
    return {
        "x_train": x_train_full[index].clone(),
        "y_train": y_train_full[index].clone(),
        "x_test": x_test,
        "y_test": y_test,
        "num_classes": 10,
        "meta": {"dataset": "mnist", "train_size": train_size, "subset_seed": subset_seed,
                 "train_indices": index.tolist()},
    }


def prepare_modadd(modulus: int, train_fraction: float, split_seed: int) -> dict:
    """(a + b) mod p on all p^2 pairs, split by a seeded permutation (Nanda et al. 2023).

    Inputs are the token sequences [a, b, =] with '=' the token ``p`` (so the model's vocabulary
    is p + 1); labels are (a + b) mod p, so ``num_classes`` is p. The split is that of Nanda et
    al.'s ``gen_train_test``: Python's ``random.Random(split_seed).shuffle`` of the pairs in
    (a, b) row-major order, the first ``int(train_fraction * p^2)`` for training, the rest test.
    """
    if modulus < 2:
        raise DataError(f"dataset.modulus={modulus}: modular addition needs a modulus >= 2")
    order = list(range(modulus * modulus))  # pair index a * p + b
    random.Random(split_seed).shuffle(order)
    num_train = int(train_fraction * len(order))
    if not 0 < num_train < len(order):
        raise DataError(
            f"dataset.train_fraction={train_fraction} of {len(order)} pairs leaves {num_train} for "
            "training; choose a fraction that leaves at least one pair in each of train and test"
        )
    index = torch.tensor(order, dtype=torch.int64)
    a, b = index // modulus, index % modulus
    tokens = torch.stack([a, b, torch.full_like(a, modulus)], dim=1)
    labels = (a + b) % modulus
    return {
        "x_train": tokens[:num_train].clone(),
        "y_train": labels[:num_train].clone(),
        "x_test": tokens[num_train:].clone(),
        "y_test": labels[num_train:].clone(),
        "num_classes": modulus,
        "meta": {"dataset": "modadd", "modulus": modulus, "train_fraction": train_fraction,
                 "split_seed": split_seed, "equals_token": modulus,
                 "train_indices": order[:num_train]},
    }


def prepare_dataset(dataset_cfg: dict, data_cfg: dict) -> dict:
    """The dataset an experiment names in ``experiments.<name>.dataset``."""
    name = dataset_cfg["name"]
    if name == "mnist":
        return prepare_mnist(data_cfg["root"], data_cfg["train_size"], data_cfg["subset_seed"])
    if name == "modadd":
        return prepare_modadd(
            modulus=dataset_cfg.get("modulus", 113),
            train_fraction=dataset_cfg.get("train_fraction", 0.3),
            split_seed=dataset_cfg.get("split_seed", 0),
        )
    raise DataError(f"unknown dataset {name!r}; known: mnist, modadd")


def save_dataset(dataset: dict, path: str | Path) -> None:
    write_atomically(path, lambda partial: torch.save(dataset, partial))


def load_dataset(path: str | Path) -> dict:
    return safe_torch_load(path)  # weights_only: never unpickles code
