"""Fast spectral engine: WeightWatcher 0.7.5.5's numbers for one layer, organised for speed.

``weightwatcher.WeightWatcher(model={"<layer>.weight": W}).analyze(randomize=True, fix_fingers=...)``
after ``np.random.seed(seed)`` spends ~98% of its time in the Marchenko-Pastur fit of the shuffled
matrix's spectrum: ``scipy.optimize.brute`` tries ~195 sigma values and ``RMT_Util.resid_mp`` refits
a sklearn KernelDensity of the same eigenvalues for every one of them, although the density does not
depend on sigma. This module runs the same algorithm, step by step, organised so that nothing is
computed twice (``antigrok.htsr`` documents the quantities; ``htsr.engine: fast`` selects it):

* eigenvalues: of the smaller Gram matrix ``W W^T`` (``eigvalsh``); ``analyze_layer_series`` takes a
  stack of one layer's checkpoints and decomposes it in one call, but the workflow's ``spectra``
  rule and ``antigrok analyze`` pass one matrix at a time (``analyze_layer_fast``) and parallelise
  over checkpoints in processes instead (``htsr.threads``).
  WeightWatcher squares the singular values of ``scipy.linalg.svd``: the same numbers to ~1e-14
  relative; a nearly singular W, or an eigenvalue next to the 1e-5 cut, gets that SVD itself. A
  layer of 1024 x 1024 or larger (``BIG_LAYER_WORK``) is decomposed with the process's BLAS
  threads and torch's ``eigvalsh`` (MKL), ~2x faster at 4096;
* ``W_rand``: ``W.flatten()`` shuffled by ``RandomState(seed).shuffle``, the very draws WeightWatcher
  makes from the global RNG after ``np.random.seed(seed)`` (5 replicas in turn when
  ``min(W.shape) < 100``); the global RNG is not touched;
* power law (``WW_powerlaw.WWFit``): MLE alpha of every candidate xmin as one array operation, KS
  distances D screened in float32 for all candidates at once, then computed with WWFit's own
  expressions for the candidates that can be the minimum (near-ties included), so alpha, xmin and D
  are WeightWatcher's values bit for bit; ``fix_fingers='clip_xmax'`` replays
  ``RMT_Util.fit_clipped_powerlaw`` (refits on the clipped spectrum, same stopping rules, and the
  same failures);
* Marchenko-Pastur fit (``WeightWatcher.mp_fit``): the linear-kernel density once per spectrum,
  the residual of ``resid_mp`` for the whole ``brute`` grid as one array operation (same grid,
  same first minimum), then scipy's ``fmin`` polish replayed step for step on plain floats; then
  WeightWatcher's bulk edge, Tracy-Widom term and spike (trap) count.

Units: ``evals`` / ``rand_evals`` are WeightWatcher's eigenvalues, the squared singular values of W
(no 1/N). ``rand_sigma_mp`` is WeightWatcher's sigma, in the rescaled units of its MP fit (rand_evals
scaled to mean 1; singular values of that for square W). ``rand_lambda_plus``, ``rand_tw_term``,
``rand_tw_cutoff`` and ``max_rand_eval`` are in the units of ``rand_evals``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from antigrok.spectra.kernels import KERNEL_NDIMS, kernel_slices, weightwatcher_dims
from antigrok.spectra.primitives import mp_bulk_edge, mp_ks_test, rescale_like_weightwatcher, tracy_widom_term

log = logging.getLogger(__name__)

# WeightWatcher 0.7.5.5 constants (weightwatcher/constants.py, RMT_Util.py, WeightWatcher.mp_fit).
EVALS_THRESH = 1e-5           # eigenvalues at or below are left out of the power-law fit (CPU value)
MAX_FINGERS = 10              # fit_clipped_powerlaw: clip at most this many top eigenvalues
FINGER_THRESH = 1.0           # ... stop when alpha drops by more than this
MIN_ALPHA = 2.0               # ... or when alpha falls to this
KDE_BANDWIDTH = 0.1           # resid_mp: linear-kernel density of the rescaled ESD
KDE_POINTS = 1000             # ... on linspace(0, max + 0.5, 1000)
KDE_PAD = 0.5
DENSITY_FLOOR = 0.01          # ... points with density below are left out of the residual
PENALTY = 1000.0              # ... residual when the MP support does not cover the density's peak
SIGMA_GRID = (0.05, 2.0, 0.01)  # fit_density_with_range: brute grid, in units of the max-eval sigma
FEW_COMPONENTS = 100          # random ESD: 5 shuffled replicas below this many eigenvalues
FEW_COMPONENTS_REPLICAS = 5
# A D within this relative distance of the minimum is a near-tie, decided by WeightWatcher's own
# scalar expressions, so that the vectorised rounding never picks another xmin than it would.
D_TIE_RTOL = 1e-9
# Gram-matrix eigenvalues are trusted when the smallest is at least this fraction of the largest
# (relative error of the smallest below ~2e-7) and none is within GRAM_ABS_ERROR * lambda_max of
# EVALS_THRESH; otherwise the matrix gets WeightWatcher's SVD.
GRAM_MIN_RATIO = 1e-9
GRAM_ABS_ERROR = 1e-12
# KS distances are screened in float32: |D32 - D| < ~5e-7 (exp argument <= 0 with a relative
# error ~1e-7, |E * arg| <= 1/e; a few float32 roundings of quantities <= 1); candidates within
# this margin of the smallest D32 are computed by WWFit's expressions.
SCREEN_MARGIN = 4e-6
EXACT_CANDIDATES = 8  # up to this many candidates left by the screen: WWFit's expressions directly
# A layer with at least this much Gram-matrix work (min(shape)^2 * max(shape) multiply-adds; 1024 x 1024
# is 2**30) is a big job of its own: its Gram matrices and eigenvalues use the BLAS / LAPACK threads the
# process allows (every core, unless limited: the spectra rule's workers run with one), and the
# eigenvalues come from torch's LAPACK (MKL in the PyPI wheels), ~2x numpy's OpenBLAS at 4096. The
# workflow's layers (784 x 200 at most) stay far below: their path, and their numbers, are unchanged.
BIG_LAYER_WORK = 2**30


# ---------------------------------------------------------------- eigenvalues, batched

_BLAS_CONTROLLER = None


def single_threaded_blas():
    """A context with BLAS limited to one thread: the engine's matrices are small, and a second
    BLAS thread only spins (on a busy 2-core machine it multiplied the CPU time by 6). Parallelism
    is across checkpoints (``htsr.threads`` worker processes)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

            _BLAS_CONTROLLER = ThreadpoolController()
        except ImportError:
            _BLAS_CONTROLLER = False
    if not _BLAS_CONTROLLER:
        return contextlib.nullcontext()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def is_big_layer(shape: Sequence[int]) -> bool:
    """Whether a matrix of this (out, in) shape is decomposed with threads (``BIG_LAYER_WORK``)."""
    small, large = sorted(int(n) for n in shape[-2:])
    return small * small * large >= BIG_LAYER_WORK


def symmetric_eigenvalues(gram: np.ndarray, big: bool) -> np.ndarray:
    """Ascending eigenvalues of each symmetric matrix of a stack (its lower triangle, as LAPACK)."""
    if not big:
        return np.linalg.eigvalsh(gram)
    import torch

    return torch.linalg.eigvalsh(torch.from_numpy(gram)).numpy()


def blas_threads_for(shape: Sequence[int]):
    """The BLAS threads for one layer: as the process allows for a big layer, else one."""
    return contextlib.nullcontext() if is_big_layer(shape) else single_threaded_blas()


def esd_batch(weights: np.ndarray, shuffled: bool = False) -> np.ndarray:
    """Eigenvalues (ascending) of each W in a stack ``(..., out, in)``: squared singular values.

    One ``matmul`` and one ``eigvalsh`` over the whole stack, on the smaller Gram matrix: its
    eigenvalues carry an absolute error of order eps * lambda_max. Where that could matter (a nearly
    singular W, or an eigenvalue next to the 1e-5 cut of the power-law fit) the matrix's singular
    values are recomputed as WeightWatcher computes them (``scipy.linalg.svd``).

    A big layer (``is_big_layer``) is judged by what its spectrum is used for: of W, only the
    eigenvalues above the 1e-5 cut enter the power-law fit, so the smallest of those must meet
    GRAM_MIN_RATIO (a square W's Gram matrix is always ill-conditioned, its eigenvalues below the cut
    are not); the spectrum of a ``shuffled`` W_rand enters the MP fit, the traps and the KS test only
    through absolute values (rescaled to mean 1), so the Gram eigenvalues are used as they are.
    Rounding below 0 is set to 0 there (squared singular values are >= 0).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim < 2:
        raise ValueError(f"esd_batch needs matrices (..., out, in); got shape {weights.shape}")
    transposed = np.swapaxes(weights, -1, -2)
    gram = weights @ transposed if weights.shape[-2] <= weights.shape[-1] else transposed @ weights
    big = is_big_layer(weights.shape)
    evals = symmetric_eigenvalues(gram, big)
    del gram
    lambda_max = evals[..., -1:]
    near_cut = np.any(np.abs(evals - EVALS_THRESH) < GRAM_ABS_ERROR * lambda_max, axis=-1)
    if not big:
        unreliable = (evals[..., :1] < GRAM_MIN_RATIO * lambda_max)[..., 0] | near_cut
    elif shuffled:
        unreliable = np.zeros(evals.shape[:-1], dtype=bool)
        np.maximum(evals, 0.0, out=evals)
    else:
        smallest_fitted = np.min(np.where(evals > EVALS_THRESH, evals, np.inf), axis=-1)
        unreliable = (smallest_fitted < GRAM_MIN_RATIO * lambda_max[..., 0]) | near_cut
        np.maximum(evals, 0.0, out=evals)
    for index in np.ndindex(unreliable.shape):
        if unreliable[index]:
            sv = np.sort(scipy.linalg.svd(weights[index], compute_uv=False))
            evals[index] = sv * sv
    return evals


def singular_values_batch(weights: np.ndarray) -> np.ndarray:
    """Singular values (ascending) of each W in a stack ``(..., out, in)``, e.g. all checkpoints."""
    return np.sqrt(esd_batch(weights))


def num_random_replicas(weight_shape: Sequence[int]) -> int:
    """WeightWatcher's ``apply_random_esd``: 5 shuffles when the layer has fewer than 100 evals."""
    return FEW_COMPONENTS_REPLICAS if min(weight_shape) < FEW_COMPONENTS else 1


def shuffled_weights(weight: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """The element-shuffled replicas of W that WeightWatcher draws after ``np.random.seed(seed)``.

    Returns ``(replicas, out, in)`` (into ``out`` if given). Each replica shuffles a fresh copy of
    ``W.flatten()`` (row-major, torch's ``(out, in)`` layout), drawing in turn from one
    ``RandomState(seed)``; the global NumPy RNG is left untouched.
    """
    weight = np.asarray(weight, dtype=np.float64)
    shape = (num_random_replicas(weight.shape),) + weight.shape
    replicas = np.empty(shape) if out is None else out
    if replicas.shape != shape:
        raise ValueError(f"shuffled_weights: out has shape {replicas.shape}, expected {shape}")
    shuffled_slices(weight[None], seed, shape[0], out=replicas[:, None])
    return replicas


def shuffled_stack(weights: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
    """``shuffled_weights`` of each W of a stack ``(K, out, in)`` with its seed: ``(K, R, out, in)``."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(seeds) != len(weights):
        raise ValueError(f"shuffled_stack: {len(weights)} matrices but {len(seeds)} seeds")
    replicas = num_random_replicas(weights.shape[1:])
    shuffled = np.empty((len(weights), replicas) + weights.shape[1:])
    for weight, seed, out in zip(weights, seeds, shuffled):
        shuffled_weights(weight, int(seed), out=out)
    return shuffled


def random_esd_batch(weights: np.ndarray, seeds: Sequence[int], shuffled: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues of W_rand for each W of a stack ``(K, out, in)`` and its seed: ``(K, R * M)``.

    R replicas pooled and sorted, as WeightWatcher's ``random_eigenvalues``. ``shuffled``: the
    ``shuffled_stack(weights, seeds)`` if already made.
    """
    if shuffled is None:
        shuffled = shuffled_stack(weights, seeds)
    evals = esd_batch(shuffled, shuffled=True)  # (K, R, M)
    return np.sort(evals.reshape(len(shuffled), -1), axis=-1)


def kernel_replicas(shape: Sequence[int]) -> int:
    """WeightWatcher's replicas of a conv kernel's slices: 5 when its layer has ``M * rf < 100``
    (N, M, rf as ``antigrok.spectra.kernels.weightwatcher_dims``), else 1."""
    _, M, rf = weightwatcher_dims(shape)
    return FEW_COMPONENTS_REPLICAS if M * rf < FEW_COMPONENTS else 1


def shuffled_slices(slices: np.ndarray, seed: int, replicas: int, out: np.ndarray | None = None) -> np.ndarray:
    """The shuffled copies of a conv kernel's slices that WeightWatcher draws after ``np.random.seed(seed)``.

    ``slices`` ``(S, n, m)`` (``antigrok.spectra.kernels.kernel_slices``; one matrix: S = 1); returns
    ``(replicas, S, n, m)`` (into ``out`` if given, C-contiguous): replica after replica, slice after
    slice, each ``flatten()`` shuffled by one ``RandomState(seed)``.
    """
    slices = np.asarray(slices, dtype=np.float64)
    result = np.empty((replicas,) + slices.shape) if out is None else out
    rng = np.random.RandomState(seed)
    for replica in result:
        for source, target in zip(slices, replica):
            flat = target.reshape(-1)  # a view: shuffled in place
            flat[...] = source.reshape(-1)
            rng.shuffle(flat)
    return result


def _shuffled_draws(weight: np.ndarray, seed: int) -> np.ndarray:
    """WeightWatcher's shuffled draws of a matrix ``(R, out, in)`` or a kernel ``(R, S, n, m)``."""
    if weight.ndim in KERNEL_NDIMS:
        return shuffled_slices(kernel_slices(weight), seed, kernel_replicas(weight.shape))
    return shuffled_weights(weight, seed)


def centered_random_esd(weight: np.ndarray, seed: int) -> np.ndarray:
    """Eigenvalues of WeightWatcher's W_rand with its mean removed, replicas pooled and sorted.

    Shuffling keeps the entries' mean mu, so ``W_rand = mu 1 1^T + noise``: a rank-one spike of
    strength mu^2 N M that stands above the MP bulk once |mu| > sigma / (N M)^(1/4) and is counted
    as a Correlation Trap although it says nothing of correlations between rows and columns.
    Subtracting mu from the same shuffled draws (``shuffled_weights(weight, seed)``) removes that
    spike and leaves the bulk unchanged (antigrok.spectra.traps, ``num_traps_centered``). A conv kernel's
    slices are shuffled one by one, so each keeps its own mean: each is centred on its own.
    """
    replicas = _shuffled_draws(np.asarray(weight, dtype=np.float64), seed)
    replicas -= replicas.mean(axis=(-2, -1), keepdims=True)
    return np.sort(esd_batch(replicas, shuffled=True).reshape(-1))


# ---------------------------------------------------------------- power law (WW_powerlaw.WWFit)


@dataclass(frozen=True)
class PowerLawFit:
    """What WWFit reports: the selected xmin, the MLE alpha there, its KS distance D."""

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float


class FitFailed(Exception):
    """A fit WeightWatcher would report as failed (it catches the exception and sets alpha = -1)."""


def _wwfit_row(data: np.ndarray, log_data: np.ndarray, i: int) -> tuple[float, float]:
    """alpha and D of candidate xmin = data[i]: WWFit.fit_power_law's loop body, verbatim."""
    N = len(data)
    xmin = data[i]
    n = float(N - i)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # ties: alpha = inf, as WWFit
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        D = 1.0
        if alpha > 1:
            D = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    return alpha, D


@dataclass(frozen=True)
class _UpperTriangle:
    """The pairs (i, j), j >= i, of candidates i < N - 1 and eigenvalues j < N, packed row by row
    (row i holds j = i .. N-1 and starts at ``starts[i]``): half the pairs of the square."""

    rows: np.ndarray
    columns: np.ndarray
    starts: np.ndarray
    row_lengths: np.ndarray
    offsets32: np.ndarray  # j - i, float32


@functools.lru_cache(maxsize=8)
def _upper_triangle(N: int) -> _UpperTriangle:
    row_lengths = N - np.arange(max(N - 1, 0))
    starts = np.concatenate([[0], np.cumsum(row_lengths)[:-1]]).astype(np.intp)
    rows = np.repeat(np.arange(len(row_lengths)), row_lengths)
    columns = np.arange(len(rows)) - starts[rows] + rows
    table = _UpperTriangle(rows, columns, starts, row_lengths, (columns - rows).astype(np.float32))
    for array in (table.rows, table.columns, table.starts, table.row_lengths, table.offsets32):
        array.flags.writeable = False
    return table


class _PowerLawTable:
    """One sorted spectrum, fitted as WWFit does, for itself and for its clipped prefixes.

    WWFit computes, for every candidate xmin = data[i], the MLE alpha_i and the KS distance
    D_i = max_{j >= i} |1 - (data[j] / data[i]) ** (1 - alpha_i) - (j - i) / n_i|, and keeps the
    candidate of smallest D. Here all alpha_i are one array operation; all D_i are first screened in
    float32 (error below 1e-6, see SCREEN_MARGIN) over the packed pairs j >= i, then the candidates
    that can still be the minimum get WWFit's own scalar expressions (or float64 first, if many).
    A clipped refit is a fit of a prefix ``data[:L]``: its pairs are those with j < L of the
    first L - 1 rows.
    """

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data, dtype=np.float64)
        self.log_data = np.log(self.data, dtype=np.float64)
        self.pairs = _upper_triangle(len(self.data))
        # log(data[j] / data[i]) >= 0 (data is sorted), formed in float64: in float32 the log
        # ratio must carry a relative error only (see SCREEN_MARGIN)
        log_ratio = self.log_data[self.pairs.columns] - self.log_data[self.pairs.rows]
        self.log_ratio32 = log_ratio.astype(np.float32)

    def _alphas(self, L: int) -> tuple[np.ndarray, np.ndarray]:
        """n_i and the MLE alpha_i of every candidate i of ``data[:L]`` (inf/NaN where WWFit's are)."""
        log_data = self.log_data[:L]
        n = L - np.arange(L - 1, dtype=np.float64)
        tail_log_sums = np.cumsum(log_data[::-1])[::-1][:-1]  # sum(log_data[i:]) per candidate i
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return n, 1 + n / (tail_log_sums - n * log_data[:-1])

    def _screen(self, L: int, alphas: np.ndarray, n: np.ndarray) -> np.ndarray:
        """D of every candidate of ``data[:L]`` in float32 (NaN where alpha or float32 is not finite)."""
        pairs, count = self.pairs, self.pairs.starts[L - 2] + self.pairs.row_lengths[L - 2]
        lengths = pairs.row_lengths[:L - 1]
        exponent = np.repeat((1 - alphas).astype(np.float32), lengths)
        theory = np.exp(exponent * self.log_ratio32[:count])
        steps = np.repeat((1 / n).astype(np.float32), lengths) * pairs.offsets32[:count]  # (j - i) / n_i
        gaps = np.abs((1 - theory) - steps)
        if L < len(self.data):
            gaps[pairs.columns[:count] >= L] = 0  # eigenvalues clipped off this prefix
        return np.maximum.reduceat(gaps, pairs.starts[:L - 1])

    def _ks_distances(self, L: int, rows: np.ndarray, alphas: np.ndarray, n: np.ndarray) -> np.ndarray:
        """D of candidates ``rows`` of ``data[:L]`` in float64 (exp of log ratios)."""
        columns = np.arange(L)
        offsets = columns[None, :] - rows[:, None]
        upper = offsets >= 0
        log_ratio = np.where(upper, self.log_data[None, :L] - self.log_data[rows][:, None], 0.0)
        theory = np.exp((1 - alphas[rows])[:, None] * log_ratio)
        gaps = np.abs((1 - theory) - np.where(upper, offsets, 0) / n[rows][:, None])
        return np.max(gaps, axis=1)

    def fit(self, L: int, what: str = "") -> PowerLawFit:
        """``WWFit(data[:L])``: xmin by minimum KS distance D, MLE alpha. Raises FitFailed where it raises."""
        if L < 2:
            raise FitFailed(f"power-law fit{what} needs at least 2 eigenvalues above {EVALS_THRESH}, "
                            f"got {max(L, 0)}")
        data, log_data = self.data[:L], self.log_data[:L]
        n, alphas = self._alphas(L)
        Ds = np.ones(L - 1)  # WWFit's D where alpha <= 1
        exact_rows: dict[int, tuple] = {}  # candidate -> (alpha, D) by WWFit's own expressions
        regular_mask = np.isfinite(alphas) & (alphas > 1)
        all_regular = bool(regular_mask.all())
        regular = np.arange(L - 1) if all_regular else np.flatnonzero(regular_mask)
        vectorised = False
        if len(regular):
            with np.errstate(over="ignore", invalid="ignore"):
                screen = self._screen(L, alphas, n)[regular]
            finite = screen[np.isfinite(screen)]
            threshold = np.min(finite) + SCREEN_MARGIN if len(finite) else np.inf
            close = regular[~(screen > threshold)]  # NaN screens are kept too
            Ds[regular] = np.inf  # the others: D >= screen - error > a candidate's D
            if len(close) <= EXACT_CANDIDATES:
                for k in close.tolist():
                    exact_rows[k] = _wwfit_row(data, log_data, k)
                    Ds[k] = exact_rows[k][1]
            else:
                vectorised = True
                Ds[close] = self._ks_distances(L, close, alphas, n)

        if vectorised or not all_regular:
            # Rows whose vectorised value is not trustworthy, and near-ties with the minimum:
            # WeightWatcher's own scalar expressions decide, so rounding never moves xmin.
            exact = ~np.isfinite(alphas)
            D_min = np.min(Ds[~exact]) if np.any(~exact) else np.inf
            exact |= Ds <= D_min * (1 + D_TIE_RTOL)
            for k in np.flatnonzero(exact).tolist():
                if k not in exact_rows:
                    exact_rows[k] = _wwfit_row(data, log_data, k)
                Ds[k] = exact_rows[k][1]
        best = int(np.argmin(Ds))
        alpha, D = exact_rows[best] if best in exact_rows else _wwfit_row(data, log_data, best)
        sigma = (alpha - 1) / np.sqrt(L - best)
        return PowerLawFit(alpha=float(alpha), xmin=float(data[best]), xmax=float(data[-1]),
                           D=float(D), sigma=float(sigma))


def fit_power_law(data: np.ndarray) -> PowerLawFit:
    """``WW_powerlaw.WWFit(data)`` (xmin by minimum KS distance, MLE alpha), vectorised over xmin.

    ``data`` must be sorted ascending and positive. Raises FitFailed where WWFit raises.
    """
    return _PowerLawTable(data).fit(len(data))


def fit_clipped_power_law(data: np.ndarray) -> tuple[PowerLawFit, int, PowerLawFit]:
    """``RMT_Util.fit_clipped_powerlaw`` (fix_fingers='clip_xmax'): (best fit, num_fingers, raw fit).

    Refits with the top 2, 3, ... 9 eigenvalues clipped; stops at the first fit whose alpha is more
    than FINGER_THRESH below the raw fit's (that one is kept, num_fingers = clipped - 1) or at or
    below MIN_ALPHA (the raw fit is kept). WeightWatcher then refits 3 more clips as a check whose
    results it only logs; only whether one of them fails (too few eigenvalues left) changes the
    outcome, so they are computed only where that can happen.
    """
    table = _PowerLawTable(data)
    N = len(data)
    first = table.fit(N)
    best, num_fingers = first, 0
    fit = first
    for idx in range(2, MAX_FINGERS):
        fit = table.fit(N - idx, f" with the top {idx} clipped (fix_fingers=clip_xmax)")
        if (fit.alpha + FINGER_THRESH) < first.alpha:
            best, num_fingers = fit, idx - 1
            break
        if MIN_ALPHA is not None and fit.alpha <= MIN_ALPHA:
            break
    if N - (idx + 3) <= 1:  # some check fit would have too few eigenvalues
        for idy in range(idx + 1, idx + 4):
            check = table.fit(N - idy, f" with the top {idy} clipped (fix_fingers=clip_xmax check)")
            if np.abs(check.alpha - fit.alpha) > FINGER_THRESH:
                break
    return best, num_fingers, first


def power_law_columns(evals: np.ndarray, fix_fingers) -> dict:
    """alpha, raw_alpha, num_fingers, xmin, xmax, pl_ks_distance, num_pl_spikes, fit_status.

    A failed fit (WeightWatcher: alpha = -1, status 'failed') has NaN in all but fit_status.
    """
    nz_evals = evals[evals > EVALS_THRESH]
    try:
        if fix_fingers == "clip_xmax":
            fit, num_fingers, raw = fit_clipped_power_law(nz_evals)
        elif not fix_fingers:
            fit = raw = fit_power_law(nz_evals)
            num_fingers = 0
        else:
            raise ValueError(f"fix_fingers must be 'clip_xmax' or false, got {fix_fingers!r}")
        if np.isnan(fit.alpha):
            raise FitFailed("power-law fit gave alpha = NaN")
    except FitFailed as error:
        failed = dict.fromkeys(["alpha", "raw_alpha", "num_fingers", "xmin", "xmax", "pl_ks_distance",
                                "num_pl_spikes"], math.nan)
        return {**failed, "fit_status": f"failed: {error}"}
    return {
        "alpha": fit.alpha, "raw_alpha": raw.alpha, "num_fingers": int(num_fingers),
        "xmin": fit.xmin, "xmax": fit.xmax, "pl_ks_distance": fit.D,
        "num_pl_spikes": int(np.count_nonzero(evals >= fit.xmin)), "fit_status": "ok",
    }


# ---------------------------------------------------------------- Marchenko-Pastur fit (mp_fit)


def linear_kernel_density(samples: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(KernelDensity(kernel='linear', bandwidth).fit(samples).score_samples(points))`` in 1-D.

    sklearn's linear kernel is ``1 - |u| / h`` for ``|u| < h``, normalised by ``1 / (n h)`` in one
    dimension. Each sample adds its kernel to the points within one bandwidth (a contiguous run of
    the sorted points), summed with one ``bincount``; sklearn's tree sums the same terms in log
    space, so the two agree to rounding (~1e-15 relative).
    """
    samples = np.asarray(samples, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    lo = np.searchsorted(points, samples - bandwidth, side="right")  # first point with u > -h
    hi = np.searchsorted(points, samples + bandwidth, side="left")  # first point with u >= h
    width = int(np.max(hi - lo)) if len(samples) else 0
    if width <= 0:
        return np.zeros(len(points))
    index = lo[:, None] + np.arange(width)[None, :]
    inside = index < hi[:, None]
    index = np.where(inside, index, 0)
    kernel = np.where(inside, 1 - np.abs(points[index] - samples[:, None]) / bandwidth, 0.0)
    return np.bincount(index.ravel(), weights=kernel.ravel(), minlength=len(points)) / (len(samples) * bandwidth)


class MPResidual:
    """``RMT_Util.resid_mp(sigma, to_fit, Q, bw, allresid=False)`` with the density computed once.

    ``grid`` evaluates a whole array of sigmas as one array operation (brute's grid); ``scalar`` one
    sigma (fmin's polish). Both follow resid_mp's expressions in its order. Call under
    ``np.errstate(all="ignore")``: the MP density is NaN outside its support, set to 0 as resid_mp does.
    """

    def __init__(self, to_fit: np.ndarray, Q: float):
        self.Q = Q
        xde = np.linspace(0, np.max(to_fit) + KDE_PAD, KDE_POINTS)
        yde = linear_kernel_density(to_fit, xde, KDE_BANDWIDTH)
        good = yde > DENSITY_FLOOR  # resid_mp drops the points below (they add residual 0)
        self.xde = xde[good]
        self.yde = yde[good]
        if len(self.yde) == 0:
            raise FitFailed("MP fit: the kernel density of the shuffled spectrum is below "
                            f"{DENSITY_FLOOR} everywhere")
        self.peak_x = self.xde[np.argmax(self.yde)]  # the first point of maximal density
        self.max_x = self.xde[-1]
        self.penalty = float(len(self.yde)) * PENALTY ** 2  # sum of squares of the constant residual
        self.sqrt_inv_q = float(np.sqrt(1 / Q))
        self.y = 1 / Q
        self.xde_list = self.xde.tolist()
        self.yde_squares_cumsum = np.concatenate([[0.0], np.cumsum(self.yde * self.yde)])
        if Q == 1:
            with np.errstate(invalid="ignore"):  # 0 beyond the quarter circle's support, as resid_mp
                self.qc_shape = np.nan_to_num(np.sqrt(4 - self.xde ** 2))
            self.qc_sums = (np.dot(self.qc_shape, self.qc_shape), np.dot(self.qc_shape, self.yde),
                            np.dot(self.yde, self.yde))

    def _outside(self, b, a):
        """resid_mp's test: the MP support misses the density's peak or exceeds its range."""
        return (b < self.peak_x) | (b > self.max_x) | (a > self.peak_x)

    def grid(self, sigmas: np.ndarray) -> np.ndarray:
        """Sum of squared residuals for every sigma of ``sigmas``."""
        sigma = np.asarray(sigmas, dtype=np.float64).reshape(-1, 1)
        x = self.xde
        if self.Q == 1:
            # sum((c q - y)^2) = c^2 sum(q^2) - 2 c sum(q y) + sum(y^2), c = 1 / (pi sigma^2): the
            # same numbers to ~1e-13 relative, far below the differences between grid points
            c = (1 / (np.pi * sigma * sigma))[:, 0]
            return c * c * self.qc_sums[0] - 2 * c * self.qc_sums[1] + self.qc_sums[2]
        b = np.power(sigma * (1 + self.sqrt_inv_q), 2)
        a = np.power(sigma * (1 - self.sqrt_inv_q), 2)
        inside = ~self._outside(b, a)[:, 0]
        result = np.full(len(sigma), self.penalty)
        if np.any(inside):
            sigma, a, b = sigma[inside], a[inside], b[inside]
            ymp = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * self.y))
                                * np.sqrt((b - x) * (x - a)), copy=False)
            result[inside] = np.sum((ymp - self.yde) ** 2, axis=1)
        return result

    def scalar(self, sigma: float) -> float:
        """The residual of one sigma (fmin's calls), on plain floats where resid_mp has scalars: only
        the MP support [a, b] is evaluated, where resid_mp's density is not NaN (set to 0);
        outside it the residual is the KDE itself."""
        sigma = float(sigma)
        if self.Q == 1:
            resid = (1 / (math.pi * sigma * sigma)) * self.qc_shape - self.yde
            return float(np.dot(resid, resid))
        b = (sigma * (1 + self.sqrt_inv_q)) ** 2  # np.power(., 2) and pow(., 2): both correctly rounded
        a = (sigma * (1 - self.sqrt_inv_q)) ** 2
        if self._outside(b, a):
            return self.penalty
        lo, hi = bisect.bisect_left(self.xde_list, a), bisect.bisect_right(self.xde_list, b)
        x = self.xde[lo:hi]
        ymp = (1 / (2 * math.pi * sigma * sigma * x * self.y)) * np.sqrt((b - x) * (x - a))
        resid = ymp - self.yde[lo:hi]
        outside = self.yde_squares_cumsum[lo] + (self.yde_squares_cumsum[-1] - self.yde_squares_cumsum[hi])
        return float(np.dot(resid, resid) + outside)


class _TooManyCalls(Exception):
    pass


def nelder_mead_1d(func, x0: float, xatol: float = 1e-4, fatol: float = 1e-4, maxfun: int = 200,
                   maxiter: int = 200) -> float:
    """``scipy.optimize.fmin(func, x0, full_output=1, disp=0)[0][0]`` for one variable, step for step.

    scipy's ``_minimize_neldermead`` with N = 1 (rho 1, chi 2, psi 0.5, sigma 0.5, initial step
    5%, its stopping rules and call limit) on plain floats: the same points, the same comparisons,
    without the per-iteration array overhead. Tested against scipy.
    """

    calls = 0

    def f(x: float) -> float:
        nonlocal calls
        if calls >= maxfun:
            raise _TooManyCalls
        calls += 1
        return float(func(x))

    def ordered(sim, fsim):  # np.argsort of two values: stable, NaN last
        if fsim[1] < fsim[0] or (math.isnan(fsim[0]) and not math.isnan(fsim[1])):
            return [sim[1], sim[0]], [fsim[1], fsim[0]]
        return sim, fsim

    x0 = float(x0)
    sim = [x0, (1 + 0.05) * x0 if x0 != 0 else 0.00025]
    fsim = [math.inf, math.inf]
    try:
        for k in range(2):
            fsim[k] = f(sim[k])
    except _TooManyCalls:
        pass
    sim, fsim = ordered(sim, fsim)
    iterations = 1
    while calls < maxfun and iterations < maxiter:
        try:
            if abs(sim[1] - sim[0]) <= xatol and abs(fsim[0] - fsim[1]) <= fatol:
                break
            xbar = sim[0]
            xr = 2 * xbar - sim[1]
            fxr = f(xr)
            if fxr < fsim[0]:
                xe = 3 * xbar - 2 * sim[1]
                fxe = f(xe)
                if fxe < fxr:
                    sim[1], fsim[1] = xe, fxe
                else:
                    sim[1], fsim[1] = xr, fxr
            else:  # (scipy's "elif fxr < fsim[-2]" is the branch above for one variable: fsim[-2] is fsim[0])
                shrink = False
                if fxr < fsim[1]:
                    xc = 1.5 * xbar - 0.5 * sim[1]
                    fxc = f(xc)
                    if fxc <= fxr:
                        sim[1], fsim[1] = xc, fxc
                    else:
                        shrink = True
                else:
                    xcc = 0.5 * xbar + 0.5 * sim[1]
                    fxcc = f(xcc)
                    if fxcc < fsim[1]:
                        sim[1], fsim[1] = xcc, fxcc
                    else:
                        shrink = True
                if shrink:
                    sim[1] = sim[0] + 0.5 * (sim[1] - sim[0])
                    fsim[1] = f(sim[1])
            iterations += 1
        except _TooManyCalls:
            pass
        sim, fsim = ordered(sim, fsim)
    return sim[0]


def marchenko_pastur_fit(rand_evals: np.ndarray, N: int, M: int) -> dict:
    """``WeightWatcher.mp_fit`` of the shuffled spectrum: sigma, bulk edge, Tracy-Widom cutoff, spikes.

    N >= M are the larger and smaller dimension of W. Returns rand_sigma_mp (rescaled units),
    rand_lambda_plus, rand_tw_term, rand_tw_cutoff (units of rand_evals) and ww_num_traps.
    """
    Q = N / M
    if not np.sum(rand_evals) > 0:  # an all-zero W: nothing to rescale (WeightWatcher's fit fails too)
        raise FitFailed(f"MP fit: the shuffled spectrum sums to {np.sum(rand_evals)}, not a positive number")
    to_plot, Wscale = rescale_like_weightwatcher(rand_evals)

    # fit_density_with_range: brute over the grid, first minimum, then fmin
    lmax = np.max(to_plot)
    sigma_scale = np.sqrt(lmax / np.square(1 + 1.0 / np.sqrt(Q)))
    start, stop, step = (f * sigma_scale for f in SIGMA_GRID)
    grid = np.mgrid[slice(start, stop, step)]
    to_fit = np.sqrt(to_plot) if Q == 1 else to_plot
    with np.errstate(all="ignore"):
        residual = MPResidual(to_fit, Q)
        on_grid = residual.grid(grid)
        s1 = np.float64(nelder_mead_1d(residual.scalar, grid[np.argmin(on_grid)]))

    bulk_max = mp_bulk_edge(Q, s1)
    tw = tracy_widom_term(bulk_max, Q, M)
    num_spikes = len(to_plot[to_plot > bulk_max + tw])
    scale2 = Wscale * Wscale
    lambda_plus, tw_term = float(bulk_max / scale2), float(tw / scale2)
    return {
        "rand_sigma_mp": float(s1),
        "rand_lambda_plus": lambda_plus,  # WeightWatcher's rand_bulk_max
        "rand_tw_term": tw_term,
        "rand_tw_cutoff": lambda_plus + tw_term,
        "ww_num_traps": int(num_spikes),  # counted in the rescaled units, as WeightWatcher does
    }


# ---------------------------------------------------------------- one layer, many checkpoints


def _finite(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


def layer_columns(evals: np.ndarray, rand_evals: np.ndarray, shape: Sequence[int], fix_fingers,
                  dims: tuple[int, int] | None = None) -> dict:
    """The htsr.csv columns of one layer (``antigrok.htsr.LAYER_KEYS``) from its two spectra.

    ``shape``: the matrix's; ``dims``: WeightWatcher's (N, M) where they are not (max, min) of it
    (a conv kernel's, ``antigrok.spectra.kernels.weightwatcher_dims``).
    """
    N, M = (int(max(shape)), int(min(shape))) if dims is None else (int(dims[0]), int(dims[1]))
    row = {"rows": N, "cols": M, "num_evals": int(len(evals))}
    row.update(power_law_columns(evals, fix_fingers))

    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero W: NaN, as the WW engine
        norm = np.sum(evals)
        spectral_norm = np.max(evals)
        row["log_norm"] = _finite(np.log10(norm))
        row["log_spectral_norm"] = _finite(np.log10(spectral_norm))
        row["alpha_weighted"] = row["alpha"] * row["log_spectral_norm"]
        row["stable_rank"] = _finite(norm / spectral_norm)

    row["max_rand_eval"] = float(np.max(rand_evals))
    try:
        mp = marchenko_pastur_fit(rand_evals, N, M)
    except FitFailed as error:  # the known degenerate spectra; any other error is a bug and raises
        log.warning("MP fit of the shuffled spectrum of a %s weight failed: %s", tuple(shape), error)
        mp = dict.fromkeys(["rand_sigma_mp", "rand_lambda_plus", "rand_tw_term", "rand_tw_cutoff",
                            "ww_num_traps"], math.nan)
    row.update(mp)
    row["mp_ks_stat"], row["mp_ks_pvalue"] = mp_ks_test(rand_evals, N, M, mp["rand_sigma_mp"])
    row["evals"] = evals
    row["rand_evals"] = rand_evals
    return row


def analyze_layer_series(weights: np.ndarray, *, seeds: Sequence[int], fix_fingers) -> list[dict]:
    """``analyze_layer_fast`` for one layer at many checkpoints, ``weights`` stacked ``(K, out, in)``.

    The eigen-decompositions of all K matrices and of their shuffled copies run as two batched calls.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 3:
        raise ValueError(f"analyze_layer_series needs a stack (checkpoints, out, in); got {weights.shape}")
    with blas_threads_for(weights.shape[1:]):
        if is_big_layer(weights.shape[1:]):
            # The shuffle is serial (WeightWatcher's draws, in order) and numpy runs it without the
            # GIL: on a big layer it runs in a thread of its own while W's Gram matrix is decomposed.
            with ThreadPoolExecutor(max_workers=1) as pool:
                shuffling = pool.submit(shuffled_stack, weights, seeds)
                evals = esd_batch(weights)
                rand_evals = random_esd_batch(weights, seeds, shuffled=shuffling.result())
        else:
            evals = esd_batch(weights)
            rand_evals = random_esd_batch(weights, seeds)
        return [layer_columns(e, r, weights.shape[1:], fix_fingers) for e, r in zip(evals, rand_evals)]


def analyze_kernel_fast(kernel: np.ndarray, *, seed: int, fix_fingers) -> dict:
    """WeightWatcher 0.7.5.5's analysis of one conv kernel (Conv2d ``(out, in, kh, kw)``, or Conv1d
    ``(out, in, k)`` as ``(out, in, k, 1)``): its scaled slices decomposed and shuffled one by one,
    their eigenvalues pooled (``antigrok.spectra.kernels``)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    N, M, _ = weightwatcher_dims(kernel.shape)
    slices = kernel_slices(kernel)
    with blas_threads_for(slices.shape[1:]):
        evals = np.sort(esd_batch(slices).reshape(-1))
        shuffled = shuffled_slices(slices, seed, kernel_replicas(kernel.shape))
        rand_evals = np.sort(esd_batch(shuffled, shuffled=True).reshape(-1))
        return layer_columns(evals, rand_evals, kernel.shape, fix_fingers, dims=(N, M))


def analyze_layer_fast(weight: np.ndarray, *, seed: int, fix_fingers) -> dict:
    """WeightWatcher 0.7.5.5's analysis of one layer (``analyze(randomize=True, fix_fingers=...)``
    after ``np.random.seed(seed)``), computed by the fast engine. ``weight``: (out, in), as torch,
    or a conv kernel (``analyze_kernel_fast``)."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim in KERNEL_NDIMS:
        return analyze_kernel_fast(weight, seed=seed, fix_fingers=fix_fingers)
    if weight.ndim != 2:
        raise ValueError(f"analyze_layer_fast needs a 2-D weight matrix (out, in) or a conv kernel; "
                         f"got shape {weight.shape}")
    return analyze_layer_series(weight[None], seeds=[seed], fix_fingers=fix_fingers)[0]
