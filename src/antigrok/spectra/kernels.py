"""Convolution kernels as WeightWatcher 0.7.5.5 reads them: one matrix per kernel position, pooled.

WeightWatcher gives a 4-D weight (a ``Conv2d`` kernel, torch's layout ``(out, in, kh, kw)``) to
``WWLayer.conv2D_Wmats`` and analyses it as one layer (``analyze(pool=True)``, its default):

* slices: for every kernel position (i, j), row-major, the ``out x in`` matrix ``W[:, :, i, j]``,
  transposed when ``out < in`` so that every slice has at least as many rows as columns;
* scale: every slice is multiplied by ``sqrt(1 / 2)`` (``apply_normalize_Wmats``: ``conv2d_norm=True``
  with ``conv2d_count = 1``), so the eigenvalues are half those of the raw slices: ``xmin``,
  ``xmax``, the norms and ``rand_*`` eigenvalues carry that factor; alpha, sigma and traps do not;
* eigenvalues: the squared singular values of every slice, pooled into one sorted spectrum of
  ``min(out, in) * kh * kw`` values; the power law is fitted to it as to a dense layer's;
* randomized ESD: each slice shuffled on its own (its ``flatten()``, row-major, ``np.random.shuffle``),
  slice after slice, all drawn from the one global RNG; 5 replicas of all slices in turn when
  ``M * rf < 100`` (``rf = kh * kw``), else 1; their eigenvalues pooled. The MP fit and trap count
  then use the layer's ``N`` and ``M`` (below) with this pooled spectrum, so a trap count can
  exceed ``M``: it counts pooled eigenvalues of ``rf`` slices (times the replicas);
* ``N`` and ``M``: ``max(out, in)`` and ``min(out, in)``, except where WeightWatcher's loop swaps
  them once per slice: with ``out < in`` and an even number of kernel positions (a 2 x 2 kernel) it
  ends with ``N = out < M = in`` (Q < 1), and it uses those values for its size limits
  (``M * rf`` between 10 and 15000, ``N`` at most 50000), its MP fit and its Tracy-Widom term.
  The same happens, without the swaps, when ``out + in < kh + kw`` (its "channels first" guess).
  antigrok uses exactly these values, so its numbers stay WeightWatcher's; ``rows``/``cols`` in
  the output are this N and M.

A 3-D weight ``(out, in, k)`` (``Conv1d``) is analysed here as the ``(out, in, k, 1)`` kernel of a
``Conv2d``: one ``out x in`` slice per position. WeightWatcher 0.7.5.5 itself does not: in a
state_dict a 3-D tensor is of unknown type and skipped; given the ``nn.Module`` it treats a Conv1d
like a dense layer of the 3-D array, which it skips unless ``min(out, in, k) >= 10`` and otherwise
reduces to the ``min(out, in, k)`` largest singular values of the ``out`` matrices ``W[o]``.
docs/own-models.md lists these choices per layer type.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# apply_normalize_Wmats: norm = np.sqrt(conv2d_count / 2.0), conv2d_count = 1 for a pooled layer
CONV2D_NORM = np.sqrt(1 / 2.0)
KERNEL_NDIMS = (3, 4)  # Conv1d (out, in, k), Conv2d (out, in, kh, kw)


def as_conv2d_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A kernel's shape as a Conv2d's ``(out, in, kh, kw)``: a Conv1d's ``(out, in, k)`` is ``(out, in, k, 1)``."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        return shape + (1,)
    if len(shape) == 4:
        return shape
    raise ValueError(f"a convolution kernel is 3-D (out, in, k) or 4-D (out, in, kh, kw); got shape {shape}")


def _channels_last(out: int, inp: int, kh: int, kw: int) -> bool:
    """WeightWatcher's guess of the layout of a 4-D weight: (out, in, kh, kw) when out + in >= kh + kw."""
    return out + inp >= kh + kw


def weightwatcher_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(N, M, rf)`` as WeightWatcher's layer has them, from the stored shape alone.

    A matrix: ``(max, min, 1)``. A kernel: see the module docstring (N < M where WeightWatcher swaps).
    """
    if len(shape) == 2:
        return int(max(shape)), int(min(shape)), 1
    out, inp, kh, kw = as_conv2d_shape(shape)
    rf = kh * kw
    if out < inp and _channels_last(out, inp, kh, kw) and rf % 2 == 1:
        return inp, out, rf  # swapped once per slice, an odd number of times
    # no swap needed, swapped back by an even number of slices, or the "channels first" branch
    return out, inp, rf


def num_pooled_evals(shape: Sequence[int]) -> int:
    """How many eigenvalues the pooled spectrum has: ``min(out, in)`` per kernel position."""
    if len(shape) == 2:
        return int(min(shape))
    out, inp, kh, kw = as_conv2d_shape(shape)
    return min(out, inp) * kh * kw


def kernel_slices(kernel: np.ndarray) -> np.ndarray:
    """WeightWatcher's matrices of a kernel, scaled: ``(rf, n, m)`` float64 with ``n >= m``.

    Slice ``i * kw + j`` is ``W[:, :, i, j]`` (transposed when out < in) times ``CONV2D_NORM``: the
    very matrices WeightWatcher decomposes and shuffles (the same values, in the same order).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel = kernel.reshape(as_conv2d_shape(kernel.shape))
    out, inp = kernel.shape[:2]
    positions = np.moveaxis(kernel, (2, 3), (0, 1)).reshape(-1, out, inp)  # (rf, out, in), row-major (i, j)
    if out < inp:
        positions = np.swapaxes(positions, 1, 2)
    return np.ascontiguousarray(positions * CONV2D_NORM)


def weightwatcher_kernel(kernel: np.ndarray) -> np.ndarray:
    """The 4-D array to hand WeightWatcher for a kernel: a Conv1d's ``(out, in, k)`` as ``(out, in, k, 1)``."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return kernel.reshape(as_conv2d_shape(kernel.shape))
