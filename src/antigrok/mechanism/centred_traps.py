"""The traps of the centred matrix: W_rand's outliers once the entries' mean is taken out.

traps.csv's ``num_traps_centered`` counts the eigenvalues of the same shuffled draws with the mean
subtracted above WeightWatcher's own trap threshold (antigrok.spectra.traps: the mean moves one eigenvalue,
not the bulk). Here the same: ``W - mu`` is shuffled with the layer's permutation (shuffling and
subtracting a constant commute), its SVD is taken and the components whose squared singular value
exceeds the uncentred fit's ``trap_threshold`` are the centred traps. Mapped back to W's
coordinates they sum, with the other centred components, to ``W - mu 1 1^T``; removing them from W
takes out the traps that are not the mean and keeps the mean.
"""

from __future__ import annotations

import numpy as np

from antigrok.mechanism.trap_components import LayerTraps, ShuffledSVD


def centred_svd(weight: np.ndarray, traps: LayerTraps, replica: int = 0) -> ShuffledSVD:
    """The SVD of ``W_rand - mu`` under the permutation of one replica of ``traps``."""
    weight = np.asarray(weight, dtype=np.float64)
    permutation = traps.replicas[replica].permutation
    centred = (weight - weight.mean()).reshape(-1)[permutation].reshape(weight.shape)
    left, singular_values, right = np.linalg.svd(centred, full_matrices=False)
    return ShuffledSVD(permutation, left, singular_values, right)


def centred_trap_indices(svd: ShuffledSVD, traps: LayerTraps) -> list[int]:
    """The components of the centred W_rand above the layer's trap threshold (none if it is NaN)."""
    if not np.isfinite(traps.trap_threshold):
        return []
    return [int(index) for index in np.flatnonzero(svd.singular_values**2 > traps.trap_threshold)]


def centred_trap_count(weight: np.ndarray, traps: LayerTraps) -> int:
    """traps.csv's ``num_traps_centered``: centred traps pooled over all replicas."""
    return sum(len(centred_trap_indices(centred_svd(weight, traps, r), traps)) for r in range(len(traps.replicas)))
