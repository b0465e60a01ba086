"""The modular-addition experiment: its dataset, its transformer, one warm-up step, and learning."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from antigrok.training.data import DataError, prepare_dataset, prepare_modadd
from antigrok.training.models import Transformer, build_model, relu_modules
from antigrok.training.train import RunSpec, learning_rate, load_checkpoint, train_run


def transformer_cfg(modulus: int, d_model: int = 16, num_heads: int = 4, num_layers: int = 1, **options) -> dict:
    return {"name": "transformer", "d_vocab": modulus + 1, "n_ctx": 3, "d_model": d_model,
            "num_heads": num_heads, "d_head": d_model // num_heads, "d_mlp": 4 * d_model,
            "num_layers": num_layers, **options}


def experiment_cfg(modulus: int, steps: int, d_model: int = 16) -> dict:
    """config.yaml's modadd_transformer at a small size."""
    return {
        "dataset": {"name": "modadd", "modulus": modulus, "train_fraction": 0.3, "split_seed": 0},
        "model": transformer_cfg(modulus, d_model),
        "loss": "cross_entropy",
        "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-8, "warmup_steps": 10},
        "weight_decays": [1.0], "seeds": [0], "steps": steps, "batch_size": modulus**2,
        "dtype": "float64",
    }


# Tiny models: a second intra-op thread only adds contention on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair_index(tokens: torch.Tensor, modulus: int) -> torch.Tensor:
    return tokens[:, 0] * modulus + tokens[:, 1]


# ----------------------------------------------------------------------------- dataset


def test_split_is_deterministic_disjoint_and_covers_every_pair_once():
    p = 11
    first, again = prepare_modadd(p, 0.3, split_seed=4), prepare_modadd(p, 0.3, split_seed=4)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(first[key], again[key]), key
    assert len(first["x_train"]) == int(0.3 * p * p) == 36
    train, test = pair_index(first["x_train"], p), pair_index(first["x_test"], p)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(p * p))
    assert not torch.equal(prepare_modadd(p, 0.3, split_seed=5)["x_train"], first["x_train"])


def test_examples_are_a_b_equals_with_the_sum_mod_p_as_label():
    p = 7
    data = prepare_modadd(p, 0.5, split_seed=0)
    for x, y in ((data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])):
        assert x.dtype == torch.int64 and y.dtype == torch.int64 and x.shape[1] == 3
        assert torch.all(x[:, 2] == p)  # the '=' token
        assert torch.all((x[:, :2] >= 0) & (x[:, :2] < p))
        assert torch.equal(y, (x[:, 0] + x[:, 1]) % p)
    assert data["num_classes"] == p
    assert data["meta"]["train_indices"] == pair_index(data["x_train"], p).tolist()


def test_split_seed_0_is_nanda_et_al_split():
    """Their gen_train_test: random.seed(seed); random.shuffle of (i, j, p) in row-major order."""
    p, fraction = 113, 0.3
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.Random(0).shuffle(pairs)
    data = prepare_modadd(p, fraction, split_seed=0)
    cut = int(fraction * len(pairs))
    assert [tuple(row) for row in data["x_train"].tolist()] == pairs[:cut]
    assert [tuple(row) for row in data["x_test"].tolist()] == pairs[cut:]


def test_prepare_dataset_reads_the_modadd_config():
    data = prepare_dataset({"name": "modadd", "modulus": 5, "train_fraction": 0.4, "split_seed": 1}, {})
    assert torch.equal(data["x_train"], prepare_modadd(5, 0.4, 1)["x_train"])


@pytest.mark.parametrize("fraction", [0.01, 1.0])
def test_a_fraction_that_empties_train_or_test_is_an_error(fraction):
    with pytest.raises(DataError, match="train_fraction"):
        prepare_modadd(5, fraction, 0)


# ----------------------------------------------------------------------------- model


def test_every_weight_matrix_is_a_named_linear_or_embedding():
    model = build_model(transformer_cfg(113, d_model=128), "float32", seed=0)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes == {
        "embed.weight": (114, 128), "pos_embed.weight": (3, 128),
        "blocks.0.attn.q.weight": (128, 128), "blocks.0.attn.k.weight": (128, 128),
        "blocks.0.attn.v.weight": (128, 128), "blocks.0.attn.o.weight": (128, 128),
        "blocks.0.mlp.fc_in.weight": (512, 128), "blocks.0.mlp.fc_in.bias": (512,),
        "blocks.0.mlp.fc_out.weight": (128, 512), "blocks.0.mlp.fc_out.bias": (128,),
        "unembed.weight": (114, 128),
    }
    modules = dict(model.named_modules())
    assert isinstance(modules["embed"], nn.Embedding) and isinstance(modules["pos_embed"], nn.Embedding)
    for name in ("blocks.0.attn.q", "blocks.0.attn.o", "blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out", "unembed"):
        assert isinstance(modules[name], nn.Linear), name
    assert list(relu_modules(model)) == ["blocks.0.mlp.act"]


def test_init_follows_nanda_et_al_scales_and_the_seed():
    model = build_model(transformer_cfg(113, d_model=128), "float64", seed=3)
    state = model.state_dict()
    for name in ("embed.weight", "blocks.0.attn.q.weight", "blocks.0.mlp.fc_in.weight",
                 "blocks.0.mlp.fc_out.weight"):
        assert state[name].std().item() == pytest.approx(128**-0.5, rel=0.05), name
    assert state["unembed.weight"].std().item() == pytest.approx(114**-0.5, rel=0.05)
    assert torch.all(state["blocks.0.mlp.fc_in.bias"] == 0)
    again = build_model(transformer_cfg(113, d_model=128), "float64", seed=3).state_dict()
    other = build_model(transformer_cfg(113, d_model=128), "float64", seed=4).state_dict()
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert not torch.equal(state["embed.weight"], other["embed.weight"])


def test_a_transformer_config_without_its_sizes_is_an_error_that_names_them():
    with pytest.raises(ValueError, match="d_vocab, n_ctx"):
        build_model({"name": "transformer", "d_model": 8, "num_heads": 2, "d_head": 4, "d_mlp": 16,
                     "num_layers": 1})


def layer_norm(x: torch.Tensor, module: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm written out: (x - mean) / sqrt(biased variance + eps) * gain + bias."""
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps) * module.weight + module.bias


def reference_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Nanda et al.'s forward pass, every position through every block, written out with einsum
    (with ``layer_norm: pre``: each branch's input normalised, and the residual before the unembedding)."""
    x = model.embed.weight[tokens] + model.pos_embed.weight[: tokens.shape[1]]
    length = tokens.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    for block in model.blocks:
        attn, heads, d_head = block.attn, block.attn.num_heads, block.attn.d_head
        q, k, v = (m.weight.view(heads, d_head, -1) for m in (attn.q, attn.k, attn.v))
        h = layer_norm(x, block.ln1) if model.pre_layer_norm else x
        queries = torch.einsum("ihd,bpd->biph", q, h)
        keys = torch.einsum("ihd,bpd->biph", k, h)
        values = torch.einsum("ihd,bpd->biph", v, h)
        scores = torch.einsum("biph,biqh->biqp", keys, queries) / math.sqrt(d_head)
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        z = torch.einsum("biph,biqp->biqh", values, pattern)
        x = x + torch.einsum("df,bqf->bqd", attn.o.weight, z.permute(0, 2, 1, 3).flatten(2))
        h = layer_norm(x, block.ln2) if model.pre_layer_norm else x
        hidden = F.relu(h @ block.mlp.fc_in.weight.T + block.mlp.fc_in.bias)
        x = x + hidden @ block.mlp.fc_out.weight.T + block.mlp.fc_out.bias
    if model.pre_layer_norm:
        x = layer_norm(x, model.ln_final)
    return (x @ model.unembed.weight.T)[:, -1]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_on_known_tokens_equals_the_full_computation(num_layers):
    p = 7
    model = build_model(transformer_cfg(p, d_model=16, num_layers=num_layers), "float64", seed=1)
    tokens = torch.tensor([[0, 0, p], [3, 4, p], [6, 6, p], [4, 3, p]])
    logits = model(tokens)
    assert logits.shape == (4, p + 1)
    torch.testing.assert_close(logits, reference_logits(model, tokens), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(logits[1], logits[2])  # the answer depends on a and b


@pytest.mark.parametrize("num_layers", [1, 4])
def test_pre_layer_norm_forward_equals_the_full_computation(num_layers):
    p = 7
    model = build_model(transformer_cfg(p, d_model=16, num_layers=num_layers, layer_norm="pre"), "float64", seed=1)
    with torch.no_grad():  # gains and biases away from their init (1, 0), so that the test sees them
        for name, parameter in model.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    tokens = torch.tensor([[0, 0, p], [3, 4, p], [6, 6, p], [4, 3, p]])
    torch.testing.assert_close(model(tokens), reference_logits(model, tokens), rtol=1e-12, atol=1e-12)


def test_pre_layer_norm_adds_only_one_dimensional_layer_norms_and_keeps_the_other_init():
    plain = build_model(transformer_cfg(113, d_model=128), "float64", seed=3).state_dict()
    pre = build_model(transformer_cfg(113, d_model=128, layer_norm="pre"), "float64", seed=3).state_dict()
    added = sorted(set(pre) - set(plain))
    assert added == ["blocks.0.ln1.bias", "blocks.0.ln1.weight", "blocks.0.ln2.bias", "blocks.0.ln2.weight",
                     "ln_final.bias", "ln_final.weight"]
    assert all(pre[name].ndim == 1 for name in added)
    assert torch.all(pre["ln_final.weight"] == 1) and torch.all(pre["blocks.0.ln1.bias"] == 0)
    assert all(torch.equal(pre[name], plain[name]) for name in plain)  # the same draws, in the same order
    none = build_model(transformer_cfg(113, d_model=128, layer_norm="none"), "float64", seed=3).state_dict()
    assert none.keys() == plain.keys()


def test_float64_logits_with_float32_weights():
    """The loss sees float64 logits (no float32 softmax underflow), the weights and their gradients stay float32."""
    p = 7
    cfg = transformer_cfg(p, d_model=16, logits_dtype="float64")
    model = build_model(cfg, "float32", seed=0)
    tokens = torch.tensor([[1, 2, p], [3, 4, p]])
    logits = model(tokens)
    assert logits.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([3, 0])).backward()
    assert all(parameter.grad.dtype == torch.float32 for parameter in model.parameters())
    plain = build_model(transformer_cfg(p, d_model=16), "float32", seed=0)
    torch.testing.assert_close(logits, plain(tokens).double())  # the same float32 logits, cast
    # at a margin of 25 float32's loss and correct-class gradient are exactly 0 (softmax collapse,
    # past ~17), float64's are not
    for dtype, collapsed in ((torch.float32, True), (torch.float64, False)):
        confident = torch.tensor([[25.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
        loss = F.cross_entropy(confident, torch.tensor([0]))
        loss.backward()
        assert (loss.item() == 0.0) is collapsed and (confident.grad[0, 0].item() == 0.0) is collapsed, dtype


def test_transformer_options_are_refused_for_an_mlp_and_unknown_values_are_named():
    with pytest.raises(ValueError, match="model.logits_dtype is a transformer option"):
        build_model({"name": "mlp", "widths": [4, 3], "logits_dtype": "float64"})
    with pytest.raises(ValueError, match="model.layer_norm is 'post'"):
        build_model(transformer_cfg(5, d_model=8, layer_norm="post"))


@torch.no_grad()
def test_forward_with_hand_set_weights():
    """Only the residual path left (attention and MLP zeroed): logits = U (E[=] + P[2])."""
    p = 5
    model = build_model(transformer_cfg(p, d_model=8), "float64", seed=0)
    for name, parameter in model.named_parameters():
        if name.startswith("blocks."):
            parameter.zero_()
    model.embed.weight.copy_(torch.arange(6 * 8, dtype=torch.float64).view(6, 8) / 10)
    model.pos_embed.weight.fill_(1.0)
    model.unembed.weight.copy_(torch.eye(6, 8, dtype=torch.float64))
    logits = model(torch.tensor([[1, 2, p], [4, 0, p]]))
    expected = torch.tensor([4.0, 4.1, 4.2, 4.3, 4.4, 4.5], dtype=torch.float64) + 1.0  # row 5 of E, + 1
    torch.testing.assert_close(logits, expected.expand(2, 6))


# ----------------------------------------------------------------------------- training


def test_warmup_factor_is_min_step_over_10():
    optimizer_cfg = experiment_cfg(5, steps=1)["optimizer"]
    factors = [learning_rate(optimizer_cfg, step) / 1e-3 for step in range(13)]
    assert factors == pytest.approx([min(step / 10, 1.0) for step in range(13)], abs=1e-15)


def full_batch_gradients(model, data) -> dict[str, torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(data["x_train"]), data["y_train"]).backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def test_first_two_adamw_steps_against_hand_computed_values(tmp_path):
    """Step 0 -> 1 has lr 0 (warm-up factor 0/10): the weights stay, Adam's moments take g.
    Step 1 -> 2 (factor 1/10) sees the same g again, so m_hat = g and v_hat = g^2 exactly and
    AdamW gives  w2 = w0 (1 - lr/10 * wd) - lr/10 * g / (|g| + eps)."""
    p, weight_decay = 5, 1.0
    cfg = experiment_cfg(p, steps=2, d_model=8)
    data = prepare_modadd(p, 0.3, 0)
    spec = RunSpec("modadd_transformer", cfg, weight_decay, seed=0, checkpoint_per_decade=20, log_per_decade=20)
    train_run(spec, data, tmp_path, device="cpu", progress=False)
    w = {step: load_checkpoint(tmp_path / "checkpoints" / f"step{step:09d}.pt")["model"] for step in (0, 1, 2)}

    for name in w[0]:
        assert torch.equal(w[1][name], w[0][name]), name

    model = build_model(cfg["model"], "float64")
    model.load_state_dict(w[0])
    gradients = full_batch_gradients(model, data)
    lr = learning_rate(cfg["optimizer"], 1)
    assert lr == pytest.approx(1e-4)
    for name, g in gradients.items():
        expected = w[0][name] * (1 - lr * weight_decay) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(w[2][name], expected, rtol=1e-9, atol=1e-12, msg=name)
    assert any((w[2][name] - w[0][name]).abs().max() > 5e-5 for name in w[0])  # it did move


def test_a_short_cpu_run_learns_the_training_pairs(tmp_path):
    cfg = experiment_cfg(23, steps=200, d_model=32)
    data = prepare_modadd(23, 0.3, 0)
    spec = RunSpec("modadd_transformer", cfg, 1.0, seed=0, checkpoint_per_decade=2, log_per_decade=5)
    log = train_run(spec, data, tmp_path, device="cpu", progress=False)
    assert log["train_acc"].iloc[0] < 0.2
    assert log["train_acc"].iloc[-1] >= 0.9
    assert log["train_loss"].iloc[-1] < 0.5 * log["train_loss"].iloc[0]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir())[-1] == "step000000200.pt"
