"""The spectral primitives that both HTSR engines (antigrok.htsr's WeightWatcher engine and
antigrok.spectra.fast_engine) and antigrok.spectra.traps share: one definition each, imported by all three.

- ``layer_seed``: the NumPy seed of one layer's randomization at one checkpoint.
- The Marchenko-Pastur law of aspect ratio ``Q = N/M >= 1`` and scale ``sigma`` (paper Eq. 3):
  ``mp_edges``, ``mp_bulk_edge`` (and its inverse ``mp_sigma_of_edge``), ``mp_cdf``.
- WeightWatcher's rescaling of an ESD to mean 1 (``rescale_like_weightwatcher``), its
  Tracy-Widom term (``tracy_widom_term``) and trap threshold (``tracy_widom_cutoff``).
- ``mp_ks_test``: the KS test of a randomized ESD against its fitted MP law (Appendix D).
- The files that hold them: ``spectrum_key``, ``save_spectra``, ``load_spectra`` (spectra.npz)
  and ``read_htsr`` (htsr.csv, floats bit-exact).
- ``mean_alpha``: the alpha of some layers averaged per step (Table 1's "average alpha", the
  alarms' and the figures'), NaN where any of them has no finite alpha.

The expressions are WeightWatcher 0.7.5.5's operations, in its order, so that results computed
from them match its own bit for bit; of antigrok this module imports only antigrok.files.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from antigrok.files import write_atomically


def layer_seed(run_seed: int, step: int, layer: str) -> int:
    """The NumPy seed (0 <= seed < 2**32) of one layer's randomization at one checkpoint."""
    digest = hashlib.sha256(f"antigrok.htsr:{int(run_seed)}:{int(step)}:{layer}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def mp_bulk_edge(Q: float, sigma: float) -> float:
    """lambda_plus = (sigma (1 + Q^-1/2))^2, as WeightWatcher's mp_fit computes it."""
    return (sigma * (1 + 1 / np.sqrt(Q))) ** 2


def mp_sigma_of_edge(lambda_plus: float, Q: float) -> float:
    """The sigma whose MP law of aspect ratio ``Q`` has its bulk edge at ``lambda_plus``."""
    return math.sqrt(lambda_plus) / (1 + 1 / math.sqrt(Q))


def mp_edges(Q: float, sigma: float) -> tuple[float, float]:
    """The MP bulk edges (lambda_minus, lambda_plus) = sigma^2 (1 -+ Q^-1/2)^2 (paper Eq. 3)."""
    return float((sigma * (1 - 1 / np.sqrt(Q))) ** 2), float(mp_bulk_edge(Q, sigma))


def mp_cdf(x, Q: float, sigma: float = 1.0) -> np.ndarray:
    """CDF of the Marchenko-Pastur law of aspect ratio ``Q = N/M >= 1`` and scale ``sigma``.

    The density is paper Eq. 3 (WeightWatcher's ``marchenko_pastur_pdf``). Closed form: with
    ``y = 1/Q``, ``lambda = sigma^2 (1 + y - 2 sqrt(y) cos(theta))``,
    ``F = (2/pi) [sin(theta)/(2 sqrt y) + (1+y) theta/(4y)
    - (1-y)/(2y) arctan(sqrt(lambda_+/lambda_-) tan(theta/2))]`` (last term 0 at Q = 1).
    """
    if Q < 1:
        raise ValueError(f"mp_cdf needs Q = N/M >= 1 (N the larger dimension), got Q={Q}")
    if not sigma > 0:
        raise ValueError(f"mp_cdf needs sigma > 0, got {sigma}")
    y = 1.0 / Q
    lam = np.asarray(x, dtype=np.float64) / sigma**2
    middle, half_width = 1.0 + y, 2.0 * math.sqrt(y)
    theta = np.arccos(np.clip((middle - lam) / half_width, -1.0, 1.0))
    value = np.sin(theta) / (2 * math.sqrt(y)) + (1 + y) * theta / (4 * y)
    if y < 1.0:
        edge_ratio = (1 + math.sqrt(y)) / (1 - math.sqrt(y))
        value = value - (1 - y) / (2 * y) * np.arctan(edge_ratio * np.tan(theta / 2))
    return np.clip(2.0 / math.pi * value, 0.0, 1.0)


def rescale_like_weightwatcher(evals: np.ndarray) -> tuple[np.ndarray, float]:
    """``(Wscale**2 * evals, Wscale)`` with ``Wscale = sqrt(n) / sqrt(sum(evals))`` (mean 1).

    The exact operations of WeightWatcher's mp_fit, so counts made on the result match its own.
    """
    evals = np.asarray(evals, dtype=np.float64)
    w_scale = np.sqrt(evals.shape[0]) / np.sqrt(np.sum(evals))
    return (w_scale * w_scale) * evals, w_scale


def tracy_widom_term(bulk_max: float, Q: float, M: int) -> float:
    """WeightWatcher's Tracy-Widom fluctuation above the bulk edge ``bulk_max``: sqrt(TW),
    ``TW = Q^-1/2 bulk_max^(2/3) M^(-2/3)`` (units of the rescaled ESD)."""
    return np.sqrt(1 / np.sqrt(Q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3))


def tracy_widom_cutoff(rand_evals: np.ndarray, *, rows: int, cols: int, sigma: float,
                       tracy_widom_scale: float = 1.0) -> dict:
    """The trap threshold of one randomized ESD, computed as WeightWatcher's mp_fit does.

    ``rows``/``cols`` are N >= M. Returns the rescaled eigenvalues and threshold (where the
    count is made, as in WeightWatcher) and the edge, TW term and threshold in eigenvalue units.
    """
    N, M = int(rows), int(cols)
    Q = N / M
    rescaled, w_scale = rescale_like_weightwatcher(rand_evals)
    bulk_max = mp_bulk_edge(Q, sigma)
    tw = tracy_widom_term(bulk_max, Q, M)
    cutoff = bulk_max + tracy_widom_scale * tw
    unit = w_scale * w_scale
    return {
        "rescaled": rescaled,
        "rescaled_cutoff": cutoff,
        "lambda_plus": float(bulk_max / unit),
        "tw_term": float(tw / unit),
        "cutoff": float(cutoff / unit),
    }


def mp_ks_test(rand_evals: np.ndarray, rows: int, cols: int, sigma) -> tuple[float, float]:
    """KS statistic and p-value of the randomized ESD against its fitted MP law (Appendix D).

    ``rows``/``cols``: N >= M of the layer (Q = N/M). ``sigma``: ``rand_sigma_mp`` (WeightWatcher's
    rescaled units), or a mapping holding it under that key. The eigenvalues are rescaled to mean
    1 exactly as WeightWatcher's MP fit does, so the law tested is the one it fitted. The statistic
    and exact p-value are scipy.stats.kstest's (tested against it), without its per-call machinery.
    """
    from scipy import stats  # scipy.stats takes ~0.5 s to import; most callers of this module never test

    if isinstance(sigma, Mapping):
        sigma = sigma["rand_sigma_mp"]
    sigma = float(sigma)
    rand_evals = np.asarray(rand_evals, dtype=np.float64)
    if not (math.isfinite(sigma) and sigma > 0) or len(rand_evals) == 0:
        return math.nan, math.nan
    if int(rows) < int(cols):  # WeightWatcher's N < M of some conv kernels (antigrok.spectra.kernels): no MP law
        return math.nan, math.nan
    x = np.sort(rescale_like_weightwatcher(rand_evals)[0])
    n = len(x)
    cdf = mp_cdf(x, int(rows) / int(cols), sigma)
    d_plus = np.max(np.arange(1.0, n + 1) / n - cdf)  # scipy.stats._stats_py._compute_d
    d_minus = np.max(cdf - np.arange(0.0, n) / n)
    statistic = d_plus if d_plus > d_minus else d_minus
    return float(statistic), float(np.clip(stats.kstwo.sf(statistic, n), 0.0, 1.0))


# ----------------------------------------------------------------------------- spectra.npz, htsr.csv


# spectra.npz kind of W_rand's eigenvalues with the entries' mean removed (fastspectra.centered_random_esd)
CENTERED_RAND_EVALS = "rand_evals_centered"


def layer_name(tensor_name: str) -> str:
    """``fc1.weight`` -> ``fc1``: a weight's layer as htsr.csv and spectra.npz name it."""
    return tensor_name.removesuffix(".weight")


def spectrum_key(kind: str, layer: str, step: int) -> str:
    """Key of one spectrum in spectra.npz: ``evals/fc1/000001000`` or ``rand_evals/fc1/...``."""
    return f"{kind}/{layer}/{int(step):09d}"


def save_spectra(arrays: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write spectra.npz (compressed), atomically."""
    def write(partial: Path) -> None:
        with open(partial, "wb") as stream:  # a stream: savez would append .npz to a bare name
            np.savez_compressed(stream, **{key: arrays[key] for key in sorted(arrays)})

    write_atomically(path, write)


def load_spectra(path: str | Path) -> dict[str, np.ndarray]:
    """spectra.npz as a dict ``{"evals/fc1/000001000": array, ...}``."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def read_htsr(path: str | Path) -> pd.DataFrame:
    """htsr.csv with floats read back bit-exactly (trap counts are recomputed from them)."""
    if int(pd.__version__.split(".")[0]) >= 3:
        return pd.read_csv(path)  # round-trip exact by default; the option is deprecated
    return pd.read_csv(path, float_precision="round_trip")


def mean_alpha(htsr: pd.DataFrame, layers: list[str], name: str = "average_layers") -> pd.Series:
    """Per step (the index) the mean alpha of ``layers``; NaN whenever any of them has no finite
    alpha at that step, so the average is always over the same layers.

    ``htsr``: one run's rows (step, layer, alpha), e.g. htsr.csv or a monitor's history; ``name``
    names the layer list in errors.
    """
    layers = list(layers)
    unknown = set(layers) - set(htsr["layer"])
    if unknown and not htsr.empty:
        raise ValueError(
            f"{name} names layers {sorted(unknown)} that the spectra do not have (they have {sorted(htsr['layer'].unique())})"
        )
    selected = htsr[htsr["layer"].isin(layers)].set_index(["step", "layer"])["alpha"]
    if not selected.index.is_unique:
        raise ValueError("htsr rows have more than one alpha for some (step, layer): pass one run at a time")
    wide = selected.unstack("layer").reindex(columns=layers)
    return wide.mean(axis=1, skipna=False).rename("alpha").sort_index()
