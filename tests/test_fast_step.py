"""The fast CPU step (antigrok.training.fast_mlp_step) against the plain loop (autograd + torch.optim.AdamW).

Resume after a kill, for both steps, is tested in test_train.py (test_resume_after_sigkill_is_bit_identical).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from snakemake.utils import validate

from antigrok.training.fast_mlp_step import FastMLPStep
from antigrok.training.models import build_model
from antigrok.training.train import (
    BatchOrder,
    PlainStep,
    RunSpec,
    load_checkpoint,
    make_optimizer,
    make_step,
    train_run,
)
from conftest import REPO, SHARED_DATA, requires_mnist

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-9  # the bar: equal to the plain loop to 1e-9 relative after 1000 float64 steps
ZERO_COLUMNS = [0, 1, 7, 8, 15, 23, 31]  # zero in every training example, like MNIST's border pixels

EXPERIMENT = {
    "dataset": {"name": "mnist"},
    "model": {"name": "mlp", "widths": [32, 24, 16, 5], "init_scale": 8.0},
    "loss": "mse",
    "optimizer": {"name": "adamw", "lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_steps": 20},
    "weight_decays": [0.0, 0.01],
    "seeds": [0],
    "steps": 1000,
    "batch_size": 16,
    "dtype": "float64",
}


def sparse_dataset(num_train=64, num_test=32, features=32, classes=5, zero_columns=ZERO_COLUMNS, seed=0):
    """MNIST-like: mostly zeros, some columns zero in every training example but not in the test set."""
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.rand(num_train, features, generator=generator)
    x_train[x_train < 0.4] = 0.0
    x_train[:, zero_columns] = 0.0
    return {
        "x_train": x_train,
        "y_train": torch.randint(0, classes, (num_train,), generator=generator),
        "x_test": torch.rand(num_test, features, generator=generator),
        "y_test": torch.randint(0, classes, (num_test,), generator=generator),
        "num_classes": classes,
    }


def spec_for(experiment=EXPERIMENT, weight_decay=0.01, seed=0):
    return RunSpec("small", experiment, weight_decay, seed, checkpoint_per_decade=4, log_per_decade=10)


def assert_runs_match(expected_dir, actual_dir, rtol, skipped_columns=()):
    """Same train_log.csv within ``rtol``; the same checkpoints, each tensor within ``rtol`` of its
    largest magnitude, and fc1's ``skipped_columns`` bit for bit."""
    expected_log = pd.read_csv(expected_dir / "train_log.csv")
    actual_log = pd.read_csv(actual_dir / "train_log.csv")
    pd.testing.assert_frame_equal(actual_log, expected_log, rtol=rtol, atol=0)
    names = sorted(p.name for p in (expected_dir / "checkpoints").glob("step*.pt"))
    assert names and sorted(p.name for p in (actual_dir / "checkpoints").glob("step*.pt")) == names
    for name in names:
        expected = load_checkpoint(expected_dir / "checkpoints" / name)
        actual = load_checkpoint(actual_dir / "checkpoints" / name)
        assert {k: v for k, v in actual.items() if k != "model"} == {k: v for k, v in expected.items() if k != "model"}
        assert list(actual["model"]) == list(expected["model"])
        for key, tensor in expected["model"].items():
            difference = (actual["model"][key] - tensor).abs().max().item()
            assert difference <= rtol * tensor.abs().max().item(), (name, key, difference)
        columns = list(skipped_columns)
        assert torch.equal(actual["model"]["fc1.weight"][:, columns], expected["model"]["fc1.weight"][:, columns]), name


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fast_step_equals_plain_loop_after_1000_steps(tmp_path, caplog, weight_decay):
    dataset = sparse_dataset()
    spec = spec_for(weight_decay=weight_decay)
    train_run(spec, dataset, tmp_path / "plain", device="cpu", progress=False, cpu_engine="plain")
    with caplog.at_level("INFO", logger="antigrok"):
        train_run(spec, dataset, tmp_path / "fast", device="cpu", progress=False, cpu_engine="fast")
    assert "with the fast step" in caplog.text
    assert_runs_match(tmp_path / "plain", tmp_path / "fast", RTOL, skipped_columns=ZERO_COLUMNS)
    first = load_checkpoint(tmp_path / "fast" / "checkpoints" / "step000000000.pt")["model"]["fc1.weight"]
    last = load_checkpoint(tmp_path / "fast" / "checkpoints" / "step000001000.pt")["model"]["fc1.weight"]
    if weight_decay == 0:  # the skipped columns never move, the others do
        assert torch.equal(last[:, ZERO_COLUMNS], first[:, ZERO_COLUMNS])
    else:  # decayed, (1 - lr wd) per step
        assert (last[:, ZERO_COLUMNS].abs() < first[:, ZERO_COLUMNS].abs()).all()
    assert not torch.equal(last[:, 2], first[:, 2])


@requires_mnist
def test_fast_step_equals_plain_loop_on_the_mnist_subset(tmp_path):
    """The paper's MLP on the real subset (589 of its 784 pixels are ever non-zero), lr 5e-3, wd 0.01."""
    from antigrok.training.data import prepare_mnist

    dataset = prepare_mnist(SHARED_DATA, 1000, 0, download=False)
    dataset["x_test"], dataset["y_test"] = dataset["x_test"][:1000], dataset["y_test"][:1000]
    experiment = dict(EXPERIMENT, model={"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 8.0},
                      steps=60, batch_size=200)
    spec = spec_for(experiment, weight_decay=0.01)
    for engine in ("plain", "fast"):
        train_run(spec, dataset, tmp_path / engine, device="cpu", progress=False, cpu_engine=engine)
    skipped = torch.nonzero(~(dataset["x_train"] != 0).any(0)).flatten().tolist()
    assert len(skipped) == 784 - 589
    assert_runs_match(tmp_path / "plain", tmp_path / "fast", RTOL, skipped_columns=skipped)


def test_gradients_equal_autograd_bit_for_bit_when_no_column_is_skipped():
    dataset = sparse_dataset(zero_columns=[])
    model = build_model(EXPERIMENT["model"], seed=0)
    stepper = FastMLPStep(model, make_optimizer(model, EXPERIMENT["optimizer"], 0.01), dataset["x_train"].double(),
                          dataset["y_train"])
    assert len(stepper.active) == 32
    index = BatchOrder(64, 16, seed=0).next()
    stepper.compute_gradients(index)
    x, one_hot = dataset["x_train"].double()[index], F.one_hot(dataset["y_train"][index], 5).double()
    F.mse_loss(model(x), one_hot).backward()
    for view, parameter in zip(stepper.grad_views, stepper.parameters):
        assert torch.equal(view, parameter.grad)


def test_skipped_columns_get_a_zero_gradient_and_the_rest_autograds_to_rounding():
    dataset = sparse_dataset()
    model = build_model(EXPERIMENT["model"], seed=0)
    stepper = FastMLPStep(model, make_optimizer(model, EXPERIMENT["optimizer"], 0.01), dataset["x_train"].double(),
                          dataset["y_train"])
    assert stepper.inactive.tolist() == ZERO_COLUMNS
    index = BatchOrder(64, 16, seed=0).next()
    stepper.compute_gradients(index)
    x, one_hot = dataset["x_train"].double()[index], F.one_hot(dataset["y_train"][index], 5).double()
    F.mse_loss(model(x), one_hot).backward()
    assert (model.fc1.weight.grad[:, ZERO_COLUMNS] == 0).all()
    torch.testing.assert_close(stepper.grad_views[0], model.fc1.weight.grad[:, stepper.active], rtol=1e-12, atol=0)
    for view, parameter in zip(stepper.grad_views[1:], stepper.parameters[1:]):
        torch.testing.assert_close(view, parameter.grad, rtol=1e-12, atol=1e-18)


def mostly_silent_model(firing_fc1=(0, 5, 9), firing_fc2=(2, 11)):
    """The small MLP with every hidden unit but ``firing_*`` pushed far below zero by its bias, as most
    units are late in the paper's run: the fast step multiplies over the firing units only."""
    model = build_model(EXPERIMENT["model"], seed=0)
    with torch.no_grad():
        for layer, firing in ((model.fc1, firing_fc1), (model.fc2, firing_fc2)):
            silent = [unit for unit in range(layer.out_features) if unit not in firing]
            layer.bias[silent] = -1e6
            layer.bias[list(firing)] = 1e2  # fire for every example
    return model


def test_silent_hidden_units_are_skipped_and_the_gradients_equal_autograds_to_rounding(monkeypatch):
    from antigrok.training import fast_mlp_step

    gathered = []
    original = fast_mlp_step.firing_units
    monkeypatch.setattr(fast_mlp_step, "firing_units", lambda hidden: gathered.append(original(hidden)) or gathered[-1])
    dataset = sparse_dataset()
    model = mostly_silent_model()
    stepper = FastMLPStep(model, make_optimizer(model, EXPERIMENT["optimizer"], 0.01), dataset["x_train"].double(),
                          dataset["y_train"])
    index = BatchOrder(64, 16, seed=0).next()
    stepper.compute_gradients(index)
    assert [units.tolist() for units in gathered] == [[0, 5, 9], [2, 11]]
    x, one_hot = dataset["x_train"].double()[index], F.one_hot(dataset["y_train"][index], 5).double()
    F.mse_loss(model(x), one_hot).backward()
    reference = [model.fc1.weight.grad[:, stepper.active]] + [p.grad for p in stepper.parameters[1:]]
    for view, expected in zip(stepper.grad_views, reference):
        assert torch.equal(view == 0, expected == 0)  # the skipped products' exact zeros
        torch.testing.assert_close(view, expected, rtol=1e-12, atol=0)


def test_a_mostly_silent_model_trains_as_the_plain_step_does():
    dataset = sparse_dataset()
    x, y = dataset["x_train"].double(), dataset["y_train"]
    models = [mostly_silent_model() for _ in range(2)]
    optimizers = [make_optimizer(m, EXPERIMENT["optimizer"], 0.0) for m in models]
    fast, plain = FastMLPStep(models[0], optimizers[0], x, y), PlainStep(models[1], optimizers[1], x, y, "mse")
    orders = [BatchOrder(64, 16, seed=0) for _ in range(2)]
    for _ in range(300):
        fast.step(orders[0].next(), 5e-3)
        plain.step(orders[1].next(), 5e-3)
    fast.sync()
    for ours, theirs in zip(models[0].parameters(), models[1].parameters()):
        assert (ours - theirs).abs().max() <= RTOL * theirs.abs().max()


def test_the_full_products_serve_a_layer_where_most_units_fire():
    from antigrok.training.fast_mlp_step import GATHER_FRACTION, firing_units

    hidden = torch.zeros(4, 8)
    hidden[0, :6] = 1.0
    assert firing_units(hidden).tolist() == list(range(6)) and 6 <= GATHER_FRACTION * 8
    hidden[1, 6] = 2.0
    assert firing_units(hidden) is None  # 7 of 8 fire: more than GATHER_FRACTION


def test_sync_writes_a_standard_adamw_state_that_the_plain_step_continues(tmp_path):
    """After sync the model and torch's AdamW hold the fast step's state: the plain step continues it."""
    dataset = sparse_dataset()
    x, y = dataset["x_train"].double(), dataset["y_train"]
    models = [build_model(EXPERIMENT["model"], seed=0) for _ in range(2)]
    optimizers = [make_optimizer(m, EXPERIMENT["optimizer"], 0.01) for m in models]
    fast, plain = FastMLPStep(models[0], optimizers[0], x, y), PlainStep(models[1], optimizers[1], x, y, "mse")
    orders = [BatchOrder(64, 16, seed=0) for _ in range(2)]
    for _ in range(50):
        fast.step(orders[0].next(), 5e-3)
        plain.step(orders[1].next(), 5e-3)
    fast.sync()
    state = optimizers[0].state_dict()
    assert [float(s["step"]) for s in state["state"].values()] == [50.0] * 6
    assert (state["state"][0]["exp_avg"][:, ZERO_COLUMNS] == 0).all()
    reference = optimizers[1].state_dict()
    for ours, theirs in zip(state["state"].values(), reference["state"].values()):
        assert ours["step"].dtype == theirs["step"].dtype
        for key in ("exp_avg", "exp_avg_sq"):
            assert (ours[key] - theirs[key]).abs().max() <= RTOL * theirs[key].abs().max()
    # The synced state continues under the plain step; a fresh fast step rebuilt from it goes on identically.
    rebuilt = FastMLPStep(models[0], optimizers[0], x, y)
    assert rebuilt.num_steps == 50 and torch.equal(rebuilt.flat_params, fast.flat_params)
    assert torch.equal(rebuilt.exp_avg, fast.exp_avg) and torch.equal(rebuilt.exp_avg_sq, fast.exp_avg_sq)
    index = orders[0].next()
    rebuilt.step(index, 5e-3)
    fast.step(index, 5e-3)
    assert torch.equal(rebuilt.flat_params, fast.flat_params)


def test_a_column_with_a_nonzero_moment_is_not_skipped():
    """A resumed optimizer state that moved a column the data leaves zero: the column stays trained."""
    dataset = sparse_dataset()
    model = build_model(EXPERIMENT["model"], seed=0)
    optimizer = make_optimizer(model, EXPERIMENT["optimizer"], 0.01)
    for parameter in model.parameters():
        optimizer.state[parameter] = {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(parameter),
                                      "exp_avg_sq": torch.zeros_like(parameter)}
    optimizer.state[model.fc1.weight]["exp_avg_sq"][4, 7] = 1e-6
    stepper = FastMLPStep(model, optimizer, dataset["x_train"].double(), dataset["y_train"])
    assert 7 in stepper.active.tolist() and 7 not in stepper.inactive.tolist()
    assert stepper.num_steps == 3


@pytest.mark.parametrize(("first", "second"), [("plain", "fast"), ("fast", "plain")])
def test_a_resume_state_of_one_step_continues_with_the_other(tmp_path, monkeypatch, first, second):
    class Crash(Exception):
        pass

    dataset, spec = sparse_dataset(), spec_for(dict(EXPERIMENT, steps=300))
    train_run(spec, dataset, tmp_path / "reference", device="cpu", progress=False, cpu_engine="plain")
    original_next, calls = BatchOrder.next, {"n": 0}

    def crash_at_step_150(self):
        calls["n"] += 1
        if calls["n"] == 151:
            raise Crash
        return original_next(self)

    monkeypatch.setattr(BatchOrder, "next", crash_at_step_150)
    with pytest.raises(Crash):
        train_run(spec, dataset, tmp_path / "switched", device="cpu", resume_every_s=0.0, progress=False,
                  cpu_engine=first)
    monkeypatch.setattr(BatchOrder, "next", original_next)
    train_run(spec, dataset, tmp_path / "switched", device="cpu", progress=False, cpu_engine=second)
    assert_runs_match(tmp_path / "reference", tmp_path / "switched", RTOL, skipped_columns=ZERO_COLUMNS)


def test_the_fast_step_serves_mlps_with_mse_on_the_cpu_only():
    dataset = sparse_dataset()
    x, y = dataset["x_train"].double(), dataset["y_train"]
    mlp = build_model(EXPERIMENT["model"], seed=0)
    optimizer = make_optimizer(mlp, EXPERIMENT["optimizer"], 0.0)
    assert isinstance(make_step("fast", mlp, optimizer, x, y, "mse"), FastMLPStep)
    assert isinstance(make_step("plain", mlp, optimizer, x, y, "mse"), PlainStep)
    assert isinstance(make_step("fast", mlp, optimizer, x, y, "cross_entropy"), PlainStep)
    transformer = build_model({"name": "transformer", "d_vocab": 8, "n_ctx": 3, "d_model": 8, "num_heads": 2,
                               "d_head": 4, "d_mlp": 16, "num_layers": 1}, "float32", seed=0)
    tokens = torch.randint(0, 8, (16, 3))
    assert isinstance(make_step("fast", transformer, make_optimizer(transformer, EXPERIMENT["optimizer"], 0.0),
                                tokens, y[:16], "cross_entropy"), PlainStep)
    with pytest.raises(ValueError, match="train.cpu_engine is 'turbo'"):
        make_step("turbo", mlp, optimizer, x, y, "mse")


def test_cpu_engine_is_a_train_key_that_defaults_to_fast():
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    config = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())
    config.get("train", {}).pop("cpu_engine", None)
    validate(config, str(schema), set_default=True)
    assert config["train"]["cpu_engine"] == "fast"
    config["train"]["cpu_engine"] = "turbo"
    with pytest.raises(Exception, match="turbo"):
        validate(config, str(schema), set_default=True)
    assert "cpu_engine=config[\"train\"][\"cpu_engine\"]" in (REPO / "workflow" / "rules" / "train.smk").read_text()
