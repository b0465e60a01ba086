import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from antigrok.training.models import build_model
from antigrok.training.schedule import checkpoint_steps, log_steps
from antigrok.training.train import (MAX_STEPS_BETWEEN_CLOCK_CHECKS, BatchOrder, NonFiniteLossError, RunSpec,
                                     event_steps, load_checkpoint, next_stop, train_run)

TINY_EXPERIMENT = {
    "dataset": {"name": "mnist"},
    "model": {"name": "mlp", "widths": [6, 5, 4, 3], "init_scale": 8.0},
    "loss": "mse",
    "optimizer": {"name": "adamw", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8},
    "weight_decays": [0.0],
    "seeds": [0],
    "steps": 1,
    "batch_size": 8,
    "dtype": "float64",
}


def tiny_dataset(num_train=24, num_test=12, seed=0, zero_columns=()):
    """Random inputs; ``zero_columns`` are zero in every training example (as MNIST's border)."""
    generator = torch.Generator().manual_seed(seed)
    dataset = {
        "x_train": torch.rand(num_train, 6, generator=generator),
        "y_train": torch.randint(0, 3, (num_train,), generator=generator),
        "x_test": torch.rand(num_test, 6, generator=generator),
        "y_test": torch.randint(0, 3, (num_test,), generator=generator),
        "num_classes": 3,
    }
    dataset["x_train"][:, list(zero_columns)] = 0.0
    return dataset


def tiny_spec(steps, weight_decay=0.0, batch_size=8, **overrides):
    experiment = dict(TINY_EXPERIMENT, steps=steps, batch_size=batch_size, **overrides)
    return RunSpec("tiny", experiment, weight_decay, seed=0, checkpoint_per_decade=4, log_per_decade=10)


def test_checkpoint_schedule_is_log_spaced_with_first_and_last_step():
    assert checkpoint_steps(2000, 4) == [0, 1, 2, 3, 6, 10, 18, 32, 56, 100, 178, 316, 562, 1000, 1778, 2000]
    steps = checkpoint_steps(10_000_000, 20)
    assert steps[0] == 0 and steps[-1] == 10_000_000
    assert steps == sorted(set(steps))
    assert 1_000_000 in steps and 100_000 in steps
    # 20 per decade: decades 4..7 contribute exactly 20 distinct steps each
    assert sum(1 for s in steps if 10**6 <= s < 10**7) == 20


def test_last_step_is_kept_when_off_the_grid():
    assert checkpoint_steps(1234, 2)[-2:] == [1000, 1234]


def test_log_steps_include_every_checkpoint():
    assert set(checkpoint_steps(5000, 4)) <= set(log_steps(5000, 3, 4))


def test_the_loop_stops_at_every_event_and_looks_at_the_clock_between_far_events():
    logged, checkpoints = event_steps(tiny_spec(2000))
    assert checkpoints == set(checkpoint_steps(2000, 4)) and checkpoints <= logged
    events = sorted(logged | checkpoints)
    stops, step = [], 0
    while step < 2000:
        step = next_stop(events, step)
        stops.append(step)
    assert set(events) - {0} <= set(stops)
    gaps = [after - before for before, after in zip([0] + stops, stops)]
    assert max(gaps) == MAX_STEPS_BETWEEN_CLOCK_CHECKS  # the late events lie further apart than that


def test_init_scale_multiplies_every_parameter():
    plain = build_model({"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 1.0}, seed=7)
    scaled = build_model({"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 8.0}, seed=7)
    for (name, p), (_, q) in zip(plain.named_parameters(), scaled.named_parameters()):
        assert q.dtype == torch.float64
        assert torch.equal(q, 8.0 * p), name
    # PyTorch's default init: kaiming-uniform weights within 1/sqrt(fan_in), times 8
    assert scaled.fc1.weight.abs().max() <= 8.0 / math.sqrt(784)


@pytest.mark.parametrize("cpu_engine", ["plain", "fast"])
def test_one_step_matches_hand_computed_adamw(tmp_path, cpu_engine):
    lr, beta1, beta2, eps, weight_decay = 5e-4, 0.9, 0.999, 1e-8, 0.01
    dataset = tiny_dataset(num_train=8, zero_columns=[2])
    spec = tiny_spec(steps=1, weight_decay=weight_decay, batch_size=8)  # full batch: no shuffling
    train_run(spec, dataset, tmp_path, device="cpu", progress=False, cpu_engine=cpu_engine)
    before = load_checkpoint(tmp_path / "checkpoints" / "step000000000.pt")["model"]
    after = load_checkpoint(tmp_path / "checkpoints" / "step000000001.pt")["model"]

    model = build_model(TINY_EXPERIMENT["model"], seed=0)
    model.load_state_dict(before)
    x = dataset["x_train"].to(torch.float64)
    one_hot = F.one_hot(dataset["y_train"], 3).to(torch.float64)
    loss = ((model(x) - one_hot) ** 2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        m_hat = ((1 - beta1) * g) / (1 - beta1)
        v_hat = ((1 - beta2) * g * g) / (1 - beta2)
        expected = p.detach() * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(after[name], expected, rtol=1e-12, atol=1e-15)
        assert after[name].dtype == torch.float64


def test_training_writes_checkpoints_and_train_log(tmp_path):
    train_log = train_run(tiny_spec(steps=100), tiny_dataset(), tmp_path, device="cpu", progress=False)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == [f"step{s:09d}.pt" for s in checkpoint_steps(100, 4)]
    on_disk = pd.read_csv(tmp_path / "train_log.csv")
    assert list(on_disk.columns) == ["step", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert on_disk["step"].tolist() == log_steps(100, 10, 4)
    assert on_disk["train_loss"].iloc[-1] < on_disk["train_loss"].iloc[0]
    assert len(train_log) == len(on_disk)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "step000000100.pt")
    assert checkpoint["step"] == 100 and checkpoint["seed"] == 0 and checkpoint["experiment"] == "tiny"
    assert not (tmp_path / ".resume").exists()


def test_non_finite_loss_names_run_and_step_and_leaves_nothing_complete(tmp_path):
    dataset = tiny_dataset()
    dataset["x_train"][0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"run tiny/wd0.0/seed0: .* at step 0"):
        train_run(tiny_spec(steps=50), dataset, tmp_path, device="cpu", progress=False)
    assert not (tmp_path / "train_log.csv").exists()
    assert not (tmp_path / "checkpoints").exists()


RESUMABLE_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_train import tiny_dataset, tiny_spec
    from antigrok.training.train import train_run
    train_run(tiny_spec(steps=4000), tiny_dataset(zero_columns={zero_columns!r}), {run_dir!r}, device="cpu",
              resume_every_s=0.0, progress=False, cpu_engine={cpu_engine!r})
    """
)


@pytest.mark.parametrize("cpu_engine", ["plain", "fast"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, caplog, cpu_engine):
    """A run killed mid-way and started again equals an uninterrupted run of the same step, bit for bit."""
    zero_columns = [0, 4]  # the fast step skips them
    dataset = tiny_dataset(zero_columns=zero_columns)
    reference = tmp_path / "reference"
    train_run(tiny_spec(steps=4000), dataset, reference, device="cpu", progress=False, cpu_engine=cpu_engine)

    killed = tmp_path / "killed"
    script = RESUMABLE_RUN.format(tests=os.path.dirname(__file__), run_dir=str(killed), zero_columns=zero_columns,
                                  cpu_engine=cpu_engine)
    process = subprocess.Popen([sys.executable, "-c", script])
    state = killed / ".resume" / "state.pt"
    deadline = time.monotonic() + 600  # a generous bound for a loaded machine; the loop ends when ready
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and len(list((killed / ".resume" / "checkpoints").glob("*.pt"))) >= 10:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the training finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "train_log.csv").exists() and not (killed / "checkpoints").exists()
    resumed_from = torch.load(state, weights_only=False)["step"]
    assert 0 < resumed_from < 4000

    with caplog.at_level("INFO", logger="antigrok"):
        train_run(tiny_spec(steps=4000), dataset, killed, device="cpu", progress=False, cpu_engine=cpu_engine)
    assert f"from step {resumed_from}" in caplog.text
    assert f"with the {cpu_engine} step" in caplog.text
    assert (killed / "train_log.csv").read_bytes() == (reference / "train_log.csv").read_bytes()
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (killed / "checkpoints").iterdir())
    for name in names:
        ours = load_checkpoint(killed / "checkpoints" / name)["model"]
        theirs = load_checkpoint(reference / "checkpoints" / name)["model"]
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, key)


def test_resume_from_a_state_saved_at_a_logged_step_logs_it_once(tmp_path, monkeypatch):
    """A crash right after a logged step: the resumed log has that step once, as the reference."""
    reference = tmp_path / "reference"
    train_run(tiny_spec(steps=300), tiny_dataset(), reference, device="cpu", progress=False)

    class Crash(Exception):
        pass

    original_next = BatchOrder.next
    calls = {"n": 0}

    def crash_at_step_100(self):
        calls["n"] += 1
        if calls["n"] == 101:  # the update from step 100, a logged and checkpoint step
            raise Crash
        return original_next(self)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(BatchOrder, "next", crash_at_step_100)
    with pytest.raises(Crash):
        train_run(tiny_spec(steps=300), tiny_dataset(), crashed, device="cpu", resume_every_s=0.0, progress=False)
    monkeypatch.setattr(BatchOrder, "next", original_next)
    assert torch.load(crashed / ".resume" / "state.pt", weights_only=False)["step"] == 100
    train_run(tiny_spec(steps=300), tiny_dataset(), crashed, device="cpu", progress=False)
    assert (crashed / "train_log.csv").read_bytes() == (reference / "train_log.csv").read_bytes()


def test_a_model_with_too_few_outputs_is_rejected_naming_the_config(tmp_path):
    spec = tiny_spec(steps=5)
    dataset = dict(tiny_dataset(), num_classes=4)
    with pytest.raises(ValueError, match=r"3 outputs for 4 classes.*experiments.tiny.model"):
        train_run(spec, dataset, tmp_path, device="cpu", progress=False)
