"""Progress measures (paper Appendix B, Eqs. 7-10) against values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from antigrok.study.progress import (
    ProgressSettings,
    abs_weight_entropy,
    activation_sparsity,
    circuit_complexity,
    headline_module,
    l2_norm,
    progress_for_checkpoints,
    pruned_copy,
    pruning_masks,
    weight_matrices,
)
from antigrok.training.models import build_model


class TinyMLP(nn.Module):
    """2 -> 2 -> 2 -> 2 with hand-set weights; two ReLU modules, like the paper's MLP."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(2, 2), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(2, 2), nn.ReLU()
        self.fc3 = nn.Linear(2, 2)
        self.double()  # before the hand values go in, so they are float64 values
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
            self.fc1.bias.copy_(torch.tensor([0.0, -1.0]))
            self.fc2.weight.copy_(torch.eye(2))
            self.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
            self.fc3.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -0.25]]))
            self.fc3.bias.zero_()

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


# Inputs and the ReLU outputs they give, by hand:
#   fc1: (1,0) -> (1, 1); (0,1) -> (-1, -1) -> relu (0, 0); (1,1) -> (0, 1)
#   act1 = [[1, 1], [0, 0], [0, 1]];  act2 = act1 + (0.5, 0) = [[1.5, 1], [0.5, 0], [0.5, 1]]
TINY_INPUTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)


class TinyTokenModel(nn.Module):
    """Embedding -> ReLU -> Linear on int64 tokens: activations (batch, positions, width)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(3, 2)
        self.act = nn.ReLU()
        self.unembed = nn.Linear(2, 3, bias=False)
        self.double()
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 2.0], [-3.0, 0.5]]))
            self.unembed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))

    def forward(self, tokens):
        return self.unembed(self.act(self.embed(tokens)))


def random_mlp(seed=0):
    return build_model({"name": "mlp", "widths": [6, 5, 4, 3], "init_scale": 2.0}, "float64", seed=seed).eval()


def random_inputs(num=40, features=6, seed=0):
    return torch.rand(num, features, generator=torch.Generator().manual_seed(seed))


def hand_kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) with the math module, for one example."""
    p = [math.exp(v) / sum(math.exp(u) for u in p_logits) for v in p_logits]
    q = [math.exp(v) / sum(math.exp(u) for u in q_logits) for v in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# --- Eq. 7 -----------------------------------------------------------------------------------------

def test_weight_matrices_are_the_2d_weights_by_layer_name():
    assert list(weight_matrices(TinyMLP())) == ["fc1", "fc2", "fc3"]
    assert list(weight_matrices(TinyTokenModel())) == ["embed", "unembed"]


def test_l2_norm_by_hand():
    weights_squared = (1 + 1 + 4 + 0) + (1 + 0 + 0 + 1) + (0.25 + 0 + 0 + 0.0625)
    biases_squared = (0 + 1) + (0.25 + 0) + 0
    model = TinyMLP()
    assert l2_norm(model) == pytest.approx(math.sqrt(weights_squared), rel=1e-14)
    assert l2_norm(model, include_biases=True) == pytest.approx(math.sqrt(weights_squared + biases_squared), rel=1e-14)
    embedding_squared = (1 + 1) + (0 + 4) + (9 + 0.25) + (1 + 0) + (0 + 1) + (1 + 1)
    assert l2_norm(TinyTokenModel()) == pytest.approx(math.sqrt(embedding_squared), rel=1e-14)


# --- Eq. 8 -----------------------------------------------------------------------------------------

def test_activation_sparsity_by_hand():
    model = TinyMLP()
    # tau = 0.5: act1 [[1,1],[0,0],[0,1]] has 3 of 6 below; act2 [[1.5,1],[0.5,0],[0.5,1]] has 1 of 6
    assert activation_sparsity(model, TINY_INPUTS, 0.5) == pytest.approx({"act1": 3 / 6, "act2": 1 / 6})
    # tau = 1 (strictly below): act1 still 3 of 6; act2 [.., 0.5, 0, 0.5, ..] has 3 of 6
    assert activation_sparsity(model, TINY_INPUTS, 1.0) == pytest.approx({"act1": 3 / 6, "act2": 3 / 6})
    # the chunking of the forward passes does not change the average over the whole set
    assert activation_sparsity(model, TINY_INPUTS, 0.5, chunk=2) == pytest.approx({"act1": 3 / 6, "act2": 1 / 6})


def test_activation_sparsity_on_tokens_averages_over_positions():
    # tokens [[0,1],[2,2]] -> relu(embed): (1,0) (0,2) | (0,0.5) (0,0.5): 6 of 8 entries below 1
    tokens = torch.tensor([[0, 1], [2, 2]], dtype=torch.int64)
    assert activation_sparsity(TinyTokenModel(), tokens, 1.0) == {"act": 6 / 8}


def test_activation_sparsity_is_monotone_in_tau():
    model, inputs = random_mlp(), random_inputs()
    taus = [-1.0, 0.0, 1e-12, 0.1, 0.5, 1.0, 2.0, 5.0, 1e9]
    values = [activation_sparsity(model, inputs, tau) for tau in taus]
    for name in ("act1", "act2"):
        series = [value[name] for value in values]
        assert series == sorted(series), f"{name}: {series}"
        assert series[0] == 0.0 and series[-1] == 1.0
        assert len(set(series)) > 2  # the sweep really moves through the activations


def test_headline_module_is_the_first_relu_unless_configured():
    model = TinyMLP()
    assert headline_module(model) == "act1"
    assert headline_module(model, "act2") == "act2"
    with pytest.raises(ValueError, match="act1"):
        headline_module(model, "fc1")


# --- Eq. 9 -----------------------------------------------------------------------------------------

def test_abs_weight_entropy_by_hand():
    eps = 1e-8
    expected = {
        # |w| = 1, 1, 2, 0: zero contributes 0 (finite thanks to eps)
        "fc1": -(2 * 1 * math.log(1 + eps) + 2 * math.log(2 + eps)),
        "fc2": -(2 * 1 * math.log(1 + eps)),
        # |w| = 0.5, 0.25: 0.5 log 2 + 0.5 log 2 = log 2 (at eps = 0)
        "fc3": -(0.5 * math.log(0.5 + eps) + 0.25 * math.log(0.25 + eps)),
    }
    entropy = abs_weight_entropy(TinyMLP(), eps)
    assert entropy == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert abs_weight_entropy(TinyMLP(), 0.0)["fc3"] == pytest.approx(math.log(2), rel=1e-14)
    assert math.isfinite(abs_weight_entropy(TinyMLP(), 0.0)["fc1"])


# --- Eq. 10 ----------------------------------------------------------------------------------------

class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, 0.1], [-1.0, 3.0]], dtype=torch.float64))
            self.fc.bias.copy_(torch.tensor([0.0, 0.05], dtype=torch.float64))  # < 0.1: biases are never pruned

    def forward(self, x):
        return self.fc(x)


def test_circuit_complexity_by_hand():
    # 25% of the 4 weights by magnitude = the 0.1; the bias 0.05 stays.
    # x = (1, 1): full (2.1, 2.05), pruned (2, 2.05);  x = (0, 1): full (0.1, 3.05), pruned (0, 3.05)
    inputs = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    expected = hand_kl([2.1, 2.05], [2.0, 2.05]) + hand_kl([0.1, 3.05], [0.0, 3.05])
    value = circuit_complexity(OneLinear(), inputs, prune_fraction=0.25, prune_mode="magnitude")
    assert value == pytest.approx(expected, rel=1e-10)
    assert value > 0


def test_circuit_complexity_on_tokens_sums_over_positions():
    # magnitude pruning of 1 of the 12 weights: a zero of embed (|w| = 0, first in parameter order),
    # so nothing changes; 3 of 12 (round(0.25 * 12)) also removes unembed's two zeros -> still 0;
    # 4 of 12 adds the smallest nonzero |w| = 0.5 (embed[2, 1]), which moves token 2 only.
    tokens = torch.tensor([[0, 1], [2, 2]], dtype=torch.int64)
    model = TinyTokenModel()
    assert circuit_complexity(model, tokens, 3 / 12, "magnitude") == 0.0
    # token 2: relu(embed) (0, 0.5) -> logits (0, 0.5, 0.5); pruned (0, 0, 0); two positions hold it
    expected = 2 * hand_kl([0.0, 0.5, 0.5], [0.0, 0.0, 0.0])
    assert circuit_complexity(model, tokens, 4 / 12, "magnitude") == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mode", ["random", "magnitude"])
def test_circuit_complexity_is_zero_when_nothing_is_pruned(mode):
    assert circuit_complexity(random_mlp(), random_inputs(), prune_fraction=0.0, prune_mode=mode) == 0.0


def test_circuit_complexity_is_reproducible_for_a_seed_and_changes_with_another():
    inputs = random_inputs()
    first = circuit_complexity(random_mlp(), inputs, 0.1, "random", prune_seed=0)
    again = circuit_complexity(random_mlp(), inputs, 0.1, "random", prune_seed=0)
    other = circuit_complexity(random_mlp(), inputs, 0.1, "random", prune_seed=1)
    assert first == again
    assert other != first
    assert first > 0 and other > 0


def test_random_pruning_drops_the_fraction_of_weight_entries_only():
    model = random_mlp()
    masks = pruning_masks(model, 0.1, "random", seed=3)
    total = sum(mask.numel() for mask in masks.values())
    assert sum(int((~mask).sum()) for mask in masks.values()) == round(0.1 * total)
    pruned = pruned_copy(model, masks)
    for name, parameter in pruned.named_parameters():
        original = dict(model.named_parameters())[name]
        if name.endswith(".bias"):
            assert torch.equal(parameter, original)
        else:
            assert torch.equal(parameter, original * masks[name.removesuffix(".weight")])


def test_magnitude_pruning_drops_the_smallest_weights_over_all_matrices():
    model = TinyMLP()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[0.3, -5.0], [2.0, 0.02]]))
        model.fc2.weight.copy_(torch.tensor([[-0.01, 4.0], [1.0, 3.0]]))
        model.fc3.weight.copy_(torch.tensor([[0.5, 6.0], [-0.2, 7.0]]))
    # 25% of 12 = 3: |w| = 0.01 (fc2), 0.02 (fc1), 0.2 (fc3); the next, 0.3, stays
    masks = pruning_masks(model, 0.25, "magnitude")
    dropped = {(layer, tuple(index.tolist())) for layer, mask in masks.items() for index in (~mask).nonzero()}
    assert dropped == {("fc2", (0, 0)), ("fc1", (1, 1)), ("fc3", (1, 0))}


def test_pruning_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="random"):
        pruning_masks(TinyMLP(), 0.1, "largest")


# --- Checkpoints to progress.csv -------------------------------------------------------------------

EXPECTED_COLUMNS = [
    "step", "l2_norm", "activation_sparsity", "activation_sparsity_act1", "activation_sparsity_act2",
    "activation_sparsity_mean", "abs_weight_entropy", "abs_weight_entropy_fc1", "abs_weight_entropy_fc2",
    "abs_weight_entropy_fc3", "circuit_complexity",
]


def write_checkpoint(path, model_config, step, seed):
    model = build_model(model_config, "float64", seed=seed)
    torch.save({"format": "antigrok.checkpoint/1", "step": step, "model": model.state_dict(),
                "experiment": "tiny", "weight_decay": 0.0, "seed": 0, "model_config": model_config,
                "dtype": "float64"}, path)
    return model


def test_progress_for_checkpoints_rows_and_columns(tmp_path):
    model_config = {"name": "mlp", "widths": [6, 5, 4, 3], "init_scale": 2.0}
    models = {step: write_checkpoint(tmp_path / f"step{step:09d}.pt", model_config, step, seed=step)
              for step in (10, 0, 3)}
    dataset = {"x_train": random_inputs(), "y_train": torch.zeros(40, dtype=torch.int64)}
    settings = {"sparsity_threshold": 0.2, "prune_seed": 7}
    table = progress_for_checkpoints(sorted(tmp_path.glob("*.pt")), dataset, settings, progress=False)

    assert list(table.columns) == EXPECTED_COLUMNS
    assert table["step"].tolist() == [0, 3, 10]
    row = table.set_index("step").loc[3]
    model = models[3].eval()
    sparsity = activation_sparsity(model, dataset["x_train"], 0.2)
    entropy = abs_weight_entropy(model, 1e-8)
    assert row["l2_norm"] == pytest.approx(l2_norm(model), rel=1e-14)
    assert row["activation_sparsity"] == row["activation_sparsity_act1"] == sparsity["act1"]
    assert row["activation_sparsity_mean"] == pytest.approx((sparsity["act1"] + sparsity["act2"]) / 2)
    assert row["abs_weight_entropy"] == pytest.approx(sum(entropy.values()), rel=1e-14)
    assert row["abs_weight_entropy_fc2"] == pytest.approx(entropy["fc2"], rel=1e-14)
    assert row["circuit_complexity"] == circuit_complexity(model, dataset["x_train"], 0.1, "random", 7)


def test_settings_reject_unknown_keys_and_modes():
    with pytest.raises(ValueError, match="sparsity_treshold"):
        ProgressSettings.from_mapping({"sparsity_treshold": 1.0})
    with pytest.raises(ValueError, match="prune_mode"):
        ProgressSettings.from_mapping({"prune_mode": "largest"})
    assert ProgressSettings.from_mapping(None) == ProgressSettings()


# --- Workflow --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_changing_a_progress_setting_reruns_progress_not_training(smoke_workdir):
    from conftest import dry_run_jobs, snakemake

    runs = sorted(smoke_workdir.glob("results/runs/*/*/*"))
    assert runs, "the smoke run has no run directories"
    for run in runs:
        table = pd.read_csv(run / "progress.csv")
        if run.parts[-3] == "mnist_mlp":
            assert list(table.columns) == EXPECTED_COLUMNS
        else:  # the transformer: same headline columns, its own module names
            assert {"step", "l2_norm", "activation_sparsity", "activation_sparsity_mean", "abs_weight_entropy",
                    "circuit_complexity"} <= set(table.columns), list(table.columns)
        assert len(table) == len(list((run / "checkpoints").glob("step*.pt")))
        assert table.notna().all().all(), run

    unchanged = snakemake(smoke_workdir, "-n")
    assert dry_run_jobs(unchanged.stdout + unchanged.stderr) == {}

    result = snakemake(smoke_workdir, "-n", overrides={"progress": {"sparsity_threshold": 0.5}})
    jobs = dry_run_jobs(result.stdout + result.stderr)
    assert jobs.get("progress") == len(runs), jobs
    assert not {"prepare_data", "train", "spectra", "traps"} & set(jobs), jobs
