"""antigrok.mechanism (issue 26) against known answers: a planted entry makes one trap and the
theorem's bound predicts it; removing a planted component restores a known matrix; the JS divergence
of identical outputs is 0; prototypes, confusion counts and edge checkpoints on constructed inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.spatial.distance import jensenshannon

from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.centred_traps import centred_svd, centred_trap_count, centred_trap_indices
from antigrok.mechanism.checkpoints import (
    edge_checkpoints,
    layer_inputs,
    mlp_from_state_dict,
    mlp_widths,
    outputs_from,
)
from antigrok.mechanism.confusion import CONFUSION_COLUMNS
from antigrok.mechanism.confusion import confusion_rows, top_class_share
from antigrok.mechanism.input_matched import SecondMoment, input_load, input_matched_rank_one, matched_direction
from antigrok.mechanism.largest_weight import LARGEST_WEIGHT_COLUMNS, largest_weight_row, participation_fraction
from antigrok.mechanism.mean_component import bias_compensation, compensation_residual, mean_component
from antigrok.mechanism.prototypes import PROTOTYPE_COLUMNS, best_match, class_means, pixel_images, prototype_rows
from antigrok.mechanism.removal import (
    REMOVAL_COLUMNS,
    RemovalSettings,
    component_sum,
    js_divergence,
    removal_rows,
)
from antigrok.mechanism.trap_components import layer_traps, shuffle_permutations, shuffled_svds
from antigrok.spectra.fast_engine import marchenko_pastur_fit, random_esd_batch

REPO = Path(__file__).resolve().parents[1]
N, M = 400, 200  # W is (out=M, in=N) as torch stores fc layers: N the larger dimension
EDGE = 1 + math.sqrt(M / N)


def gaussian(seed: int, shape=(M, N)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def planted_entry(ratio: float, seed: int = 0, at=(17, 33)) -> np.ndarray:
    """Unit Gaussian noise with one entry at ``ratio`` x the theorem's bound sqrt(N) sigma (1 + sqrt(gamma))."""
    weight = gaussian(seed)
    weight[at] = ratio * math.sqrt(N) * EDGE
    return weight


# ----------------------------------------------------------------------------- traps and the bound


@pytest.mark.parametrize("ratio", [1.3, 2.0, 4.0])
def test_an_entry_above_the_bound_makes_one_trap_and_its_eigenvector_sits_on_it(ratio):
    weight = planted_entry(ratio)
    row = largest_weight_row(weight, seed=11)
    assert row["num_traps"] == 1
    # the theorem's quantity, computed here from its definition (the entry itself inflates the std a little)
    assert row["bound_ratio_std"] == pytest.approx(weight[17, 33] / math.sqrt(N) / (weight.std() * EDGE), rel=1e-12)
    assert row["bound_ratio_std"] > 1 and row["bound_ratio"] > 1
    assert (row["max_row"], row["max_col"]) == (17, 33)
    assert row["trap_entry_overlap_left"] > 0.5 and row["trap_entry_overlap_right"] > 0.5
    assert row["trap_entry_share"] > 0.9  # the trap's component of W carries the entry
    assert row["trap_mean_share"] < 0.1  # and is not the mean of the entries


def test_an_entry_far_below_the_bound_makes_no_trap():
    row = largest_weight_row(planted_entry(0.3), seed=11)
    assert row["num_traps"] == 0
    assert row["bound_ratio_std"] == pytest.approx(0.3, rel=0.05)
    assert math.isnan(row["trap_pr_right"])


def test_the_theorem_holds_on_random_plantings():
    """Every planted entry above the bound gives a trap (what the theorem guarantees), over seeds and ratios."""
    for seed, ratio in enumerate(np.linspace(1.05, 3.0, 4)):
        row = largest_weight_row(planted_entry(ratio, seed=seed, at=(seed, 3 * seed)), seed=100 + seed)
        assert row["bound_ratio"] > 1 and row["num_traps"] >= 1, (seed, ratio, row)


def test_a_mean_makes_a_trap_without_any_large_entry():
    weight = gaussian(3) + 0.3  # non-zero mean: the trap is the constant matrix, no entry above the bound
    row = largest_weight_row(weight, seed=5)
    assert row["num_traps"] == 1 and row["bound_ratio"] < 0.5
    assert row["trap_mean_share"] > 0.9
    assert row["trap_pr_right"] > 0.5  # delocalized


@pytest.mark.parametrize("shape,shift", [((M, N), 0.0), ((M, N), 0.2), ((10, 200), 0.5), ((200, 784), 0.05)])
def test_the_trap_count_is_the_workflows(shape, shift):
    weight = gaussian(7, shape) + shift
    weight[1, 2] = 40.0
    found = layer_traps(weight, seed=1234)
    # the htsr rule's path (fastspectra.layer_columns), without its power-law fit
    rand_evals = random_esd_batch(weight[None], [1234])[0]
    expected = marchenko_pastur_fit(rand_evals, max(shape), min(shape))["ww_num_traps"]
    assert found.num_traps == expected


def test_the_shuffle_is_the_workflows_and_the_components_sum_back_to_w():
    from antigrok.spectra.fast_engine import shuffled_weights

    weight = gaussian(2, (10, 200))
    permutations = shuffle_permutations(weight.shape, 99)
    replicas = shuffled_weights(weight, 99)
    assert permutations.shape == (5, 2000)  # WeightWatcher: 5 replicas below 100 eigenvalues
    for permutation, replica in zip(permutations, replicas):
        np.testing.assert_array_equal(weight.reshape(-1)[permutation], replica.reshape(-1))
    svd = shuffled_svds(weight, 99)[0]
    total = sum(svd.mapped_back(i) for i in range(len(svd.singular_values)))
    np.testing.assert_allclose(total, weight, atol=1e-12)


def test_participation_fraction_known_values():
    assert participation_fraction(np.ones(50)) == pytest.approx(1.0)
    assert participation_fraction(np.eye(50)[3]) == pytest.approx(1 / 50)


# ----------------------------------------------------------------------------- removal


def test_removing_a_planted_constant_component_restores_the_matrix():
    noise = 0.1 * gaussian(4)
    weight = noise + 1.0  # a rank-one constant component: W_rand's trap
    traps = layer_traps(weight, seed=8)
    assert traps.trap_indices() == [0]
    restored = weight - component_sum(traps, [0])
    expected = noise - noise.mean()
    assert np.linalg.norm(restored - expected) / np.linalg.norm(expected) < 0.15
    # exact: under the same shuffle, W' has W_rand's singular values without the trap's
    svd = traps.replicas[0]
    shuffled = restored.reshape(-1)[svd.permutation].reshape(restored.shape)
    values = np.linalg.svd(shuffled, compute_uv=False)
    np.testing.assert_allclose(values[:-1], svd.singular_values[1:], rtol=1e-9)
    assert values[-1] < 1e-9


def test_removing_a_planted_entry_trap_restores_the_noise():
    weight = planted_entry(3.0)
    noise = gaussian(0)
    traps = layer_traps(weight, seed=8)
    restored = weight - component_sum(traps, traps.trap_indices())
    assert abs(restored[17, 33]) < 4.0  # the planted 3 x 24 is gone
    assert np.linalg.norm(restored - noise) / np.linalg.norm(noise) < 0.15


def test_js_divergence_known_values():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.all(js_divergence(p, p) == 0)
    disjoint = js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert float(disjoint) == pytest.approx(math.log(2))
    q = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    expected = jensenshannon([0.2, 0.3, 0.5], [0.5, 0.25, 0.25]) ** 2  # scipy: sqrt of JS, natural log
    assert float(js_divergence(p[:1], q)) == pytest.approx(expected, rel=1e-12)


def mlp_state(seed: int = 0, widths=(784, 40, 30, 10), shift: float = 0.0) -> dict:
    from antigrok.training.models import MLP

    torch.manual_seed(seed)
    state = {k: v.to(torch.float64) * 8 for k, v in MLP(list(widths)).state_dict().items()}
    state["fc1.weight"] = state["fc1.weight"] + shift
    return state


def tiny_dataset(seed: int = 0, train: int = 60, test: int = 80) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"x_train": torch.rand(train, 784, generator=generator), "y_train": torch.arange(train) % 10,
            "x_test": torch.rand(test, 784, generator=generator), "y_test": torch.arange(test) % 10}


def test_removal_rows_on_a_model_with_a_mean_trap():
    state = mlp_state(shift=0.5)  # fc1's entries get a mean: one trap
    settings = RemovalSettings(probe_inputs=50, draws=2)
    data = tiny_dataset()
    rows = pd.DataFrame(removal_rows(state, data, run_seed=0, step=100, settings=settings))
    baseline = rows[rows["condition"] == "none"].iloc[0]
    assert baseline["probe_js"] == 0 and baseline["test_js"] == 0 and baseline["probe_agreement"] == 1
    fc1 = rows[rows["scope"] == "fc1"]
    assert list(fc1["condition"]) == ["remove_traps", "replace_traps_random", "replace_traps_random",
                                      "perturb_random", "perturb_random", "remove_next_nontrap",
                                      "remove_random_nontrap", "remove_random_nontrap", "remove_traps_bias",
                                      "input_matched_traps", "input_matched_traps", "remove_mean", "remove_mean_bias"]
    # the equal-norm control changes W by as much as the removal (one trap: the same singular value)
    perturbed = fc1[fc1["condition"] == "perturb_random"]
    assert perturbed["relative_change"].to_numpy() == pytest.approx(fc1.iloc[0]["relative_change"])
    removed = fc1[fc1["condition"] == "remove_traps"].iloc[0]
    assert removed["num_components"] == 1 and removed["probe_js"] > 0
    # the removed component is the mean of fc1: its norm is the mean's, relative to fc1's
    weight = state["fc1.weight"].numpy()
    expected = abs(weight.mean()) * math.sqrt(weight.size) / np.linalg.norm(weight)
    assert removed["relative_change"] == pytest.approx(expected, rel=0.1)
    # the input-matched control: the removal's norm and the removal's load on the train inputs
    matched = fc1[fc1["condition"] == "input_matched_traps"]
    assert matched["relative_change"].to_numpy() == pytest.approx(removed["relative_change"], rel=1e-9)
    assert matched["relative_input_load"].to_numpy() == pytest.approx(removed["relative_input_load"], rel=1e-6)
    assert (perturbed["relative_input_load"] < 0.5 * removed["relative_input_load"]).all()  # i.i.d.: inputs average out
    # the bias takes over the mean's average effect: what is left is the spread of the inputs' sums
    by_condition = fc1.set_index("condition")
    compensated = by_condition.loc["remove_mean_bias"]
    residual = compensation_residual(mean_component(weight), data["x_train"].numpy().astype(np.float64))
    assert compensated["relative_preactivation_change"] / compensated["relative_input_load"] == pytest.approx(residual)
    assert by_condition.loc["remove_mean", "relative_preactivation_change"] == pytest.approx(
        by_condition.loc["remove_mean", "relative_input_load"])
    assert compensated["test_js"] < 0.1 * by_condition.loc["remove_mean", "test_js"]
    assert set(REMOVAL_COLUMNS) - {"edge", "edge_step", "step"} == set(rows.columns)


def test_the_bias_compensation_of_the_mean_is_exact_for_inputs_of_equal_sum():
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((30, 50)) + 0.4, rng.standard_normal(30)
    inputs = rng.random((200, 50))
    component = mean_component(weight)
    assert np.allclose(component, weight.mean()) and np.linalg.matrix_rank(component) == 1
    equal_sums = inputs / inputs.sum(axis=1, keepdims=True)
    new_bias = bias + bias_compensation(component, equal_sums)
    np.testing.assert_allclose(equal_sums @ (weight - component).T + new_bias, equal_sums @ weight.T + bias, atol=1e-12)
    assert compensation_residual(component, equal_sums) < 1e-12
    # otherwise the residual is the coefficient of variation of the sums: std / rms
    sums = inputs.sum(axis=1)
    assert compensation_residual(component, inputs) == pytest.approx(sums.std() / np.sqrt(np.mean(sums**2)), rel=1e-10)


def test_the_centred_traps_are_the_planted_entry_and_removing_them_keeps_the_mean():
    noise = gaussian(0)
    weight = planted_entry(3.0) + 0.3  # two traps: the mean and the entry
    traps = layer_traps(weight, seed=8)
    assert traps.num_traps == 2
    svd = centred_svd(weight, traps)
    indices = centred_trap_indices(svd, traps)
    assert len(indices) == 1  # the mean is not a centred trap
    # the workflow's num_traps_centered (fastspectra.centered_random_esd above the same threshold)
    from antigrok.spectra.fast_engine import centered_random_esd

    assert centred_trap_count(weight, traps) == int(np.sum(centered_random_esd(weight, 8) > traps.trap_threshold))
    restored = weight - component_sum(svd, indices)
    assert restored.mean() == pytest.approx(weight.mean() - weight[17, 33] / weight.size, abs=2e-3)  # the mean stays
    assert abs(restored[17, 33] - 0.3) < 4.0  # the planted 3 x 24 is gone
    assert np.linalg.norm(restored - 0.3 - noise) / np.linalg.norm(noise) < 0.15
    # the centred components with the mean sum back to W
    total = sum(svd.mapped_back(i) for i in range(len(svd.singular_values))) + weight.mean()
    np.testing.assert_allclose(total, weight, atol=1e-10)


def test_the_centred_count_is_traps_csv_on_a_committed_checkpoint():
    from antigrok.spectra.primitives import layer_seed

    run = REPO / "docs/reference/detector_study/runs/mnist_lr2e-3/wd0.0/seed0"
    state = read_state_dict(run / "checkpoints" / "step000100000.safetensors")
    committed = pd.read_csv(run / "traps.csv").query("step == 100000").set_index("layer")
    for layer in ("fc1", "fc2", "fc3"):
        weight = state[f"{layer}.weight"].numpy()
        traps = layer_traps(weight, layer_seed(0, 100000, layer))
        assert traps.num_traps == committed.loc[layer, "num_traps"]
        assert centred_trap_count(weight, traps) == committed.loc[layer, "num_traps_centered"]


def test_the_input_matched_direction_reaches_any_load_in_range():
    rng = np.random.default_rng(1)
    moment = SecondMoment(np.array([0.0, 0.5, 1.0, 4.0, 9.0]), np.linalg.qr(rng.standard_normal((5, 5)))[0])
    for target in (0.0, 0.3, 2.0, 8.9, 9.0):
        b = matched_direction(target, moment, rng)
        assert np.linalg.norm(b) == pytest.approx(1.0) and moment.quadratic(b) == pytest.approx(target, abs=1e-9)
    assert moment.quadratic(matched_direction(20.0, moment, rng)) == pytest.approx(9.0)  # clipped to the range


def test_an_input_matched_control_has_the_components_norm_and_load_not_its_direction():
    rng = np.random.default_rng(2)
    inputs = rng.random((300, 60))  # non-negative, as images
    weight = rng.standard_normal((20, 60)) + 0.5
    component = mean_component(weight)
    moment = SecondMoment.of(inputs)
    controls = [input_matched_rank_one(component, inputs, moment, rng) for _ in range(2)]
    for control in controls:
        assert np.linalg.norm(control) == pytest.approx(np.linalg.norm(component), rel=1e-12)
        assert input_load(control, inputs) == pytest.approx(input_load(component, inputs), rel=1e-6)
        cosine = np.sum(control * component) / (np.linalg.norm(control) * np.linalg.norm(component))
        assert abs(cosine) < 0.5  # a random left vector: not the constant matrix
    assert not np.allclose(controls[0], controls[1])
    # an i.i.d. matrix of the same norm loads far less: the inputs average out
    iid = rng.standard_normal(weight.shape)
    iid *= np.linalg.norm(component) / np.linalg.norm(iid)
    assert input_load(iid, inputs) < 0.3 * input_load(component, inputs)


def test_outputs_from_a_layer_equal_the_models():
    state, data = mlp_state(), tiny_dataset()
    model = mlp_from_state_dict(state)
    inputs = layer_inputs(state, data["x_test"])
    expected = model(data["x_test"].to(torch.float64))
    for layer in ("fc1", "fc2", "fc3"):
        torch.testing.assert_close(outputs_from(state, inputs[layer], layer), expected, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- prototypes, confusion, edges


def test_a_class_mean_singular_vector_is_recognized_as_that_class():
    data = tiny_dataset()
    means = class_means(data["x_train"], data["y_train"])
    template = means[7] - means.mean(axis=0)
    state = mlp_state()
    u = np.random.default_rng(0).standard_normal(40)
    state["fc1.weight"] = torch.from_numpy(50 * np.outer(u / np.linalg.norm(u), template / np.linalg.norm(template))
                                           + 0.001 * state["fc1.weight"].numpy())
    values, images = pixel_images(state, "fc1", 2)
    match = best_match(images[0], means)
    assert match["best_class_centered"] == 7 and match["corr_centered"] > 0.99
    rows = pd.DataFrame(prototype_rows(state, means, components=2, rows=3))
    assert set(rows.columns) == set(PROTOTYPE_COLUMNS) - {"edge", "edge_step", "step"}
    assert (rows[rows["kind"] == "top_row"]["best_class_centered"] == 7).all()


def test_back_projection_of_fc3_is_w1t_w2t_v():
    state = mlp_state()
    _, images = pixel_images(state, "fc3", 1)
    w1, w2, w3 = (state[f"fc{i}.weight"].numpy() for i in (1, 2, 3))
    v = np.linalg.svd(w3)[2][0]
    np.testing.assert_allclose(images[0], w1.T @ (w2.T @ v), atol=1e-10)


def test_a_model_that_always_says_three_has_all_predictions_in_one_class():
    state = mlp_state()
    state["fc3.weight"] = torch.zeros_like(state["fc3.weight"])
    state["fc3.bias"] = torch.eye(10, dtype=torch.float64)[3]
    data = tiny_dataset()
    rows = pd.DataFrame(confusion_rows(state, data["x_test"], data["y_test"], np.random.default_rng(0).permutation(784)))
    for _, part in rows.groupby("inputs"):
        counts = np.zeros((10, 10), dtype=int)
        counts[part["true_class"], part["predicted_class"]] = part["count"]
        assert top_class_share(counts) == (3, 1.0)
        assert counts.sum() == 80 and np.trace(counts) == 8
    assert set(rows.columns) == set(CONFUSION_COLUMNS) - {"edge", "edge_step", "step"}


def test_edge_checkpoints_are_nearest_in_log_step(tmp_path):
    phases = pd.DataFrame({"step": [0], "fit_step": [12], "peak_step": [400], "grokking_start_step": [50],
                           "collapse_step": [pd.NA], "anti_grokking_start_step": [pd.NA]})
    files = {step: tmp_path / f"step{step:09d}.pt" for step in (10, 100, 1000)}
    chosen = edge_checkpoints(phases, files, ["fit_step", "peak_step", "anti_grokking_start_step", "last"])
    assert [(c.edge, c.edge_step, c.step) for c in chosen] == [("fit_step", 12, 10), ("peak_step", 400, 1000),
                                                               ("last", 1000, 1000)]


def test_safetensors_and_torch_checkpoints_read_the_same(tmp_path):
    from safetensors.torch import save_file

    state = mlp_state()
    torch.save({"step": 5, "model": state}, tmp_path / "step000000005.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "step000000005.safetensors"))
    a, b = read_state_dict(tmp_path / "step000000005.pt"), read_state_dict(tmp_path / "step000000005.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in state)
    assert mlp_widths(a) == [784, 40, 30, 10]


def test_the_columns_are_documented():
    from test_docs import assert_documented_exactly


    assert_documented_exactly("largest_weight.csv", LARGEST_WEIGHT_COLUMNS)
    assert_documented_exactly("prototypes.csv", PROTOTYPE_COLUMNS)
    assert_documented_exactly("trap_removal.csv", REMOVAL_COLUMNS)
    assert_documented_exactly("shuffled_confusion.csv", CONFUSION_COLUMNS)


# ----------------------------------------------------------------------------- workflow and reference script


@pytest.mark.slow
def test_a_mechanism_key_reruns_only_the_rules_that_read_it(smoke_workdir):
    from conftest import dry_run_jobs, snakemake

    runs = len(list(smoke_workdir.glob("results/runs/mnist_mlp/*/*")))
    assert dry_run_jobs(snakemake(smoke_workdir, "-n").stdout) == {}
    jobs = dry_run_jobs(snakemake(smoke_workdir, "-n", overrides={"mechanism": {"probe_inputs": 500}}).stdout)
    assert jobs.get("trap_removal") == runs and {"trap_removal", "mechanism_tables", "figure_mechanism"} >= set(jobs) - {"all"}
    jobs = dry_run_jobs(snakemake(smoke_workdir, "-n", overrides={"mechanism": {"prototype_rows": 5}}).stdout)
    assert jobs.get("prototypes") == runs and {"prototypes", "mechanism_tables", "figure_mechanism"} >= set(jobs) - {"all"}


def synthetic_run(folder, steps=(0, 100, 1000, 10000)):
    """A finished run folder as a reference keeps it: train_log.csv and safetensors checkpoints."""
    from safetensors.torch import save_file

    (folder / "checkpoints").mkdir(parents=True)
    for index, step in enumerate(steps):
        state = mlp_state(seed=index, shift=0.3 * index)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "checkpoints" / f"step{step:09d}.safetensors"))
    log_steps = np.unique(np.round(np.logspace(0, 4, 60))).astype(int)
    train = np.clip(log_steps / 300, 0, 1)
    test = np.where(log_steps < 2000, 0.2 + 0.7 * train, 0.9 - 0.6 * np.log10(log_steps / 2000))
    pd.DataFrame({"step": log_steps, "train_loss": 1 - train, "train_acc": train, "test_loss": 1 - test,
                  "test_acc": test}).to_csv(folder / "train_log.csv", index=False)


@pytest.mark.skipif(not (__import__("conftest").have_mnist()), reason="offline MNIST copy not found")
def test_the_reference_script_on_safetensors_checkpoints(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, SHARED_DATA

    synthetic_run(tmp_path / "runs" / "toy" / "wd0.0" / "seed3")
    config = tmp_path / "config.yaml"  # small: the script's plumbing, not the numbers
    # read as the workflow reads a --configfile: it states its experiments in full
    toy = yaml.safe_load((REPO / "config.yaml").read_text())["experiments"]["mnist_mlp"]
    config.write_text(yaml.safe_dump({"experiments": {"toy": toy},
                                      "mechanism": {"probe_inputs": 50, "removal_draws": 1, "edges": ["peak_step", "last"]}}))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "mechanism_reference.py"), str(tmp_path / "runs"),
                             str(tmp_path / "out"), "--data-root", str(SHARED_DATA), "--config", str(config)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "out" / "runs" / "toy" / "wd0.0" / "seed3"
    largest = pd.read_csv(run / "largest_weight.csv")
    assert list(largest.columns) == LARGEST_WEIGHT_COLUMNS and len(largest) == 4 * 3
    removal = pd.read_csv(run / "trap_removal.csv")
    assert {"peak_step", "anti_grokking_start_step", "last"} == set(removal["edge"])
    assert (removal[removal["condition"] == "remove_traps"]["num_components"] >= 1).all()
    provenance = (tmp_path / "out" / "PROVENANCE.md").read_text()
    assert "toy/wd0.0/seed3" in provenance and "wall time" in provenance
    assert "toy: mlp 784-200-200-10, adamw lr 0.0005, 10000000 steps" in provenance
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == 4

