"""The fast spectral engine (antigrok.spectra.fast_engine) against WeightWatcher 0.7.5.5 itself: each
step (shuffle, eigenvalues, power-law fit, clipped refits, kernel density, MP residual, fmin
polish) and whole layers (known-answer matrices, real MNIST checkpoints)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import yaml
from scipy import optimize

from antigrok import htsr
from antigrok.spectra import fast_engine as fs
from antigrok.spectra import primitives as spectral
from antigrok.spectra.ww_engine import import_weightwatcher

REPO = Path(__file__).resolve().parents[1]
# Issue 9: alpha, xmin, num_pl_spikes within 1e-9 relative, rand_sigma_mp within 1e-6, same traps.
REL_FIT = 1e-9
REL_MP = 1e-6


@pytest.fixture(scope="module")
def ww():
    """weightwatcher, imported without its side effects (see antigrok.htsr)."""
    return import_weightwatcher()


def rng(seed=0):
    return np.random.default_rng(seed)


def power_law_matrix(alpha: float, rows=150, cols=75, seed=0) -> np.ndarray:
    """Eigenvalues of W^T W at the quantiles of a Pareto density lambda^-alpha, random vectors."""
    generator = rng(seed)
    evals = (1 - (np.arange(cols) + 0.5) / cols) ** (-1 / (alpha - 1))
    left, _ = np.linalg.qr(generator.standard_normal((rows, cols)))
    right, _ = np.linalg.qr(generator.standard_normal((cols, cols)))
    return (left * np.sqrt(evals)) @ right.T


def spectra_for_fits() -> list[np.ndarray]:
    """Sorted positive spectra of many shapes: MP bulks, Pareto tails, ties, a few values."""
    generator = rng(1)
    spectra = [np.sort(fs.esd_batch(generator.standard_normal((m, 2 * m)))) for m in (3, 10, 40, 120)]
    spectra += [np.sort(generator.pareto(a, size=n) + 1) for a, n in ((0.8, 30), (1.5, 200), (3.0, 90))]
    spectra += [np.sort(1 + 1e-3 * generator.random(150)), np.sort(1 + 0.05 * generator.pareto(2.0, 120))]  # steep
    spectra += [np.array([1.0, 1.0, 1.0, 2.0, 2.0, 5.0]), np.array([0.5, 3.0])]
    return spectra


def assert_rel(a, b, rel, what):
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        assert math.isnan(a) and math.isnan(b), f"{what}: {a} vs {b}"
    else:
        assert abs(a - b) <= rel * max(abs(a), abs(b)), f"{what}: {a} vs {b} (rel {abs(a - b) / abs(b):.1e})"


def assert_same_layer(fast: dict, reference: dict):
    """A fast-engine result against the WeightWatcher engine's for the same matrix and seed."""
    assert fast["fit_status"].startswith("failed") == reference["fit_status"].startswith("failed")
    for key in ("rows", "cols", "num_evals", "num_pl_spikes", "num_fingers", "ww_num_traps"):
        assert_rel(fast[key], reference[key], 0, key)
    for key in ("alpha", "raw_alpha", "xmin", "xmax", "pl_ks_distance", "alpha_weighted", "log_norm",
                "log_spectral_norm", "stable_rank", "max_rand_eval"):
        assert_rel(fast[key], reference[key], REL_FIT, key)
    for key in ("rand_sigma_mp", "rand_lambda_plus", "rand_tw_term", "rand_tw_cutoff", "mp_ks_stat",
                "mp_ks_pvalue"):
        assert_rel(fast[key], reference[key], REL_MP, key)
    for key in ("evals", "rand_evals"):  # the same shuffled matrices: the same spectra
        assert fast[key].shape == reference[key].shape
        np.testing.assert_allclose(fast[key], reference[key], rtol=1e-9, atol=1e-12 * reference[key].max())


# --------------------------------------------------------------------------- eigenvalues and W_rand


@pytest.mark.parametrize("shape", [(30, 80), (80, 30), (10, 40)])
def test_shuffle_draws_what_weightwatcher_draws_from_the_seeded_global_rng(shape):
    weight = rng(2).standard_normal(shape)
    state = np.random.get_state()
    replicas = fs.shuffled_weights(weight, seed=1234)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))  # global RNG untouched
    np.random.seed(1234)
    expected = []
    for _ in range(5 if min(shape) < 100 else 1):  # weightwatcher.random_eigenvalues
        flat = weight.flatten()
        np.random.shuffle(flat)
        expected.append(flat.reshape(shape))
    np.random.set_state(state)
    assert replicas.shape == (len(expected),) + shape
    for got, want in zip(replicas, expected):
        np.testing.assert_array_equal(got, want)


def test_eigenvalues_are_squared_singular_values_batched_or_not():
    weights = rng(3).standard_normal((4, 50, 120)) * np.array([1, 10, 0.1, 3])[:, None, None]
    batched = fs.esd_batch(weights)
    assert batched.shape == (4, 50)
    for weight, evals in zip(weights, batched):
        sv = np.sort(scipy.linalg.svd(weight, compute_uv=False))
        np.testing.assert_allclose(evals, sv * sv, rtol=1e-12)
        np.testing.assert_array_equal(fs.esd_batch(weight.T), fs.esd_batch(weight))
        np.testing.assert_array_equal(fs.esd_batch(weight), evals)
    np.testing.assert_allclose(fs.singular_values_batch(weights), np.sqrt(batched))


def test_nearly_singular_matrices_get_weightwatchers_svd():
    generator = rng(4)
    rank_one = np.outer(generator.standard_normal(60), generator.standard_normal(30)) * 1e3
    sv = np.sort(scipy.linalg.svd(rank_one, compute_uv=False))
    np.testing.assert_array_equal(fs.esd_batch(rank_one), sv * sv)  # not eps * lambda_max noise


def test_random_spectra_of_a_stack_pool_and_sort_the_replicas():
    weights = rng(5).standard_normal((2, 20, 60))
    rand = fs.random_esd_batch(weights, seeds=[7, 8])
    assert rand.shape == (2, 5 * 20)
    expected = np.sort(fs.esd_batch(fs.shuffled_weights(weights[1], 8)).ravel())
    np.testing.assert_array_equal(rand[1], expected)
    assert np.all(np.diff(rand, axis=1) >= 0)


# --------------------------------------------------------------------------- power law


def test_power_law_fit_is_wwfit(ww):
    from weightwatcher.WW_powerlaw import WWFit

    for data in spectra_for_fits():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = WWFit(data)
        fit = fs.fit_power_law(data)
        assert (fit.alpha, fit.xmin, fit.xmax, fit.D) == (reference.alpha, reference.xmin, reference.xmax,
                                                           reference.D), len(data)


def test_clipped_power_law_is_fit_clipped_powerlaw_failures_included(ww):
    from weightwatcher.RMT_Util import fit_clipped_powerlaw

    spectra = spectra_for_fits() + [np.sort(rng(6).pareto(2.0, size=n) + 1) for n in (9, 10, 11, 12, 13)]
    outcomes = set()
    for data in spectra:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best, num_fingers, raw = fit_clipped_powerlaw(data, logger=logging.getLogger("weightwatcher"))
            reference = (best.alpha, best.xmin, best.xmax, best.D, num_fingers, raw.alpha)
        except Exception:  # WeightWatcher's fit_powerlaw turns this into status 'failed'
            reference = "failed"
        try:
            best, num_fingers, raw = fs.fit_clipped_power_law(data)
            got = (best.alpha, best.xmin, best.xmax, best.D, num_fingers, raw.alpha)
        except fs.FitFailed:
            got = "failed"
        assert got == reference, len(data)
        outcomes.add("failed" if got == "failed" else ("clipped" if got[4] else "raw"))
    assert outcomes == {"failed", "clipped", "raw"}  # every branch was exercised


# --------------------------------------------------------------------------- Marchenko-Pastur fit


def test_linear_kernel_density_is_sklearns():
    from sklearn.neighbors import KernelDensity

    for samples in (rng(7).random(200) * 3, rng(8).standard_normal(50) ** 2, np.array([1.0] * 5 + [2.0])):
        points = np.linspace(0, samples.max() + 0.5, 1000)
        reference = np.exp(KernelDensity(kernel="linear", bandwidth=0.1).fit(samples[:, None])
                           .score_samples(points[:, None]))
        np.testing.assert_allclose(fs.linear_kernel_density(samples, points, 0.1), reference,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(80, 200), (90, 90)])
def test_mp_residual_is_resid_mp_on_the_whole_brute_grid(ww, shape):
    from weightwatcher.RMT_Util import resid_mp

    rand_evals = fs.esd_batch(rng(9).standard_normal(shape))
    Q = max(shape) / min(shape)
    x = rand_evals * len(rand_evals) / np.sum(rand_evals)
    to_fit = np.sqrt(x) if Q == 1 else x
    scale = np.sqrt(np.max(x) / np.square(1 + 1.0 / np.sqrt(Q)))
    grid = np.mgrid[slice(0.05 * scale, 2.0 * scale, 0.01 * scale)]
    residual = fs.MPResidual(to_fit, Q)
    with np.errstate(all="ignore"):
        on_grid = residual.grid(grid)
        scalar = [residual.scalar(s) for s in grid[::10]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = np.array([resid_mp(np.array([s]), to_fit, Q, 0.1, False) for s in grid])
    np.testing.assert_allclose(on_grid, reference, rtol=1e-9)
    np.testing.assert_allclose(scalar, reference[::10], rtol=1e-9)
    if Q != 1:
        assert np.sum(reference == reference.max()) > 10  # the penalty branch was exercised


def test_nelder_mead_is_scipy_fmin_step_for_step():
    functions = [lambda x: (x - 3.3) ** 2, lambda x: abs(x - 0.7) + 0.1 * math.sin(40 * x),
                 lambda x: math.floor(3 * x) ** 2, lambda x: 1000.0 if x > 2 else (x - 1.5) ** 4,
                 lambda x: -x]  # the last one runs into the call limit
    for function in functions:
        for x0 in (0.0, 0.5, 2.5, -1.3, 10.0):
            reference = optimize.fmin(lambda v: function(float(v[0])), x0, full_output=1, disp=False)[0][0]
            assert fs.nelder_mead_1d(function, x0) == reference


@pytest.mark.parametrize("shape", [(60, 150), (70, 70), (12, 50)])
def test_mp_fit_is_weightwatchers_mp_fit(ww, shape):
    rand_evals = np.sort(fs.esd_batch(rng(10).standard_normal(shape) + 0.2))
    N, M = max(shape), min(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spikes, sigma, _, _, bulk_max, _ = ww.WeightWatcher().mp_fit(
            rand_evals, N, M, 1, "", 0, 0, False, False, "", "b", True, rand_evals)
    fit = fs.marchenko_pastur_fit(rand_evals, N, M)
    assert_rel(fit["rand_sigma_mp"], sigma, REL_MP, "sigma")
    assert_rel(fit["rand_lambda_plus"], bulk_max, REL_MP, "bulk edge")
    assert fit["ww_num_traps"] == spikes


def test_mp_ks_test_equals_scipys_kstest():
    """The one mp_ks_test (antigrok.spectra.primitives, both engines use it) is scipy.stats.kstest of the
    rescaled ESD against the MP CDF, bit for bit."""
    from scipy import stats

    for shape, sigma in (((60, 150), 1.0), ((70, 70), 0.97), ((12, 50), 1.2), ((40, 80), math.nan)):
        rand_evals = np.sort(fs.esd_batch(rng(11).standard_normal(shape)))
        N, M = max(shape), min(shape)
        got = spectral.mp_ks_test(rand_evals, N, M, sigma)
        assert spectral.mp_ks_test is spectral.mp_ks_test and spectral.mp_ks_test is spectral.mp_ks_test
        if math.isnan(sigma):
            assert all(math.isnan(v) for v in got)
            continue
        rescaled, _ = spectral.rescale_like_weightwatcher(rand_evals)
        reference = stats.kstest(rescaled, lambda x: spectral.mp_cdf(x, N / M, sigma))
        assert got == (float(reference.statistic), float(reference.pvalue))


def test_the_mp_fit_reports_the_bulk_edge_and_tracy_widom_term_of_its_sigma():
    """The edge, Tracy-Widom term and trap count follow from the fitted sigma by WeightWatcher's
    closed forms (written out here, not through antigrok.spectra.primitives, which the fit also uses), and
    antigrok.spectra.traps, which counts through antigrok.spectra.primitives, gets the same."""
    for shape, spike in (((60, 150), 0.0), ((12, 50), 0.0), ((60, 150), 40.0)):
        weight = rng(3).standard_normal(shape) + spike / np.sqrt(shape[0] * shape[1])  # a mean shift: one trap
        rand_evals = np.sort(fs.esd_batch(weight))
        N, M = max(shape), min(shape)
        Q = N / M
        fit = fs.marchenko_pastur_fit(rand_evals, N, M)
        to_units = np.sum(rand_evals) / len(rand_evals)  # 1 / Wscale^2: rescaled (mean 1) -> eigenvalue units
        lambda_plus = (fit["rand_sigma_mp"] * (1 + Q**-0.5)) ** 2
        tw_term = np.sqrt(Q**-0.5 * lambda_plus ** (2 / 3) * M ** (-2 / 3))
        assert fit["rand_lambda_plus"] == pytest.approx(lambda_plus * to_units, rel=1e-12)
        assert fit["rand_tw_term"] == pytest.approx(tw_term * to_units, rel=1e-12)
        assert fit["ww_num_traps"] == int(np.count_nonzero(rand_evals / to_units > lambda_plus + tw_term))
        assert fit["ww_num_traps"] == (1 if spike else 0)
        cut = spectral.tracy_widom_cutoff(rand_evals, rows=N, cols=M, sigma=fit["rand_sigma_mp"])
        assert (fit["rand_lambda_plus"], fit["rand_tw_term"]) == (cut["lambda_plus"], cut["tw_term"])


# --------------------------------------------------------------------------- whole layers


def gaussian(rows, cols, seed=0) -> np.ndarray:
    return rng(seed).standard_normal((rows, cols))


def mean_shift_spike(rows, cols, strength) -> np.ndarray:
    """A rank-one mean shift: a spike far above the bulk that survives shuffling (one trap)."""
    return gaussian(rows, cols) + strength / np.sqrt(rows * cols)


KNOWN_ANSWERS = {
    "gaussian": (lambda: gaussian(60, 120), "clip_xmax", {"ww_num_traps": 0}),
    # below 100 eigenvalues WeightWatcher pools 5 shuffled replicas: the spike is in each of them
    "planted spike": (lambda: mean_shift_spike(60, 120, 40.0), "clip_xmax", {"ww_num_traps": 5}),
    "power-law tail": (lambda: power_law_matrix(3.0), False, {}),
    "square, output-sized": (lambda: gaussian(12, 12, seed=3) @ np.diag(np.arange(1, 13.0)), "clip_xmax", {}),
    "rank one (fit fails)": (lambda: np.outer(gaussian(1, 60), gaussian(1, 30)), "clip_xmax", {}),
}


@pytest.mark.parametrize("name", list(KNOWN_ANSWERS))
def test_known_answer_matrices_equal_weightwatcher(name):
    make, fix_fingers, known = KNOWN_ANSWERS[name]
    weight = make()
    reference = htsr.analyze_layer(weight, seed=21, fix_fingers=fix_fingers, engine="weightwatcher")
    fast = htsr.analyze_layer(weight, seed=21, fix_fingers=fix_fingers, engine="fast")
    assert_same_layer(fast, reference)
    for key, value in known.items():
        assert fast[key] == value
    if name == "power-law tail":
        assert fast["alpha"] == pytest.approx(3.0, abs=0.3)
    if name.startswith("rank one"):
        assert fast["fit_status"].startswith("failed") and math.isnan(fast["alpha"])


def test_a_run_of_checkpoints_at_once_equals_one_at_a_time():
    weights = np.stack([gaussian(20, 50, seed=s) for s in range(3)])
    series = fs.analyze_layer_series(weights, seeds=[4, 5, 6], fix_fingers="clip_xmax")
    for weight, seed, result in zip(weights, [4, 5, 6], series):
        single = fs.analyze_layer_fast(weight, seed=seed, fix_fingers="clip_xmax")
        assert set(single) == set(result) >= set(htsr.LAYER_KEYS)
        for key in htsr.LAYER_KEYS:
            if isinstance(single[key], np.ndarray):
                np.testing.assert_array_equal(result[key], single[key])
            elif isinstance(single[key], str):
                assert result[key] == single[key]
            else:
                assert_rel(result[key], single[key], 0, key)


def test_the_workflows_layers_take_the_single_threaded_path():
    """Only LLM-size layers get threads and torch's LAPACK: the workflow's spectra stay bit-identical."""
    for shape in [(200, 784), (200, 200), (10, 200), (512, 128), (128, 113), (1023, 1023)]:
        assert not fs.is_big_layer(shape), shape
    for shape in [(1024, 1024), (4096, 4096), (4096, 11008), (11008, 4096)]:
        assert fs.is_big_layer(shape), shape


def test_the_big_layer_path_equals_weightwatcher(monkeypatch):
    """The path of 1024 x 1024 and larger (threads, torch's eigvalsh), forced on a small heavy-tailed
    layer with a mean-shift trap, gives WeightWatcher's numbers."""
    weight = rng(5).standard_t(3.0, size=(150, 260)) + 30.0 / np.sqrt(150 * 260)
    reference = htsr.analyze_layer(weight, seed=8, fix_fingers="clip_xmax", engine="weightwatcher")
    small_path = htsr.analyze_layer(weight, seed=8, fix_fingers="clip_xmax", engine="fast")
    monkeypatch.setattr(fs, "BIG_LAYER_WORK", 1)
    assert fs.is_big_layer(weight.shape)
    big_path = htsr.analyze_layer(weight, seed=8, fix_fingers="clip_xmax", engine="fast")
    assert_same_layer(big_path, reference)
    assert big_path["ww_num_traps"] == small_path["ww_num_traps"] == reference["ww_num_traps"] >= 1
    np.testing.assert_allclose(big_path["evals"], small_path["evals"], rtol=1e-12, atol=1e-13 * small_path["evals"].max())


def test_a_big_square_layer_needs_no_svd_for_eigenvalues_below_the_cut(monkeypatch):
    """A square W's Gram matrix is ill-conditioned: eigenvalues far below the 1e-5 cut lose their
    relative accuracy, which the small path buys back with WeightWatcher's SVD. They do not enter
    the power-law fit, and W_rand's spectrum is used in absolute terms only: the big path keeps the
    Gram eigenvalues and still gives WeightWatcher's numbers."""
    generator = rng(6)
    left, _ = np.linalg.qr(generator.standard_normal((150, 150)))
    right, _ = np.linalg.qr(generator.standard_normal((150, 150)))
    singular_values = (1 - (np.arange(150) + 0.5) / 150) ** -0.5
    singular_values[-3:] = 1e-7  # three nearly null directions: eigenvalues ~1e-14, below the cut
    weight = (left * singular_values) @ right.T
    reference = htsr.analyze_layer(weight, seed=3, fix_fingers="clip_xmax", engine="weightwatcher")
    svd_calls = []
    svd = scipy.linalg.svd
    monkeypatch.setattr(scipy.linalg, "svd", lambda *a, **k: svd_calls.append(1) or svd(*a, **k))
    htsr.analyze_layer(weight, seed=3, fix_fingers="clip_xmax", engine="fast")
    assert svd_calls, "the small path takes WeightWatcher's SVD for this matrix"
    svd_calls.clear()
    monkeypatch.setattr(fs, "BIG_LAYER_WORK", 1)
    big_path = htsr.analyze_layer(weight, seed=3, fix_fingers="clip_xmax", engine="fast")
    assert not svd_calls
    assert_same_layer(big_path, reference)
    assert big_path["evals"].min() >= 0 and big_path["rand_evals"].min() >= 0


@pytest.mark.slow
@pytest.mark.parametrize("which", ["early", "mid", "late"])
def test_real_mnist_checkpoints_equal_weightwatcher(smoke_workdir, which):
    """Early (step 0), mid and late (last step) checkpoints of a real MNIST run, every layer."""
    files = sorted((smoke_workdir / "results/runs/mnist_mlp/wd0.0/seed0/checkpoints").glob("*.pt"))
    path = {"early": files[0], "mid": files[len(files) // 2], "late": files[-1]}[which]
    from antigrok.training.train import load_checkpoint

    checkpoint = load_checkpoint(path)
    for layer, weight in htsr.weight_matrices(checkpoint["model"]).items():
        seed = spectral.layer_seed(0, checkpoint["step"], layer)
        reference = htsr.analyze_layer(weight, seed=seed, fix_fingers="clip_xmax", engine="weightwatcher")
        fast = htsr.analyze_layer(weight, seed=seed, fix_fingers="clip_xmax", engine="fast")
        assert_same_layer(fast, reference)


# --------------------------------------------------------------------------- configuration


def test_fast_is_the_default_engine_and_weightwatcher_stays_selectable():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    engine = schema["properties"]["htsr"]["properties"]["engine"]
    assert engine["default"] == "fast" and set(engine["enum"]) == set(htsr.ENGINES) == {"weightwatcher", "fast"}
    for config in ("config.yaml", "tests/smoke.yaml"):
        assert yaml.safe_load((REPO / config).read_text())["htsr"]["engine"] == "fast", config


def test_an_all_zero_layer_has_no_mp_fit_and_says_why(caplog):
    # The known degenerate case: a shuffled spectrum of zeros cannot be rescaled to mean 1.
    with caplog.at_level(logging.WARNING, logger="antigrok.spectra.fast_engine"):
        row = fs.analyze_layer_fast(np.zeros((30, 20)), seed=0, fix_fingers="clip_xmax")
    assert math.isnan(row["rand_sigma_mp"]) and math.isnan(row["ww_num_traps"])
    assert "sums to 0.0" in caplog.text


def test_an_unexpected_error_in_the_mp_fit_raises_naming_the_layer(monkeypatch):
    # It was caught (any ValueError) and stored as NaN columns: a bug looked like a missing number.
    from antigrok import htsr

    def broken_fit(*args, **kwargs):
        raise ValueError("a bug in the MP fit")

    monkeypatch.setattr(fs, "marchenko_pastur_fit", broken_fit)
    weight = np.random.default_rng(0).standard_normal((30, 20))
    with pytest.raises(ValueError, match="a bug in the MP fit") as raised:
        htsr.analyze_weights({"fc1": weight}, run_seed=0, step=7, engine="fast")
    assert "layer 'fc1'" in "".join(getattr(raised.value, "__notes__", [])) + str(raised.value)
