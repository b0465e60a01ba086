"""Correlation Traps (paper Sec. 3.2, 4.2): eigenvalues of the element-shuffled W_rand that lie
beyond the Marchenko-Pastur bulk edge by more than the Tracy-Widom fluctuations.

A trap is a randomized eigenvalue ``lambda > lambda_+ + s * sqrt(TW)``, with ``lambda_+`` the
bulk edge of the MP fit of W_rand's ESD, ``TW`` WeightWatcher's Tracy-Widom term and ``s`` the
config key ``traps.tracy_widom_scale``. Counted from the stored spectra (spectra.npz) and fits
(htsr.csv), no SVD, with WeightWatcher's own operations (antigrok.spectra.primitives.tracy_widom_cutoff), so
``s = 1.0`` gives exactly WeightWatcher's count (htsr.csv ``ww_num_traps``).

Why shuffling finds anything: shuffling the entries of W destroys every correlation between
rows and columns except what the entry distribution itself carries. A rank-one structure
``c u v^T`` with a non-zero mean (e.g. u, v of one sign) leaves its mean in every entry, and a
matrix of i.i.d. entries with mean mu has one eigenvalue near ``mu^2 N M`` above the bulk; so do
a few very large entries. A zero-mean structure (random signs) turns into noise and is no trap.

The mean itself is such a structure: shuffling keeps the entries' mean mu, so W_rand = mu 1 1^T +
noise has a rank-one outlier at about s + sigma^2 (N + M) + sigma^4 N M / s, s = mu^2 N M (the BBP
location), whenever |mu| > sigma / (N M)^(1/4) (0.008 for the paper's fc1). WeightWatcher 0.7.5.5
does not centre, so its count includes that outlier. ``num_traps_centered`` counts the eigenvalues
of the same shuffled draws with mu subtracted (spectra.npz ``rand_evals_centered``) above the same
threshold (the bulk, and so the MP fit, is the mean's to leave alone): the traps that are not the
mean.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically
from antigrok.spectra.primitives import CENTERED_RAND_EVALS, load_spectra, read_htsr, spectrum_key, tracy_widom_cutoff

log = logging.getLogger(__name__)

TRAPS_COLUMNS = [
    "step", "layer", "tracy_widom_scale", "rand_lambda_plus", "trap_threshold", "num_traps",
    "trap_eigenvalues", "max_rand_eval", "num_traps_centered", "max_rand_eval_centered",
]


def count_traps(rand_evals: np.ndarray, *, rows: int, cols: int, sigma: float, tracy_widom_scale: float = 1.0) -> dict:
    """The traps of one randomized ESD: threshold, count and the trap eigenvalues (descending).

    ``rows``/``cols`` are N >= M of the layer, ``sigma`` its ``rand_sigma_mp``. A failed MP fit
    (sigma NaN) gives a missing count, not 0.
    """
    if tracy_widom_scale < 0:
        raise ValueError(f"traps.tracy_widom_scale must be >= 0, got {tracy_widom_scale}")
    rand_evals = np.asarray(rand_evals, dtype=np.float64)
    max_rand_eval = float(np.max(rand_evals)) if len(rand_evals) else math.nan
    if not (np.isfinite(sigma) and sigma > 0) or len(rand_evals) == 0:
        return {"rand_lambda_plus": math.nan, "trap_threshold": math.nan, "num_traps": pd.NA,
                "trap_eigenvalues": np.array([]), "max_rand_eval": max_rand_eval}
    cut = tracy_widom_cutoff(rand_evals, rows=rows, cols=cols, sigma=sigma, tracy_widom_scale=tracy_widom_scale)
    is_trap = cut["rescaled"] > cut["rescaled_cutoff"]  # compared where WeightWatcher compares
    return {
        "rand_lambda_plus": cut["lambda_plus"],
        "trap_threshold": cut["lambda_plus"] + tracy_widom_scale * cut["tw_term"],
        "num_traps": int(np.count_nonzero(is_trap)),
        "trap_eigenvalues": np.sort(rand_evals[is_trap])[::-1],
        "max_rand_eval": max_rand_eval,
    }


def count_above(evals: np.ndarray, threshold: float):
    """How many of ``evals`` lie above ``threshold``; missing (pd.NA) where the threshold is NaN."""
    return int(np.count_nonzero(np.asarray(evals) > threshold)) if np.isfinite(threshold) else pd.NA


def centered_count(spectra: Mapping[str, np.ndarray], row, trap_threshold: float) -> dict:
    """``num_traps_centered`` and ``max_rand_eval_centered`` of one htsr.csv row.

    The centred eigenvalues are compared with the WeightWatcher-equal ``trap_threshold`` directly:
    the mean moves one eigenvalue, not the bulk edge. spectra.npz files written before the centred
    spectrum existed have no such key: the rule then asks for the spectra to be recomputed.
    """
    key = spectrum_key(CENTERED_RAND_EVALS, row.layer, row.step)
    if key not in spectra:
        raise KeyError(f"spectra has no {key!r} (written before the mean-shift-removed trap count existed); "
                       "rerun the spectra rule, e.g. snakemake --forcerun spectra")
    evals = spectra[key]
    return {"num_traps_centered": count_above(evals, trap_threshold),
            "max_rand_eval_centered": float(np.max(evals)) if len(evals) else math.nan}


def format_eigenvalues(values: np.ndarray) -> str:
    """``"1234.5;87.25"``: ';'-joined, 10 significant digits (full precision is in spectra.npz)."""
    return ";".join(f"{value:.10g}" for value in values)


def compute_traps(htsr: pd.DataFrame, spectra: Mapping[str, np.ndarray], tracy_widom_scale: float) -> pd.DataFrame:
    """traps.csv of one run from its htsr.csv table and spectra.npz arrays."""
    records = []
    for row in htsr.itertuples(index=False):
        key = spectrum_key("rand_evals", row.layer, row.step)
        if key not in spectra:
            raise KeyError(f"spectra has no {key!r} for the htsr.csv row (step {row.step}, layer {row.layer}); "
                           "rerun the spectra rule so both files come from the same analysis")
        traps = count_traps(spectra[key], rows=row.rows, cols=row.cols, sigma=row.rand_sigma_mp,
                            tracy_widom_scale=tracy_widom_scale)
        centered = centered_count(spectra, row, traps["trap_threshold"])
        records.append({
            "step": row.step,
            "layer": row.layer,
            "tracy_widom_scale": tracy_widom_scale,
            "rand_lambda_plus": traps["rand_lambda_plus"],
            "trap_threshold": traps["trap_threshold"],
            "num_traps": traps["num_traps"],
            "trap_eigenvalues": format_eigenvalues(traps["trap_eigenvalues"]),
            "max_rand_eval": traps["max_rand_eval"],
            **centered,
        })
    table = pd.DataFrame(records, columns=TRAPS_COLUMNS)
    for column in ("num_traps", "num_traps_centered"):
        table[column] = table[column].astype("Int64")  # missing where the MP fit failed
    return table


def write_traps(htsr_csv: str | Path, spectra_npz: str | Path, traps_csv: str | Path,
                tracy_widom_scale: float = 1.0) -> pd.DataFrame:
    """The rule ``traps``: traps.csv from a run's htsr.csv and spectra.npz."""
    htsr = read_htsr(htsr_csv)
    table = compute_traps(htsr, load_spectra(spectra_npz), tracy_widom_scale)
    if tracy_widom_scale == 1.0:
        # Scale 1 is WeightWatcher's own count: a difference means the files disagree.
        differs = table["num_traps"].astype("Float64").to_numpy(na_value=np.nan) != htsr["ww_num_traps"].to_numpy(dtype=float)
        both = np.isfinite(htsr["ww_num_traps"].to_numpy(dtype=float))
        if np.any(differs & both):
            log.warning("trap counts at scale 1.0 differ from WeightWatcher's in %d rows", int(np.sum(differs & both)))
    write_csv_atomically(table, traps_csv)
    with_traps = table[table["num_traps"].fillna(0) > 0]
    log.info("traps at Tracy-Widom scale %g: %d of %d (step, layer) rows have traps, %d traps in all",
             tracy_widom_scale, len(with_traps), len(table), int(table["num_traps"].fillna(0).sum()))
    return table
