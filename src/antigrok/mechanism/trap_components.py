"""The singular components of the shuffled W_rand, which of them are Correlation Traps, and each
one mapped back to the coordinates of W.

WeightWatcher 0.7.5.5 shuffles the entries of W (one ``np.random.shuffle`` of ``W.flatten()`` per
replica, after ``np.random.seed(seed)``; 5 replicas when W has fewer than 100 eigenvalues) and counts
the eigenvalues of the pooled W_rand^T W_rand above the MP bulk edge plus the Tracy-Widom term. The
shuffle here is antigrok.spectra.fast_engine.shuffled_weights, the workflow's own, applied to W and to the
array of W's flat indices (so the permutation is known exactly); the seed is the workflow's
``layer_seed(run seed, step, layer)``, the MP fit fastspectra.marchenko_pastur_fit and the count
antigrok.spectra.traps.count_traps. So a checkpoint's trap count here is the run's traps.csv count.

Mapped back: with ``W_rand[k] = W[perm[k]]`` (flat indices) and W_rand's SVD ``sum_i s_i u_i v_i^T``,
the matrices ``C_i[perm[k]] = s_i u_i[k] v_i[k]`` sum exactly to W. A trap's ``C_i`` is the part of W
that makes the trap: for a trap made by the mean of the entries it is close to that mean (a constant
matrix), for a trap made by one large entry it sits on that entry. Removing it from W removes
exactly that eigenvalue from W_rand (same permutation); that is the removal construction of
antigrok.mechanism.removal.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from antigrok.spectra.fast_engine import FitFailed, marchenko_pastur_fit, shuffled_weights
from antigrok.spectra.traps import count_traps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShuffledSVD:
    """One replica of W_rand: its permutation of W's flat indices and its SVD (descending)."""

    permutation: np.ndarray  # W_rand.flat[k] = W.flat[permutation[k]]
    left: np.ndarray  # (out, K) as numpy's U
    singular_values: np.ndarray  # (K,) descending
    right: np.ndarray  # (K, in) as numpy's Vt

    def component(self, index: int) -> np.ndarray:
        """Component ``index`` of W_rand, ``s u v^T``, in W_rand's coordinates (out, in)."""
        return self.singular_values[index] * np.outer(self.left[:, index], self.right[index])

    def mapped_back(self, index: int) -> np.ndarray:
        """Component ``index`` moved back to W's coordinates: the C_i of the module docstring."""
        return unshuffle(self.component(index), self.permutation)

    def position_in_rand(self, flat_index_in_w: int) -> tuple[int, int]:
        """(row, column) in W_rand of W's entry with this flat index."""
        k = int(np.flatnonzero(self.permutation == flat_index_in_w)[0])
        return divmod(k, self.right.shape[1])


@dataclass(frozen=True)
class LayerTraps:
    """The shuffled replicas of one layer, its MP fit and which components are traps."""

    replicas: list[ShuffledSVD]
    rand_sigma_mp: float  # WeightWatcher's sigma (rescaled units)
    rand_lambda_plus: float  # bulk edge, eigenvalue units
    trap_threshold: float  # lambda_plus + s x TW term, eigenvalue units
    num_traps: int  # traps in the pooled ESD: traps.csv's num_traps
    traps: list[tuple[int, int]]  # (replica, index) of each trap, largest eigenvalue first

    def trap_indices(self, replica: int = 0) -> list[int]:
        """Indices of the trap components of one replica, largest first."""
        return [index for r, index in self.traps if r == replica]


def unshuffle(shuffled: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """The matrix X with ``X.flat[permutation[k]] = shuffled.flat[k]``: W_rand's coordinates to W's."""
    out = np.empty(shuffled.size, dtype=np.float64)
    out[permutation] = shuffled.reshape(-1)
    return out.reshape(shuffled.shape)


def shuffle_permutations(shape: tuple[int, int], seed: int) -> np.ndarray:
    """WeightWatcher's permutation(s) of the flat indices for ``seed``: (replicas, out * in).

    The workflow's shuffle (fastspectra.shuffled_weights) applied to the flat indices themselves,
    exact in float64 for any matrix below 2^53 entries.
    """
    indices = np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape)
    return shuffled_weights(indices, seed).reshape(-1, indices.size).astype(np.int64)


def shuffled_svds(weight: np.ndarray, seed: int) -> list[ShuffledSVD]:
    """The replicas of W_rand that the workflow draws for ``seed``, each with its SVD."""
    weight = np.asarray(weight, dtype=np.float64)
    replicas = []
    for permutation in shuffle_permutations(weight.shape, seed):
        shuffled = weight.reshape(-1)[permutation].reshape(weight.shape)
        left, singular_values, right = np.linalg.svd(shuffled, full_matrices=False)
        replicas.append(ShuffledSVD(permutation, left, singular_values, right))
    return replicas


def layer_traps(weight: np.ndarray, seed: int, tracy_widom_scale: float = 1.0) -> LayerTraps:
    """W_rand's replicas, MP fit and traps of one weight matrix (out, in) for a layer seed."""
    weight = np.asarray(weight, dtype=np.float64)
    rows, cols = max(weight.shape), min(weight.shape)
    replicas = shuffled_svds(weight, seed)
    labels = [(r, i) for r, replica in enumerate(replicas) for i in range(len(replica.singular_values))]
    pooled = np.array([replicas[r].singular_values[i] ** 2 for r, i in labels])
    try:
        sigma = marchenko_pastur_fit(np.sort(pooled), rows, cols)["rand_sigma_mp"]
    except (FitFailed, ValueError, FloatingPointError) as error:  # as fastspectra.layer_columns: no count
        log.warning("MP fit of the shuffled spectrum of a %s matrix failed (%s): no traps counted", weight.shape, error)
        sigma = math.nan
    found = count_traps(pooled, rows=rows, cols=cols, sigma=sigma, tracy_widom_scale=tracy_widom_scale)
    num_traps = 0 if pd.isna(found["num_traps"]) else int(found["num_traps"])  # a failed MP fit: none found
    order = np.argsort(-pooled, kind="stable")[:num_traps]  # traps are the largest eigenvalues
    return LayerTraps(
        replicas=replicas,
        rand_sigma_mp=float(sigma),
        rand_lambda_plus=float(found["rand_lambda_plus"]),
        trap_threshold=float(found["trap_threshold"]),
        num_traps=num_traps,
        traps=[labels[k] for k in order],
    )
