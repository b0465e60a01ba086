"""Controls matched to what the inputs see: a change of W of the same Frobenius norm that the train
inputs load as strongly as the removed component.

Why: an i.i.d. random matrix of the trap's norm points where the inputs average out (for a random
unit b, b . x is small next to 1 . x / sqrt(784) on non-negative images), so it barely moves the
pre-activations and is no fair control for a component the inputs load strongly. The input load of
a change D is ``rms_x ||D x||`` over the layer's train inputs. A rank-one ``s a b^T`` (random unit
a) loads ``s sqrt(b^T S b)``, S the inputs' second-moment matrix; b is drawn at random and then
moved along the great circle towards S's top (or bottom) eigenvector until ``b^T S b`` equals
D's ``load^2 / s^2``, which lies within S's eigenvalue range for any D.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np


@dataclass(frozen=True)
class SecondMoment:
    """S = X^T X / n of one layer's train inputs, with its eigendecomposition (ascending)."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray  # columns

    @classmethod
    def of(cls, inputs: np.ndarray) -> "SecondMoment":
        inputs = np.asarray(inputs, dtype=np.float64)
        values, vectors = np.linalg.eigh(inputs.T @ inputs / len(inputs))
        return cls(values, vectors)

    def quadratic(self, b: np.ndarray) -> float:
        """b^T S b."""
        projected = self.eigenvectors.T @ b
        return float(np.sum(self.eigenvalues * projected**2))


def input_load(change: np.ndarray, inputs: np.ndarray, bias_change: np.ndarray | None = None) -> float:
    """rms over the inputs of ||D x + db||: how far a change moves the layer's pre-activations."""
    return input_loads(change, inputs, bias_change)[1]


def input_loads(change: np.ndarray, inputs: np.ndarray, bias_change: np.ndarray | None = None) -> tuple[float, float]:
    """(rms ||D x||, rms ||D x + db||) over the inputs: the weight change's load, and with the bias's."""
    effect = np.asarray(inputs, dtype=np.float64) @ np.asarray(change).T
    load = float(np.sqrt(np.mean(np.sum(effect**2, axis=1))))
    if bias_change is None:
        return load, load
    return load, float(np.sqrt(np.mean(np.sum((effect + bias_change) ** 2, axis=1))))


def matched_direction(target: float, moment: SecondMoment, rng: np.random.Generator,
                      tolerance: float = 1e-12) -> np.ndarray:
    """A unit b with b^T S b = ``target`` (clipped to S's eigenvalue range): a random unit vector
    moved along the great circle towards S's top or bottom eigenvector, by bisection."""
    low, high = float(moment.eigenvalues[0]), float(moment.eigenvalues[-1])
    target = min(max(target, low), high)
    b = rng.standard_normal(moment.eigenvectors.shape[0])
    b /= np.linalg.norm(b)
    start = moment.quadratic(b)
    end_vector = moment.eigenvectors[:, -1] if start < target else moment.eigenvectors[:, 0]
    end_vector = end_vector if end_vector @ b >= 0 else -end_vector  # the short way round: never through 0

    def along(t: float) -> np.ndarray:
        v = (1 - t) * b + t * end_vector
        return v / np.linalg.norm(v)

    below_at_start = start < target
    t_low, t_high = 0.0, 1.0
    for _ in range(200):
        middle = 0.5 * (t_low + t_high)
        if (moment.quadratic(along(middle)) < target) == below_at_start:
            t_low = middle
        else:
            t_high = middle
        if t_high - t_low < tolerance:
            break
    return along(0.5 * (t_low + t_high))


def input_matched_rank_one(change: np.ndarray, inputs: np.ndarray, moment: SecondMoment,
                           rng: np.random.Generator) -> np.ndarray:
    """``s a b^T`` with s = ||D||_F (random unit a) whose input load equals D's on ``inputs``."""
    norm = float(np.linalg.norm(change))
    if norm == 0:
        return np.zeros_like(change)
    b = matched_direction(input_load(change, inputs) ** 2 / norm**2, moment, rng)
    a = rng.standard_normal(change.shape[0])
    return norm * np.outer(a / np.linalg.norm(a), b)
