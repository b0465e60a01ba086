"""The mean of a layer's entries as a component of W, and putting a removed component's average
effect back through the bias.

Why: shuffling keeps the entries' mean mu in every entry, so W_rand = mu 1 1^T + noise has an
outlier (antigrok.spectra.traps), and fc1's trap component is mostly that constant matrix. On inputs that
are all non-negative (MNIST pixels, ReLU outputs) the constant matrix is not a pattern but an input-
dependent bias: ``mu 1 1^T x = mu (sum_j x_j) 1`` shifts every hidden unit by mu times the input's
sum. Removing it moves every unit at once, whatever the traps mean. Compensating through the bias
separates the two: with ``W' = W - C`` and ``b' = b + C xbar`` (xbar the mean train input of the
layer) the pre-activations change by ``-C (x - xbar)`` only, the part of C's effect that varies
between inputs. For the mean component that residual is mu (sum x - mean sum x) 1: exact for inputs
of equal sum, and on the train set its size relative to the whole effect is the coefficient of
variation of the input sums (``compensation_residual``).
"""

from __future__ import annotations

import numpy as np


def mean_component(weight: np.ndarray) -> np.ndarray:
    """mu 1 1^T: the constant matrix of W's entry mean (W's projection on the constant direction)."""
    weight = np.asarray(weight, dtype=np.float64)
    return np.full_like(weight, weight.mean())


def bias_compensation(component: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """``C xbar``: what to add to the bias so that removing C leaves the mean pre-activation as it was.

    ``inputs`` (samples, in) are the layer's inputs on the train set under the unmodified network.
    """
    return np.asarray(component) @ np.asarray(inputs, dtype=np.float64).mean(axis=0)


def compensation_residual(component: np.ndarray, inputs: np.ndarray) -> float:
    """sqrt(sum_x ||C (x - xbar)||^2 / sum_x ||C x||^2): the share of C's effect on the pre-activations
    that the bias cannot take over (0: exact; 1: none of it). NaN when C has no effect on the inputs."""
    inputs = np.asarray(inputs, dtype=np.float64)
    effect = inputs @ np.asarray(component).T
    total = float(np.sum(effect**2))
    return float(np.sqrt(np.sum((effect - effect.mean(axis=0)) ** 2) / total)) if total > 0 else float("nan")
