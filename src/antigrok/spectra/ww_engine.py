"""The WeightWatcher 0.7.5.5 engine of antigrok.htsr: one layer through WeightWatcher itself, called
as the paper's authors call it, and WeightWatcher's size limits (which matrices it analyzes).
antigrok.htsr documents the quantities and chooses the engine; antigrok.spectra.fast_engine is the other.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import warnings

import numpy as np
import pandas as pd

from antigrok.spectra.kernels import KERNEL_NDIMS, weightwatcher_dims, weightwatcher_kernel
from antigrok.spectra.primitives import mp_ks_test, tracy_widom_cutoff

log = logging.getLogger(__name__)

# WeightWatcher skips matrices outside these sizes (its min_evals, max_evals, max_N defaults).
MIN_EVALS = 10
MAX_EVALS = 15000
MAX_N = 50000
_WW_MODULE = None
# WeightWatcher's messages that say a fit failed but not why.
_GENERIC_FAILURE_MESSAGES = {"power law fit failed", "power law fit failed, will still attempt plots"}


def import_weightwatcher():
    """The weightwatcher module, imported once without touching logging, warnings or stdout.

    At import it calls ``logging.basicConfig`` (a root handler), ``warnings.simplefilter
    ("ignore")`` and logs to stderr; all of that is undone or captured here.
    """
    global _WW_MODULE
    if _WW_MODULE is not None:
        return _WW_MODULE
    ww_logger = logging.getLogger("weightwatcher")
    ww_logger.propagate = False  # its records never reach the root logger (job logs stay clean)
    if not any(isinstance(h, logging.NullHandler) for h in ww_logger.handlers):
        ww_logger.addHandler(logging.NullHandler())  # and never Python's last-resort stderr handler
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    mpl_logger = logging.getLogger("matplotlib")
    mpl_level = mpl_logger.level
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            import weightwatcher
    finally:
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        mpl_logger.setLevel(mpl_level)
    if weightwatcher.__version__ != "0.7.5.5":
        log.warning("weightwatcher %s is installed; the paper and these numbers use 0.7.5.5",
                    weightwatcher.__version__)
    log.debug("imported weightwatcher %s; its import output: %r", weightwatcher.__version__, sink.getvalue())
    _WW_MODULE = weightwatcher
    return weightwatcher


class _RecordHandler(logging.Handler):
    """Keeps WeightWatcher's warnings of one call (the reason a fit failed)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@functools.lru_cache(maxsize=1)
def _recording_watcher_class(weightwatcher):
    """A WeightWatcher that keeps the eigenvalues and randomized eigenvalues it computes.

    analyze() does not return them; recording them is exact where recomputing is not.
    """

    class RecordingWatcher(weightwatcher.WeightWatcher):
        recorded: dict = {}

        def apply_esd(self, ww_layer, params=None):
            result = super().apply_esd(ww_layer, params)
            self.recorded["evals"] = np.array(ww_layer.evals, dtype=np.float64)
            return result

        def apply_random_esd(self, ww_layer, params=None):
            result = super().apply_random_esd(ww_layer, params)
            self.recorded["rand_evals"] = np.array(ww_layer.rand_evals, dtype=np.float64)
            return result

    return RecordingWatcher


def unanalyzable_reason(shape) -> str:
    """Why WeightWatcher would skip a matrix or conv kernel of this shape ("" if it analyzes it).

    Its limits (``analyze(pool=True)``) are on the pooled eigenvalues ``M * rf`` and on ``N``, with
    N, M, rf as its layer has them (antigrok.spectra.kernels.weightwatcher_dims; rf = 1 for a matrix).
    """
    N, M, rf = weightwatcher_dims(shape)
    evals = M * rf
    counted = "" if rf == 1 else f" ({M} per kernel position x {rf} positions = {evals})"
    if evals < MIN_EVALS:
        return f"has fewer than {MIN_EVALS} eigenvalues{counted}; WeightWatcher does not analyze it"
    if evals > MAX_EVALS or N > MAX_N:
        return (f"is larger than WeightWatcher analyzes (at most {MAX_EVALS} eigenvalues{counted or ''}, "
                f"largest dimension at most {MAX_N})")
    return ""


_unanalyzable = unanalyzable_reason  # its name before it was public


def check_weight(weight) -> np.ndarray:
    """A matrix (out, in) or conv kernel (out, in, k[, k2]) as float64, or ValueError saying why not."""
    weight = np.asarray(weight)
    if weight.ndim not in (2, *KERNEL_NDIMS):
        raise ValueError(f"expected a 2-D weight matrix or a 3-D / 4-D conv kernel, got shape {weight.shape}")
    reason = unanalyzable_reason(weight.shape)
    if reason:
        raise ValueError(f"weight of shape {weight.shape} {reason}")
    weight = weight.astype(np.float64, copy=False)
    if not np.all(np.isfinite(weight)):
        raise ValueError(f"weight of shape {weight.shape} has NaN or infinite entries")
    return weight


def _finite_or_nan(value) -> float:
    """WeightWatcher's -1 (not computed / failed) and non-finite values as NaN."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) and value != -1 else math.nan


def analyze_layer_ww(weight: np.ndarray, *, seed: int, fix_fingers="clip_xmax") -> dict:
    """One layer through WeightWatcher 0.7.5.5 with the global NumPy RNG seeded by ``seed``.

    ``weight`` (out, in) as torch stores it, or a conv kernel (antigrok.spectra.kernels: a Conv1d's
    ``(out, in, k)`` is given as the Conv2d kernel ``(out, in, k, 1)``). Returns the keys of ``LAYER_KEYS``.
    """
    weight = check_weight(weight)
    watcher_class = _recording_watcher_class(import_weightwatcher())
    ww_logger = logging.getLogger("weightwatcher")
    recorder = _RecordHandler()
    ww_logger.addHandler(recorder)
    rng_state = np.random.get_state()
    stdout = io.StringIO()
    try:
        np.random.seed(seed)
        stored = weight if weight.ndim == 2 else weightwatcher_kernel(weight)  # a 4-D weight: its Conv2d path
        watcher = watcher_class(model={"W.weight": stored})
        watcher.recorded = {}
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
            warnings.simplefilter("ignore")  # log10(0) and friends on degenerate spectra: NaN follows
            details = watcher.analyze(randomize=True, fix_fingers=fix_fingers or False, plot=False,
                                      savefig=False)
    finally:
        np.random.set_state(rng_state)
        ww_logger.removeHandler(recorder)
    if stdout.getvalue():
        log.debug("weightwatcher printed: %s", stdout.getvalue().strip())
    if len(details) != 1:
        raise RuntimeError(f"WeightWatcher analyzed {len(details)} layers of a {weight.shape} matrix, expected 1")
    row = details.iloc[0]
    return _layer_result(row, watcher.recorded, fix_fingers, recorder.messages)


def _layer_result(row: pd.Series, recorded: dict, fix_fingers, messages: list[str]) -> dict:
    N, M = int(row["N"]), int(row["M"])
    alpha = _finite_or_nan(row.get("alpha"))
    fit_ok = row.get("status") == "success" and math.isfinite(alpha)
    if fit_ok:
        fit_status = "ok"
    else:
        reasons = [m for m in messages if m.lower() not in _GENERIC_FAILURE_MESSAGES]
        reason = "; ".join(dict.fromkeys(reasons)) or "no reason given"
        fit_status = f"failed: WeightWatcher's power-law fit failed ({reason})"

    def fit_value(key):
        return _finite_or_nan(row.get(key)) if fit_ok else math.nan

    evals = recorded["evals"]
    rand_evals = recorded.get("rand_evals", np.array([]))
    sigma = _finite_or_nan(row.get("rand_sigma_mp"))
    if math.isfinite(sigma) and len(rand_evals):
        cut = tracy_widom_cutoff(rand_evals, rows=N, cols=M, sigma=sigma)
        tw_term, lambda_plus = cut["tw_term"], _finite_or_nan(row.get("rand_bulk_max"))
        ww_traps = int(row["rand_num_spikes"])
    else:
        log.warning("MP fit of the randomized ESD failed (%s); its columns are NaN", "; ".join(messages) or "no reason given")
        tw_term = lambda_plus = math.nan
        ww_traps = math.nan
    ks_stat, ks_pvalue = mp_ks_test(rand_evals, N, M, sigma)
    clipped = fix_fingers == "clip_xmax"
    return {
        "rows": N,
        "cols": M,
        "num_evals": int(row["num_evals"]),
        "alpha": alpha if fit_ok else math.nan,
        "raw_alpha": fit_value("raw_alpha") if clipped else (alpha if fit_ok else math.nan),
        "num_fingers": int(row["num_fingers"]) if clipped and fit_ok else (0 if fit_ok else math.nan),
        "xmin": fit_value("xmin"),
        "xmax": fit_value("xmax"),
        "pl_ks_distance": fit_value("D"),
        "num_pl_spikes": int(row["num_pl_spikes"]) if fit_ok else math.nan,
        "alpha_weighted": fit_value("alpha_weighted"),
        "log_norm": _finite_or_nan(row.get("log_norm")),
        "log_spectral_norm": _finite_or_nan(row.get("log_spectral_norm")),
        "stable_rank": _finite_or_nan(row.get("stable_rank")),
        "fit_status": fit_status,
        "rand_sigma_mp": sigma,
        "rand_lambda_plus": lambda_plus,
        "rand_tw_term": tw_term,
        "rand_tw_cutoff": lambda_plus + tw_term,
        "max_rand_eval": _finite_or_nan(row.get("max_rand_eval")),
        "mp_ks_stat": ks_stat,
        "mp_ks_pvalue": ks_pvalue,
        "ww_num_traps": ww_traps,
        "evals": evals,
        "rand_evals": rand_evals,
    }
