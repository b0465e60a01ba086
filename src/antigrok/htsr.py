"""HTSR spectral analysis of weight matrices: alpha, the randomized ESD and its MP fit.

One layer at a time, through WeightWatcher 0.7.5.5 (the version the paper used), called as
the authors call it: ``analyze(randomize=True, fix_fingers='clip_xmax')`` (``mp_fit``,
``vectors`` and ``detX`` change none of the columns kept here, so they are left off). The
quantities below are what that call computes, read from its source; an independent engine
(``htsr.engine: fast``, ``antigrok.spectra.fast_engine``) must reproduce them.

Notation: ``W`` is the weight as torch stores it, shape (out, in), float64. WeightWatcher
writes ``N = max(W.shape)``, ``M = min(W.shape)``, ``Q = N / M >= 1``. Columns ``rows`` and
``cols`` of htsr.csv are this N and M (not ``W.shape``).

Eigenvalues (``evals``)
    ``sv = scipy.linalg.svd(W, compute_uv=False)``; ``evals = sort(sv**2)`` (ascending, M
    values). These are the eigenvalues of ``W^T W``: WeightWatcher's default
    ``normalize=False`` does NOT divide by N (the paper's Eq. 1 writes X = W^T W / N; alpha,
    traps and sigma_mp do not depend on that factor, but xmin, xmax, log_norm,
    log_spectral_norm and max_rand_eval are in these unnormalized units).

Power-law fit (``fix_fingers='clip_xmax'``; WW_powerlaw.WWFit and RMT_Util.fit_clipped_powerlaw)
    Only ``evals > 1e-5`` enter the fit. ``WWFit(data)``: data sorted; for every candidate
    xmin = data[i] (all but the largest) the continuous MLE
    ``alpha_i = 1 + n_i / (sum(log data[i:]) - n_i log data[i])`` with ``n_i = len(data) - i``
    and the KS distance ``D_i = max |1 - (data[i:]/xmin)^(1-alpha_i) - arange(n_i)/n_i|``
    (D_i = 1 where alpha_i <= 1); the fit is the i with the smallest D_i; ``xmax = max(data)``.
    clip_xmax: ``first = WWFit(evals)``; for ``idx = 2..9`` fit ``WWFit(evals[:-idx])``;
    the first clipped fit with ``alpha + 1.0 < first.alpha`` is taken (``num_fingers = idx - 1``);
    the loop stops without a clipped fit as soon as a fit has ``alpha <= 2.0``, or after idx 9.
    ``raw_alpha = first.alpha``. Any exception inside fails the whole fit: a layer with few
    eigenvalues (the 200x10 output layer: 10) often fails, because the loop reaches a fit of one
    eigenvalue ("attempt to get argmin of an empty sequence"). ``num_pl_spikes = #(evals >= xmin)`` (all evals),
    ``pl_ks_distance = D``. With ``fix_fingers=false`` the plain ``WWFit`` is used and here
    ``raw_alpha = alpha``, ``num_fingers = 0``. A failed fit (WeightWatcher: alpha = -1) is
    stored as NaN in alpha, raw_alpha, xmin, xmax, pl_ks_distance, num_pl_spikes,
    alpha_weighted with ``fit_status = "failed: <reason>"``.

Norm metrics
    ``log_norm = log10(sum(evals))`` (squared Frobenius norm), ``log_spectral_norm =
    log10(max(evals))``, ``alpha_weighted = alpha * log_spectral_norm``,
    ``stable_rank = sum(evals) / max(evals)``.

Randomized ESD (``rand_evals``; weightwatcher.random_eigenvalues)
    The global NumPy RNG is seeded by us with ``layer_seed(run seed, step, layer)`` right
    before ``analyze`` (nothing before the shuffle draws from it). Per replica:
    ``w = W.flatten()`` (C order of the (out, in) array), ``np.random.shuffle(w)``,
    ``W_rand = w.reshape(W.shape)``, ``sv = svd(W_rand)``, eigenvalues ``sv**2``.
    ``num_replicas = 5`` when M < 100 (e.g. the 200x10 output layer: 50 values), else 1;
    replicas are drawn one after another from the same RNG stream and their eigenvalues
    pooled and sorted ascending. That pooled array is ``rand_evals`` (stored in spectra.npz)
    and ``max_rand_eval = max(rand_evals)``. (WeightWatcher then shuffles once more for its
    ``rand_distance`` column, unused here.)

MP fit of the randomized ESD (weightwatcher.mp_fit, RMT_Util.fit_density_with_range)
    Rescale: ``Wscale = sqrt(len(rand_evals)) / sqrt(sum(rand_evals))``,
    ``x = Wscale**2 * rand_evals`` (mean 1). Fit sigma by ``scipy.optimize.brute`` over
    ``slice(0.05 s0, 2.0 s0, 0.01 s0)`` with ``s0 = sqrt(max(x) / (1 + Q^-1/2)^2)`` (and the
    default ``finish=fmin``) of ``resid_mp``: sum of squared residuals between a linear-kernel
    KDE of x (sklearn KernelDensity, bandwidth 0.1, on ``linspace(0, max(x) + 0.5, 1000)``,
    keeping grid points with density > 0.01) and the MP density of Q, sigma (residual 1000
    where the MP edge lambda_+ lies below the KDE peak or beyond the grid, or lambda_- above
    the peak). For Q == 1 it fits ``sqrt(x)`` to the quarter-circle law instead.
    ``rand_sigma_mp = sigma`` (in the rescaled units, so ~1 for a random matrix; the paper's
    sigma_mp). Bulk edge (rescaled) ``lp = (sigma (1 + Q^-1/2))^2``; Tracy-Widom
    ``TW = Q^-1/2 lp^(2/3) M^(-2/3)``; cut-off ``lp + sqrt(TW)``; WeightWatcher's trap count
    ``rand_num_spikes = #(x > lp + sqrt(TW))`` -> column ``ww_num_traps``.
    Columns in eigenvalue units (like ``rand_evals``): ``rand_lambda_plus = lp / Wscale^2``
    (WeightWatcher's ``rand_bulk_max``), ``rand_tw_term = sqrt(TW) / Wscale^2``,
    ``rand_tw_cutoff = rand_lambda_plus + rand_tw_term``. antigrok.spectra.traps recounts traps from
    ``rand_evals``, ``rand_sigma_mp``, ``rows``, ``cols`` with these exact operations.

MP KS test (Appendix D; not in WeightWatcher)
    One-sample KS test (``scipy.stats.kstest``) of the rescaled ``x`` against the closed-form
    MP CDF (``mp_cdf``) of aspect ratio Q and ``rand_sigma_mp``: ``mp_ks_stat``,
    ``mp_ks_pvalue``. Same units as the fit, so sigma is WeightWatcher's.

WeightWatcher prints at import and installs a root logging handler and an "ignore all"
warnings filter; ``import_weightwatcher()`` (antigrok.spectra.ww_engine, the WeightWatcher engine
and its size limits) imports it lazily and undoes both. Its own log
records are captured per call (they give the reason of a failed fit). The global NumPy RNG
state of the caller is restored after every layer. Not thread-safe (global RNG, stdout):
parallelism is across processes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically
from antigrok.formats.loading import read_checkpoint, to_float64
from antigrok.runs import checkpoint_files, refuse_held_elsewhere
from antigrok.spectra.fast_engine import analyze_layer_fast, centered_random_esd
from antigrok.spectra.primitives import CENTERED_RAND_EVALS, layer_name, layer_seed, save_spectra, spectrum_key
from antigrok.spectra.traps import compute_traps
from antigrok.spectra.ww_engine import (
    MIN_EVALS,
    check_weight,
    import_weightwatcher,
    analyze_layer_ww,
    unanalyzable_reason,
)

# The fast engine gives WeightWatcher's numbers (tests/test_fastspectra.py), >100x faster.
DEFAULT_ENGINE = "fast"
log = logging.getLogger(__name__)

ENGINES = ("weightwatcher", "fast")

# The columns of htsr.csv, in order (defined in docs/results.md, "htsr.csv").
HTSR_COLUMNS = [
    "step", "layer", "rows", "cols", "num_evals", "alpha", "raw_alpha", "num_fingers", "xmin", "xmax",
    "pl_ks_distance", "num_pl_spikes", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank",
    "fit_status", "rand_sigma_mp", "rand_lambda_plus", "rand_tw_term", "rand_tw_cutoff", "max_rand_eval",
    "mp_ks_stat", "mp_ks_pvalue", "ww_num_traps", "analysis_seconds",
]
# What analyze_layer returns, whichever engine: the per-layer columns and the two spectra.
LAYER_KEYS = [c for c in HTSR_COLUMNS if c not in ("step", "layer", "analysis_seconds")] + ["evals", "rand_evals"]


# Columns where WeightWatcher's convention writes -1 for "failed / not computed".
_FAILURE_CODED_KEYS = [key for key in LAYER_KEYS if key not in ("rows", "cols", "num_evals", "fit_status", "evals",
                                                                "rand_evals", "log_norm", "log_spectral_norm")]


def _without_minus_one(result: dict) -> dict:
    """An engine's result with -1 (failed) as NaN: never a -1 in any output."""
    result = dict(result)
    for key in _FAILURE_CODED_KEYS:
        value = result[key]
        if value is None or (isinstance(value, (int, float, np.number)) and (value == -1 or not np.isfinite(value))):
            result[key] = math.nan
    return result


def analyze_layer(weight: np.ndarray, *, seed: int, fix_fingers="clip_xmax", engine: str = DEFAULT_ENGINE) -> dict:
    """HTSR metrics of one weight matrix (out, in), float64: every htsr.csv column but
    step, layer and analysis_seconds, plus the arrays ``evals`` and ``rand_evals``.

    ``engine``: ``weightwatcher`` (the reference) or ``fast`` (antigrok.spectra.fast_engine, which
    must return the same). ``seed`` seeds the randomization (see ``layer_seed``).
    """
    if fix_fingers not in ("clip_xmax", False, None):
        raise ValueError(f"fix_fingers must be 'clip_xmax' or false, got {fix_fingers!r}")
    fix_fingers = fix_fingers or False
    if engine == "weightwatcher":
        return analyze_layer_ww(weight, seed=seed, fix_fingers=fix_fingers)
    if engine == "fast":
        result = analyze_layer_fast(check_weight(weight), seed=seed, fix_fingers=fix_fingers)
        missing = [key for key in LAYER_KEYS if key not in result]
        if missing:
            raise RuntimeError(f"htsr engine 'fast' returned no {missing}; it must return {LAYER_KEYS}")
        return _without_minus_one(result)
    raise ValueError(f"unknown htsr.engine {engine!r}; known: {', '.join(ENGINES)}")


# ----------------------------------------------------------------------------- state dicts


def weight_skip_reason(name: str, shape: Sequence[int], floating: bool = True, dtype: str = "") -> str:
    """Why a tensor of a state_dict or model file is not analysed ("" if it is), from its name, shape
    and dtype alone: the one rule of analyze_state_dict, the monitor and ``antigrok analyze``.

    Analysed: 2-D floating matrices (Linear, Embedding, LSTM, attention, ...) and conv kernels
    (antigrok.spectra.kernels: 4-D, and 3-D tensors named ``*.weight`` as nn.Conv1d names them; other 3-D
    tensors, e.g. stacked expert matrices, are not kernels), within WeightWatcher's size limits.
    """
    shape = tuple(int(n) for n in shape)
    if not floating:
        return f"not floating point ({dtype})" if dtype else "not floating point"
    if len(shape) < 2:
        return f"{len(shape)}-D tensor (bias, norm, ...): not a weight matrix"
    if len(shape) == 3 and not str(name).endswith(".weight"):
        return ("3-D tensor not named *.weight: not taken for a Conv1d kernel (stacked matrices, e.g. "
                "experts?); only 2-D matrices and Conv1d / Conv2d kernels are analysed")
    if len(shape) > 4:
        return (f"{len(shape)}-D tensor (a Conv3d kernel?): only 2-D matrices and Conv1d / Conv2d kernels are "
                "analysed (WeightWatcher skips it too)")
    reason = unanalyzable_reason(shape)
    return f"shape {'x'.join(map(str, shape))} {reason}" if reason else ""


def weight_matrices(state_dict: Mapping) -> dict[str, np.ndarray]:
    """The analysable weights of a state_dict as float64 arrays, by layer name (``fc1.weight`` -> ``fc1``).

    2-D matrices (embeddings included) and conv kernels (3-D / 4-D, antigrok.spectra.kernels), chosen by
    ``weight_skip_reason``; the others are skipped, those of 2 or more dimensions with a log line
    that says why. (The name is from before conv kernels were analysed.)
    """
    matrices = {}
    for key, value in state_dict.items():
        shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
        reason = _state_dict_skip_reason(key, value)
        if reason:
            if len(shape) >= 2:
                log.info("skipping %s: %s", key, reason)
            continue
        # to_float64 reads every float dtype (bfloat16 has no NumPy type); the copy keeps the
        # matrices from changing when training goes on (the monitor's snapshots).
        matrices[layer_name(key)] = to_float64(value).copy()
    return matrices


def _is_floating(value) -> bool:
    if hasattr(value, "is_floating_point"):
        return bool(value.is_floating_point())
    return bool(np.issubdtype(np.asarray(value).dtype, np.floating))


def _dtype_name(value) -> str:
    return str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.")


def skipped_summary(reasons: Mapping[str, str], names_shown: int = 3) -> str:
    """``2 tensors skipped: 1 not floating point (int8): w; 1 1-D tensor (...): b``: what was
    skipped and why, from tensor name -> reason, for messages that must say what was found."""
    if not reasons:
        return "no tensors"
    by_reason: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        by_reason.setdefault(reason, []).append(str(name))
    parts = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:names_shown]) + (", ..." if len(names) > names_shown else "")
        parts.append(f"{len(names)} {reason}: {shown}")
    count = len(reasons)
    return f"{count} tensor{'s' if count != 1 else ''} skipped: " + "; ".join(parts)


def state_dict_skip_reasons(state_dict: Mapping) -> dict[str, str]:
    """tensor name -> why it is not analysed, for the skipped tensors of a state_dict."""
    reasons = {str(key): _state_dict_skip_reason(key, value) for key, value in state_dict.items()}
    return {key: reason for key, reason in reasons.items() if reason}


def _state_dict_skip_reason(key, value) -> str:
    shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
    return weight_skip_reason(str(key), shape, _is_floating(value), _dtype_name(value))


def analyze_weights(matrices: Mapping[str, np.ndarray], *, run_seed: int, step: int, fix_fingers="clip_xmax",
                    engine: str = DEFAULT_ENGINE) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Rows of htsr.csv (one per matrix) and the spectra.npz arrays of one checkpoint."""
    rows, arrays = [], {}
    for layer, weight in matrices.items():
        start = time.perf_counter()
        try:
            result = analyze_layer(weight, seed=layer_seed(run_seed, step, layer), fix_fingers=fix_fingers,
                                   engine=engine)
        except Exception as error:  # keeps its type (callers catch ValueError), says which layer
            if hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"while analysing layer {layer!r} (shape {tuple(np.shape(weight))}) at step {step}")
            raise
        seconds = time.perf_counter() - start
        arrays[spectrum_key("evals", layer, step)] = np.sort(np.asarray(result["evals"], dtype=np.float64))
        arrays[spectrum_key("rand_evals", layer, step)] = np.sort(np.asarray(result["rand_evals"], dtype=np.float64))
        arrays[spectrum_key(CENTERED_RAND_EVALS, layer, step)] = centered_random_esd(
            weight, layer_seed(run_seed, step, layer))
        row = {key: result[key] for key in LAYER_KEYS if key not in ("evals", "rand_evals")}
        rows.append({"step": step, "layer": layer, **row, "analysis_seconds": seconds})
    return rows, arrays


INTEGER_COLUMNS = ["step", "rows", "cols", "num_evals", "num_fingers", "num_pl_spikes", "ww_num_traps"]


def htsr_table(rows: list[dict]) -> pd.DataFrame:
    """htsr.csv rows as a DataFrame: its columns in order, counts as integers (missing if failed)."""
    table = pd.DataFrame(rows, columns=HTSR_COLUMNS)
    for column in INTEGER_COLUMNS:
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    return table


def analyze_with_traps(matrices: Mapping[str, np.ndarray], *, run_seed: int, step: int, fix_fingers="clip_xmax",
                       engine: str = DEFAULT_ENGINE, tracy_widom_scale: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The htsr.csv table of ``matrices`` at (run seed, step), as the ``spectra`` rule computes
    it, and their traps.csv rows, counted as the ``traps`` rule counts them: the one analysis that
    analyze_state_dict, the monitor and ``antigrok analyze`` share."""
    rows, arrays = analyze_weights(matrices, run_seed=run_seed, step=step, fix_fingers=fix_fingers, engine=engine)
    table = htsr_table(rows)
    return table, compute_traps(table, arrays, tracy_widom_scale)


def analyze_state_dict(state_dict: Mapping, seed: int = 0, fix_fingers="clip_xmax", engine: str = DEFAULT_ENGINE,
                       step: int = 0) -> pd.DataFrame:
    """HTSR metrics of a model's weights, no data needed: one row per analysable weight matrix or conv
    kernel (``weight_skip_reason``; a kernel as WeightWatcher pools it, antigrok.spectra.kernels).

    Columns: htsr.csv's, plus ``num_traps`` (Correlation Traps at Tracy-Widom scale 1.0) and
    ``num_traps_centered`` (the same with the mean-shift outlier removed, antigrok.spectra.traps).
    ``seed`` and ``step`` pick the randomization as the workflow does for (run seed, step),
    so a checkpoint analyzed here gives the row of its run's htsr.csv.
    """
    matrices = weight_matrices(state_dict)
    if not matrices:
        raise ValueError(f"nothing to analyse in the state_dict: {skipped_summary(state_dict_skip_reasons(state_dict))}")
    table, traps = analyze_with_traps(matrices, run_seed=seed, step=step, fix_fingers=fix_fingers, engine=engine)
    table["num_traps"] = traps["num_traps"].to_numpy()
    table["num_traps_centered"] = traps["num_traps_centered"].to_numpy()
    return table


# ----------------------------------------------------------------------------- checkpoints


def checkpoints_to_analyze(checkpoints: str | Path | Iterable) -> list[Path]:
    """The ``step*.pt`` files of a checkpoint folder (by step), or the given list of files."""
    if isinstance(checkpoints, (str, Path)) and Path(checkpoints).is_dir():
        refuse_held_elsewhere(checkpoints)
        files = list(checkpoint_files(checkpoints, (".pt",)).values())
        if not files:
            raise FileNotFoundError(f"{checkpoints}: no step*.pt checkpoint files in this folder")
        return files
    if isinstance(checkpoints, (str, Path)):
        return [Path(checkpoints)]
    return [Path(path) for path in checkpoints]


def analyze_checkpoint(path: str | Path, run_seed: int | None = None, fix_fingers="clip_xmax",
                       engine: str = DEFAULT_ENGINE) -> tuple[list[dict], dict[str, np.ndarray], float]:
    """htsr rows, spectra arrays and seconds taken for one checkpoint file.

    ``run_seed`` None: the checkpoint's own ``seed`` (0 if it has none).
    """
    checkpoint = read_checkpoint(path)
    step = checkpoint.get("step")
    step = 0 if step is None else int(step)
    if run_seed is None:
        run_seed = int(checkpoint.get("seed", 0) or 0)
    matrices = weight_matrices(checkpoint["model"])
    if not matrices:
        raise ValueError(f"{path}: holds no 2-D weight matrix with at least {MIN_EVALS} rows and columns")
    start = time.perf_counter()
    rows, arrays = analyze_weights(matrices, run_seed=run_seed, step=step, fix_fingers=fix_fingers, engine=engine)
    return rows, arrays, time.perf_counter() - start


def _limit_worker_threads() -> None:
    """One BLAS / torch thread per process: the parallelism is the processes themselves."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # threadpoolctl comes with scikit-learn (a WeightWatcher dependency)
        pass
    import torch

    torch.set_num_threads(1)


def analyze_checkpoints(checkpoints, run_seed: int | None = None, fix_fingers="clip_xmax",
                        engine: str = DEFAULT_ENGINE, threads: int = 1,
                        progress: bool = True) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every checkpoint of a folder (or list): the htsr.csv table and the spectra.npz arrays.

    ``threads`` > 1 analyzes that many checkpoints at once in worker processes. Results do
    not depend on ``threads`` (every layer has its own seed). The log gets one line per checkpoint.
    """
    from tqdm import tqdm

    files = checkpoints_to_analyze(checkpoints)
    all_rows, all_arrays = [], {}

    def collect(path, rows, arrays, seconds):
        all_rows.extend(rows)
        all_arrays.update(arrays)
        step = rows[0]["step"] if rows else "?"
        log.info("analyzed %s (step %s): %d layers in %.2f s", Path(path).name, step, len(rows), seconds)

    bar = tqdm(total=len(files), desc="htsr", unit="checkpoint", disable=not progress, mininterval=2.0)
    if threads <= 1 or len(files) <= 1:
        for path in files:
            collect(path, *analyze_checkpoint(path, run_seed, fix_fingers, engine))
            bar.update(1)
    else:
        import multiprocessing

        if engine == "weightwatcher":
            import_weightwatcher()  # imported once here (~4 s), inherited by the forked workers
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(max_workers=min(threads, len(files)), mp_context=context,
                                 initializer=_limit_worker_threads) as pool:
            futures = {pool.submit(analyze_checkpoint, path, run_seed, fix_fingers, engine): path for path in files}
            for future in as_completed(futures):
                collect(futures[future], *future.result())
                bar.update(1)
    bar.close()
    table = htsr_table(all_rows)
    layer_order = {layer: index for index, layer in enumerate(dict.fromkeys(table["layer"]))}
    table = table.sort_values(["step", "layer"], key=lambda c: c.map(layer_order) if c.name == "layer" else c,
                              kind="stable").reset_index(drop=True)
    return table, all_arrays


def write_spectra(checkpoint_dir: str | Path, htsr_csv: str | Path, spectra_npz: str | Path, run_seed: int,
                  fix_fingers="clip_xmax", engine: str = DEFAULT_ENGINE, threads: int = 1) -> pd.DataFrame:
    """The rule ``spectra``: analyze a run's checkpoints, write htsr.csv and spectra.npz."""
    start = time.perf_counter()
    table, arrays = analyze_checkpoints(checkpoint_dir, run_seed=run_seed, fix_fingers=fix_fingers,
                                        engine=engine, threads=threads)
    save_spectra(arrays, spectra_npz)
    write_csv_atomically(table, htsr_csv)
    failed = table[table["fit_status"] != "ok"]
    if len(failed):
        log.warning("%d of %d power-law fits failed (alpha stored as NaN): %s", len(failed), len(table),
                    ", ".join(f"step {r.step} {r.layer}" for r in failed.itertuples()))
    log.info("spectra of %d checkpoints x %d layers (engine %s, %d threads) in %.1f s",
             table["step"].nunique(), table["layer"].nunique(), engine, threads, time.perf_counter() - start)
    return table
