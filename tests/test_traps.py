"""Correlation Traps (antigrok.spectra.traps): WeightWatcher's count at scale 1, thresholds, files, and a
threshold change that reruns only the traps rule."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from antigrok import htsr
from antigrok.spectra import primitives as spectral
from antigrok.spectra import traps
from conftest import dry_run_jobs, snakemake


def gaussian(rows=100, cols=200, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols))


def mean_shift(weight, strength):
    """A rank-one spike of singular value ``strength`` that survives shuffling (constant shift)."""
    return weight + strength / np.sqrt(weight.size)


def heavy_tailed(rows=100, cols=200, seed=0):
    """Entries of a Student t with 1.5 degrees of freedom: a few huge entries, several traps."""
    return np.random.default_rng(seed).standard_t(1.5, size=(rows, cols))


@pytest.fixture(scope="module")
def spectra_files(tmp_path_factory):
    """htsr.csv and spectra.npz of two checkpoints whose layers have 0, 1 and several traps."""
    folder = tmp_path_factory.mktemp("traps_run")
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir()
    layers = {
        0: {"plain": gaussian(seed=0), "spike": mean_shift(gaussian(seed=1), 60.0), "heavy": heavy_tailed(seed=2)},
        # A spike near the detection threshold (N M)^(1/4) ~ 12: a count decided at the margin.
        5: {"plain": gaussian(seed=3), "spike": mean_shift(gaussian(seed=4), 16.0), "heavy": heavy_tailed(seed=5)},
    }
    for step, weights in layers.items():
        model = {f"{name}.weight": torch.tensor(w) for name, w in weights.items()}
        torch.save({"step": step, "model": model, "seed": 4}, checkpoints / f"step{step:09d}.pt")
    htsr.write_spectra(checkpoints, folder / "htsr.csv", folder / "spectra.npz", run_seed=4)
    return folder


@pytest.fixture(scope="module")
def weightwatcher_counts(spectra_files):
    """WeightWatcher 0.7.5.5's own trap counts (its rand_num_spikes) of the same checkpoints, same seeds."""
    table, _ = htsr.analyze_checkpoints(spectra_files / "checkpoints", run_seed=4, engine="weightwatcher",
                                        progress=False)
    return dict(zip(zip(table["step"], table["layer"]), table["ww_num_traps"].tolist()))


def test_scale_one_equals_weightwatchers_count_exactly(spectra_files, weightwatcher_counts):
    # The spectra are the fast engine's (the default); the counts must be WeightWatcher's, which
    # ran on the same matrices: not the fast engine compared with itself.
    table = traps.write_traps(spectra_files / "htsr.csv", spectra_files / "spectra.npz",
                              spectra_files / "traps.csv", tracy_widom_scale=1.0)
    assert list(table.columns) == traps.TRAPS_COLUMNS
    stats = spectral.read_htsr(spectra_files / "htsr.csv")
    assert [weightwatcher_counts[key] for key in zip(table["step"], table["layer"])] == table["num_traps"].tolist()
    assert table["num_traps"].tolist() == stats["ww_num_traps"].tolist()
    counts = dict(zip(zip(table["step"], table["layer"]), table["num_traps"]))
    assert counts[(0, "plain")] == 0 and counts[(0, "spike")] == 1 and counts[(0, "heavy")] > 1
    # The file, read back, says the same; the trap eigenvalues are the largest, descending.
    written = pd.read_csv(spectra_files / "traps.csv", keep_default_na=False)
    assert written["num_traps"].tolist() == stats["ww_num_traps"].tolist()
    spectra = spectral.load_spectra(spectra_files / "spectra.npz")
    for row in written.itertuples():
        values = [float(v) for v in row.trap_eigenvalues.split(";")] if row.trap_eigenvalues else []
        assert len(values) == row.num_traps
        assert values == sorted(values, reverse=True)
        rand_evals = spectra[f"rand_evals/{row.layer}/{row.step:09d}"]
        assert values == pytest.approx(sorted(rand_evals, reverse=True)[: row.num_traps], rel=1e-9)
        assert all(v > row.trap_threshold for v in values)
    # Scale 1 is htsr.csv's cut-off: lambda_+ plus one Tracy-Widom term.
    assert table["trap_threshold"].to_numpy() == pytest.approx(stats["rand_tw_cutoff"].to_numpy(), rel=1e-12)
    assert table["rand_lambda_plus"].to_numpy() == pytest.approx(stats["rand_lambda_plus"].to_numpy(), rel=1e-12)


def test_larger_scale_fewer_traps_scale_zero_is_the_bulk_edge(spectra_files):
    stats = spectral.read_htsr(spectra_files / "htsr.csv")
    spectra = spectral.load_spectra(spectra_files / "spectra.npz")
    by_scale = {scale: traps.compute_traps(stats, spectra, scale) for scale in (0.0, 1.0, 3.0, 1e6)}
    for lower, higher in [(0.0, 1.0), (1.0, 3.0), (3.0, 1e6)]:
        assert (by_scale[lower]["num_traps"] >= by_scale[higher]["num_traps"]).all()
    assert by_scale[0.0]["trap_threshold"].to_numpy() == pytest.approx(stats["rand_lambda_plus"].to_numpy())
    assert (by_scale[1e6]["num_traps"] == 0).all()
    assert (by_scale[3.0]["tracy_widom_scale"] == 3.0).all()
    with pytest.raises(ValueError, match="tracy_widom_scale"):
        traps.count_traps(np.ones(10), rows=20, cols=10, sigma=1.0, tracy_widom_scale=-1)


def test_failed_mp_fit_gives_a_missing_count_not_zero():
    result = traps.count_traps(np.linspace(1, 2, 20), rows=40, cols=20, sigma=math.nan)
    assert result["num_traps"] is pd.NA and math.isnan(result["trap_threshold"])
    stats = pd.DataFrame({"step": [0], "layer": ["fc1"], "rows": [40], "cols": [20], "rand_sigma_mp": [math.nan]})
    spectra = {"rand_evals/fc1/000000000": np.linspace(1, 2, 20), "rand_evals_centered/fc1/000000000": np.linspace(1, 2, 20)}
    table = traps.compute_traps(stats, spectra, 1.0)
    assert table["num_traps"].isna().all() and str(table["num_traps"].dtype) == "Int64"
    assert table["num_traps_centered"].isna().all() and str(table["num_traps_centered"].dtype) == "Int64"
    assert table["trap_eigenvalues"].tolist() == [""]


def test_missing_spectrum_is_an_error_that_says_what_to_do():
    stats = pd.DataFrame({"step": [3], "layer": ["fc1"], "rows": [40], "cols": [20], "rand_sigma_mp": [1.0]})
    with pytest.raises(KeyError, match="rand_evals/fc1/000000003.*rerun the spectra rule"):
        traps.compute_traps(stats, {}, 1.0)


# --------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_smoke_traps_reproduce_weightwatcher_on_real_checkpoints(smoke_workdir):
    runs = sorted(smoke_workdir.glob("results/runs/*/*/*"))
    assert runs
    for run in runs:
        stats = spectral.read_htsr(run / "htsr.csv")
        table = pd.read_csv(run / "traps.csv")
        assert list(stats.columns) == htsr.HTSR_COLUMNS
        assert list(table.columns) == traps.TRAPS_COLUMNS
        layers = list(dict.fromkeys(stats["layer"]))
        if "mnist_mlp" in run.parts:
            assert layers == ["fc1", "fc2", "fc3"]
        assert len(table) == len(stats) == len(layers) * len(list((run / "checkpoints").glob("*.pt")))
        assert np.array_equal(table["num_traps"].to_numpy(dtype=float), stats["ww_num_traps"].to_numpy(dtype=float),
                              equal_nan=True)
        assert not (stats.select_dtypes("number") == -1).any().any()
        assert (stats.loc[stats["fit_status"] != "ok", "alpha"].isna()).all()
        with np.load(run / "spectra.npz") as spectra:
            # per layer and checkpoint: the spectrum, the shuffled one, and the shuffled one with its mean removed
            assert len(spectra.files) == 3 * len(stats)
            assert sum(key.startswith(spectral.CENTERED_RAND_EVALS + "/") for key in spectra.files) == len(stats)
    log = (smoke_workdir / "logs" / "spectra" / "mnist_mlp" / "wd0.0" / "seed0.log").read_text()
    assert re.search(r"analyzed step000002000\.pt \(step 2000\): 3 layers in [\d.]+ s", log)
    # WeightWatcher's import-time chatter stays out of the job log.
    assert "CUDA is not" not in log and "svd accurate methods" not in log


@pytest.mark.slow
def test_threshold_changes_rerun_only_what_reads_them(smoke_workdir):
    num_runs = len(list(smoke_workdir.glob("results/runs/*/*/*")))
    assert dry_run_jobs(snakemake(smoke_workdir, "-n").stdout) == {}

    result = snakemake(smoke_workdir, "-n", overrides={"traps": {"tracy_widom_scale": 2.0}})
    jobs = dry_run_jobs(result.stdout + result.stderr)
    assert jobs.get("traps") == num_runs, jobs
    assert not {"prepare_data", "train", "spectra", "progress"} & set(jobs), jobs

    result = snakemake(smoke_workdir, "-n", overrides={"htsr": {"alpha_critical": 1.5}})
    jobs = dry_run_jobs(result.stdout + result.stderr)
    assert not {"prepare_data", "train", "spectra", "traps", "progress"} & set(jobs), jobs


# --------------------------------------------------------------------------- the mean-shift outlier


def test_a_mean_shift_is_one_raw_trap_and_none_once_the_mean_is_removed(spectra_files):
    table = traps.compute_traps(spectral.read_htsr(spectra_files / "htsr.csv"),
                                spectral.load_spectra(spectra_files / "spectra.npz"), 1.0).set_index(["step", "layer"])
    spike = table.loc[(0, "spike")]
    assert (spike["num_traps"], spike["num_traps_centered"]) == (1, 0)
    # the raw outlier sits where the BBP formula puts a rank-one spike s = mu^2 N M on unit-variance noise
    weight = mean_shift(gaussian(seed=1), 60.0)
    s, n, m = weight.mean() ** 2 * weight.size, *weight.shape
    sigma2 = weight.var()
    assert spike["max_rand_eval"] == pytest.approx(s + sigma2 * (n + m) + sigma2**2 * n * m / s, rel=0.03)
    assert spike["max_rand_eval_centered"] < spike["trap_threshold"]
    # without a mean there is nothing to remove: the same count
    plain = table.loc[(0, "plain")]
    assert plain["num_traps"] == plain["num_traps_centered"] == 0


def test_traps_of_large_entries_survive_centering(spectra_files):
    table = traps.compute_traps(spectral.read_htsr(spectra_files / "htsr.csv"),
                                spectral.load_spectra(spectra_files / "spectra.npz"), 1.0).set_index(["step", "layer"])
    heavy = table.loc[(0, "heavy")]
    assert heavy["num_traps"] >= 2
    assert heavy["num_traps_centered"] >= heavy["num_traps"] - 1


def test_centered_spectrum_is_the_shuffled_draws_minus_their_mean():
    from antigrok.spectra.fast_engine import centered_random_esd, shuffled_weights

    weight = mean_shift(gaussian(rows=30, cols=50, seed=7), 20.0)
    replicas = shuffled_weights(weight, 11)
    expected = np.sort(np.concatenate([np.linalg.svd(r - r.mean(), compute_uv=False) ** 2 for r in replicas]))
    np.testing.assert_allclose(centered_random_esd(weight, 11), expected, rtol=1e-10, atol=1e-10)


def test_spectra_written_before_the_centered_count_ask_for_a_rerun():
    stats = pd.DataFrame({"step": [3], "layer": ["fc1"], "rows": [40], "cols": [20], "rand_sigma_mp": [1.0]})
    spectra = {"rand_evals/fc1/000000003": np.linspace(0.1, 5, 20)}
    with pytest.raises(KeyError, match="rand_evals_centered/fc1/000000003.*rerun the spectra rule"):
        traps.compute_traps(stats, spectra, 1.0)
