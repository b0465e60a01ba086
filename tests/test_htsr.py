"""HTSR analysis (antigrok.htsr): known answers, equality with WeightWatcher called directly,
the MP law and KS test, failed fits, isolation of WeightWatcher's side effects, checkpoints."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate

from antigrok import htsr
from antigrok.spectra import primitives as spectral
from antigrok.spectra.ww_engine import import_weightwatcher
from conftest import SHARED_DATA, requires_mnist

NO_MINUS_ONE_COLUMNS = [c for c in htsr.HTSR_COLUMNS if c not in ("step", "layer", "fit_status")]


# --------------------------------------------------------------------------- matrices with known answers


def gaussian(rows=100, cols=200, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


def with_mean_shift_spike(weight: np.ndarray, strength: float) -> np.ndarray:
    """``W + strength * u v^T`` with u, v all-positive unit vectors: a rank-one spike that
    survives shuffling as a mean shift of every entry (the same shift, for constant u, v)."""
    u = np.ones(weight.shape[0]) / np.sqrt(weight.shape[0])
    v = np.ones(weight.shape[1]) / np.sqrt(weight.shape[1])
    return weight + strength * np.outer(u, v)


def with_zero_mean_spike(weight: np.ndarray, strength: float, seed=1) -> np.ndarray:
    """The same spike with random-sign u, v: shuffling turns it into noise."""
    rng = np.random.default_rng(seed)
    u = rng.choice([-1.0, 1.0], weight.shape[0]) / np.sqrt(weight.shape[0])
    v = rng.choice([-1.0, 1.0], weight.shape[1]) / np.sqrt(weight.shape[1])
    return weight + strength * np.outer(u, v)


def power_law_matrix(alpha: float, rows=300, cols=150, seed=0) -> np.ndarray:
    """A (rows, cols) matrix whose eigenvalues of W^T W are the quantiles of a Pareto density
    ``p(lambda) ~ lambda^-alpha`` (lambda >= 1), with random singular vectors."""
    rng = np.random.default_rng(seed)
    quantiles = (np.arange(cols) + 0.5) / cols
    evals = (1 - quantiles) ** (-1 / (alpha - 1))
    left, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (left * np.sqrt(evals)) @ right.T


# The bulk edge of a 100x200 standard Gaussian is (sqrt(200) + sqrt(100))^2 ~ 583: a spike of
# strength 60 puts an eigenvalue at ~3600, far above it, before and after shuffling.
SPIKE = 60.0


@pytest.fixture(scope="module")
def gaussian_result():
    return htsr.analyze_layer(gaussian(), seed=11, fix_fingers="clip_xmax")


@pytest.fixture(scope="module")
def spike_result():
    return htsr.analyze_layer(with_mean_shift_spike(gaussian(), SPIKE), seed=11, fix_fingers="clip_xmax")


def assert_no_minus_one(result: dict):
    for key in NO_MINUS_ONE_COLUMNS:
        if key in result:
            assert result[key] != -1, key


def test_gaussian_matrix_has_no_traps_and_passes_the_mp_ks_test(gaussian_result):
    r = gaussian_result
    assert set(htsr.LAYER_KEYS) <= set(r)
    assert (r["rows"], r["cols"], r["num_evals"]) == (200, 100, 100)
    assert r["ww_num_traps"] == 0
    assert r["max_rand_eval"] < r["rand_tw_cutoff"]
    assert r["mp_ks_pvalue"] > 0.05
    assert 0.9 < r["rand_sigma_mp"] < 1.1  # rescaled units: ~1 for an i.i.d. matrix
    # The bulk edge in eigenvalue units is near the MP edge of the raw matrix.
    assert r["rand_lambda_plus"] == pytest.approx((np.sqrt(200) + np.sqrt(100)) ** 2, rel=0.1)
    assert r["fit_status"] == "ok" and np.isfinite(r["alpha"])
    assert_no_minus_one(r)


def test_mean_shift_spike_is_exactly_one_trap(spike_result, gaussian_result):
    r = spike_result
    assert r["ww_num_traps"] == 1
    assert np.sum(r["rand_evals"] > r["rand_tw_cutoff"]) == 1
    # The trap is the spike, where random-matrix theory puts a rank-one perturbation of strength
    # c of an N x M Gaussian (BBP): (c^2 + N)(c^2 + M) / c^2; a mean shift survives the shuffle.
    expected = (SPIKE**2 + 200) * (SPIKE**2 + 100) / SPIKE**2
    assert r["max_rand_eval"] == pytest.approx(expected, rel=0.05)
    assert r["max_rand_eval"] > 3 * r["rand_tw_cutoff"]
    # The unshuffled spectrum has it too; the rest of the randomized spectrum is the Gaussian's.
    assert r["evals"].max() == pytest.approx(expected, rel=0.05)
    assert r["rand_sigma_mp"] == pytest.approx(gaussian_result["rand_sigma_mp"], rel=0.1)


def test_zero_mean_spike_leaves_no_trap_after_shuffling():
    # Traps live in W_rand: a random-sign rank-one spike is in W's spectrum but not W_rand's.
    r = htsr.analyze_layer(with_zero_mean_spike(gaussian(), SPIKE), seed=11, fix_fingers="clip_xmax")
    assert r["evals"].max() > 3 * r["rand_tw_cutoff"]
    assert r["ww_num_traps"] == 0


@pytest.mark.parametrize("fix_fingers", ["clip_xmax", False])
def test_power_law_tail_gives_its_exponent(fix_fingers):
    r = htsr.analyze_layer(power_law_matrix(3.0), seed=0, fix_fingers=fix_fingers)
    assert r["alpha"] == pytest.approx(3.0, abs=0.3)
    assert r["fit_status"] == "ok"
    assert r["xmin"] < r["xmax"] <= r["evals"].max()
    assert r["num_pl_spikes"] == np.sum(r["evals"] >= r["xmin"])
    if fix_fingers is False:
        assert (r["raw_alpha"], r["num_fingers"]) == (r["alpha"], 0)


def test_failed_power_law_fit_is_nan_with_a_reason_never_minus_one():
    # Rank one: a single non-zero eigenvalue, nothing to fit (WeightWatcher: alpha = -1).
    rng = np.random.default_rng(0)
    r = htsr.analyze_layer(np.outer(rng.standard_normal(60), rng.standard_normal(30)), seed=0,
                           fix_fingers="clip_xmax")
    assert r["fit_status"].startswith("failed: ") and "no reason given" not in r["fit_status"]
    for key in ["alpha", "raw_alpha", "xmin", "xmax", "pl_ks_distance", "num_pl_spikes", "alpha_weighted"]:
        assert math.isnan(r[key]), key
    assert np.isfinite(r["log_norm"]) and np.isfinite(r["stable_rank"])
    assert_no_minus_one(r)


def test_weights_must_be_analyzable_matrices():
    with pytest.raises(ValueError, match="2-D"):
        htsr.analyze_layer(np.ones(30), seed=0)
    with pytest.raises(ValueError, match="fewer than 10"):
        htsr.analyze_layer(np.ones((5, 30)), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        htsr.analyze_layer(np.full((20, 30), np.nan), seed=0)
    with pytest.raises(ValueError, match="unknown htsr.engine"):
        htsr.analyze_layer(gaussian(), seed=0, engine="numpy")
    with pytest.raises(ValueError, match="fix_fingers"):
        htsr.analyze_layer(gaussian(), seed=0, fix_fingers="xmin_peak")


# --------------------------------------------------------------------------- seeds, MP law


def test_layer_seed_is_stable_and_distinct():
    seed = spectral.layer_seed(0, 1000, "fc1")
    assert seed == spectral.layer_seed(0, 1000, "fc1")
    assert 0 <= seed < 2**32
    others = {spectral.layer_seed(1, 1000, "fc1"), spectral.layer_seed(0, 1001, "fc1"), spectral.layer_seed(0, 1000, "fc2")}
    assert seed not in others and len(others) == 3


@pytest.mark.parametrize("Q, sigma", [(1.0, 1.0), (1.5, 0.7), (3.92, 1.0), (20.0, 2.0)])
def test_mp_cdf_integrates_the_mp_density(Q, sigma):
    lam_minus, lam_plus = spectral.mp_edges(Q, sigma)

    def density(x):  # paper Eq. 3
        return Q / (2 * np.pi * sigma**2 * x) * np.sqrt(max((lam_plus - x) * (x - lam_minus), 0.0))

    points = np.linspace(lam_minus, lam_plus, 9)[1:-1]
    for x in points:
        expected, _ = integrate.quad(density, lam_minus, x, limit=200)
        assert spectral.mp_cdf(x, Q, sigma) == pytest.approx(expected, abs=1e-7)
    assert spectral.mp_cdf(lam_minus * 0.5, Q, sigma) == 0.0
    assert spectral.mp_cdf(lam_plus * 1.01, Q, sigma) == pytest.approx(1.0)
    assert np.all(np.diff(spectral.mp_cdf(np.linspace(0, lam_plus * 1.1, 200), Q, sigma)) >= 0)


def test_mp_ks_test_rejects_a_wrong_law_and_accepts_mp_samples():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((400, 100))
    evals = np.linalg.svd(W, compute_uv=False) ** 2
    _, p_right = spectral.mp_ks_test(evals, 400, 100, 1.0)
    _, p_wrong = spectral.mp_ks_test(evals, 400, 100, 1.3)
    assert p_right > 0.05 > p_wrong
    # fastspectra passes its MP fit as a mapping.
    assert spectral.mp_ks_test(evals, 400, 100, {"rand_sigma_mp": 1.0})[1] == p_right
    assert all(math.isnan(v) for v in spectral.mp_ks_test(evals, 400, 100, math.nan))


# --------------------------------------------------------------------------- WeightWatcher, directly


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory):
    """A checkpoint of the paper's MLP (init x8) trained for 100 steps on the real MNIST subset."""
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"offline MNIST copy not found at {SHARED_DATA}")
    from antigrok.training.data import prepare_mnist
    from antigrok.training.train import RunSpec, train_run

    experiment = {
        "model": {"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 8.0}, "loss": "mse",
        "optimizer": {"name": "adamw", "lr": 5.0e-4}, "steps": 100, "batch_size": 200, "dtype": "float64",
    }
    spec = RunSpec("mnist_mlp", experiment, weight_decay=0.0, seed=3, checkpoint_per_decade=1, log_per_decade=1)
    run_dir = tmp_path_factory.mktemp("mnist_run")
    with torch.random.fork_rng(devices=[]):
        train_run(spec, prepare_mnist(SHARED_DATA, 1000, 0, download=False), run_dir, device="cpu", progress=False)
    return run_dir / "checkpoints" / "step000000100.pt"


@requires_mnist
@pytest.mark.parametrize("engine", ["weightwatcher", "fast"])
def test_real_mnist_checkpoint_equals_weightwatcher_called_directly(mnist_checkpoint, engine):
    """The reference engine is WeightWatcher bit for bit; the fast engine within 1e-9 relative."""
    checkpoint = torch.load(mnist_checkpoint, weights_only=False)
    table = htsr.analyze_state_dict(checkpoint["model"], seed=3, step=100, engine=engine)
    assert list(table["layer"]) == ["fc1", "fc2", "fc3"]
    assert list(table.columns) == htsr.HTSR_COLUMNS + ["num_traps", "num_traps_centered"]
    tolerance = 0.0 if engine == "weightwatcher" else 1e-9
    ww = import_weightwatcher()
    for row in table.itertuples():
        weight = checkpoint["model"][f"{row.layer}.weight"].numpy()
        np.random.seed(spectral.layer_seed(3, 100, row.layer))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = ww.WeightWatcher(model={f"{row.layer}.weight": weight}).analyze(
                randomize=True, fix_fingers="clip_xmax").iloc[0]
        assert direct["alpha"] > 0, "WeightWatcher's fit failed; pick another step"
        pairs = {
            "alpha": "alpha", "raw_alpha": "raw_alpha", "xmin": "xmin", "xmax": "xmax",
            "pl_ks_distance": "D", "rand_sigma_mp": "rand_sigma_mp", "rand_lambda_plus": "rand_bulk_max",
            "max_rand_eval": "max_rand_eval", "log_norm": "log_norm",
            "log_spectral_norm": "log_spectral_norm", "stable_rank": "stable_rank",
        }
        for ours, theirs in pairs.items():
            assert getattr(row, ours) == pytest.approx(direct[theirs], rel=tolerance, abs=0), (row.layer, ours)
        assert row.num_fingers == direct["num_fingers"] and row.num_pl_spikes == direct["num_pl_spikes"]
        assert row.ww_num_traps == direct["rand_num_spikes"] == row.num_traps
        assert (row.rows, row.cols) == (direct["N"], direct["M"])
        assert 0 < row.mp_ks_pvalue <= 1 and 0 <= row.mp_ks_stat <= 1


def test_weightwatcher_side_effects_are_contained(capsys):
    root = logging.getLogger()
    handlers, filters = root.handlers[:], warnings.filters[:]
    np.random.seed(123)
    expected_next = np.random.random_sample()
    np.random.seed(123)
    htsr.analyze_layer(gaussian(40, 20), seed=5)
    assert np.random.random_sample() == expected_next  # the caller's global RNG is untouched
    assert root.handlers == handlers
    assert warnings.filters == filters
    assert logging.getLogger("weightwatcher").propagate is False
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_same_seed_same_numbers_other_seed_other_shuffle():
    weight = gaussian(40, 20)
    first = htsr.analyze_layer(weight, seed=5)
    again = htsr.analyze_layer(weight, seed=5)
    other = htsr.analyze_layer(weight, seed=6)
    assert np.array_equal(first["rand_evals"], again["rand_evals"])
    assert first["rand_sigma_mp"] == again["rand_sigma_mp"]
    assert not np.array_equal(first["rand_evals"], other["rand_evals"])
    assert np.array_equal(first["evals"], other["evals"])
    assert len(first["rand_evals"]) == 5 * 20  # WeightWatcher pools 5 shuffles when M < 100


def test_fast_engine_is_dispatched_and_checked(monkeypatch, gaussian_result):
    reference = gaussian_result
    calls = []

    def analyze_layer_fast(weight, *, seed, fix_fingers):
        calls.append((weight.shape, weight.dtype, seed, fix_fingers))
        return dict(reference, ww_num_traps=-1)

    monkeypatch.setattr(htsr, "analyze_layer_fast", analyze_layer_fast)
    result = htsr.analyze_layer(gaussian(40, 20).astype(np.float32), seed=5, engine="fast", fix_fingers=None)
    assert calls == [((40, 20), np.float64, 5, False)]
    assert math.isnan(result["ww_num_traps"])  # a -1 from an engine is a missing value
    assert result["alpha"] == reference["alpha"]

    monkeypatch.setattr(htsr, "analyze_layer_fast", lambda weight, **_: {"alpha": 2.0})
    with pytest.raises(RuntimeError, match="engine 'fast' returned no"):
        htsr.analyze_layer(gaussian(40, 20), seed=5, engine="fast")


# --------------------------------------------------------------------------- state dicts, checkpoints


def test_state_dict_rows_keep_embeddings_and_conv_kernels_and_skip_what_weightwatcher_cannot_fit():
    rng = np.random.default_rng(0)
    state_dict = {
        "embed.weight": torch.tensor(rng.standard_normal((30, 12))),
        "fc.weight": torch.tensor(rng.standard_normal((20, 30)), dtype=torch.float32),
        "fc.bias": torch.zeros(20),
        "head.weight": torch.tensor(rng.standard_normal((5, 20))),  # 5 eigenvalues: too few
        "conv.weight": torch.tensor(rng.standard_normal((4, 3, 3, 3))),  # 3 per position x 9: analysed
        "depthwise.weight": torch.zeros(4, 1, 3, 3),  # 1 per position x 9: too few
        "experts.gate_proj": torch.zeros(4, 12, 16),  # 3-D, not *.weight: not a Conv1d kernel
        "conv3d.weight": torch.zeros(8, 8, 3, 3, 3),
        "steps": torch.tensor(7),
    }
    table = htsr.analyze_state_dict(state_dict, seed=0)
    assert list(table["layer"]) == ["embed", "fc", "conv"]
    assert list(table["rows"]) == [30, 30, 4] and list(table["cols"]) == [12, 20, 3]
    assert list(table["num_evals"]) == [12, 20, 27]
    assert (table["step"] == 0).all()
    reasons = htsr.state_dict_skip_reasons(state_dict)
    assert reasons["depthwise.weight"] == ("shape 4x1x3x3 has fewer than 10 eigenvalues (1 per kernel position x "
                                           "9 positions = 9); WeightWatcher does not analyze it")
    assert reasons["experts.gate_proj"].startswith("3-D tensor not named *.weight: not taken for a Conv1d kernel")
    assert reasons["conv3d.weight"].startswith("5-D tensor (a Conv3d kernel?)")
    assert reasons["steps"] == "not floating point (int64)"
    with pytest.raises(ValueError, match=r"nothing to analyse in the state_dict: 2 tensors skipped: 1 1-D tensor "
                                         r"\(bias, norm, ...\): not a weight matrix: fc.bias; 1 not floating point "
                                         r"\(int8\): q"):
        htsr.analyze_state_dict({"fc.bias": torch.zeros(3), "q": torch.zeros(20, 20, dtype=torch.int8)})


def _save_checkpoint(path, step, seed, rng):
    model = {"fc1.weight": torch.tensor(rng.standard_normal((16, 24))), "fc1.bias": torch.zeros(16),
             "fc2.weight": torch.tensor(rng.standard_normal((12, 16)))}
    torch.save({"format": "antigrok.checkpoint/1", "step": step, "model": model, "seed": seed}, path)


def test_checkpoints_serial_and_parallel_give_the_same_files(tmp_path):
    rng = np.random.default_rng(0)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for step in (0, 10):
        _save_checkpoint(checkpoints / f"step{step:09d}.pt", step, seed=2, rng=rng)
    serial, serial_arrays = htsr.analyze_checkpoints(checkpoints, run_seed=2, threads=1, progress=False)
    columns = [c for c in htsr.HTSR_COLUMNS if c != "analysis_seconds"]
    assert list(zip(serial["step"], serial["layer"])) == [(0, "fc1"), (0, "fc2"), (10, "fc1"), (10, "fc2")]
    assert (serial["analysis_seconds"] > 0).all()
    assert sorted(serial_arrays) == sorted(
        f"{kind}/{layer}/{step:09d}" for kind in ("evals", "rand_evals", "rand_evals_centered") for layer in ("fc1", "fc2")
        for step in (0, 10))
    assert all(np.all(np.diff(array) >= 0) for array in serial_arrays.values())

    # write_spectra in 2 worker processes: its files hold the same numbers, bit for bit.
    htsr.write_spectra(checkpoints, tmp_path / "htsr.csv", tmp_path / "spectra.npz", run_seed=2, threads=2)
    written = spectral.read_htsr(tmp_path / "htsr.csv")
    pd.testing.assert_frame_equal(written[columns], serial[columns], check_dtype=False)
    stored = spectral.load_spectra(tmp_path / "spectra.npz")
    assert sorted(stored) == sorted(serial_arrays)
    assert all(np.array_equal(stored[key], serial_arrays[key]) for key in serial_arrays)
    numbers = written[NO_MINUS_ONE_COLUMNS].to_numpy(dtype=float)
    assert not np.any(numbers == -1)


def test_a_bfloat16_state_dict_is_analysed_at_its_exact_float64_values():
    # weight_matrices called .numpy() on the tensor: NumPy has no bfloat16, so it raised.
    import torch

    weight = torch.randn(60, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(torch.bfloat16)
    exact = weight.to(torch.float64).numpy()
    matrices = htsr.weight_matrices({"fc.weight": weight, "fc.bias": torch.zeros(60, dtype=torch.bfloat16)})
    assert list(matrices) == ["fc"] and matrices["fc"].dtype == np.float64
    np.testing.assert_array_equal(matrices["fc"], exact)
    row = htsr.analyze_state_dict({"fc.weight": weight}).iloc[0]
    assert row["log_norm"] == pytest.approx(np.log10(np.sum(exact**2)), rel=1e-12)  # squared Frobenius norm
