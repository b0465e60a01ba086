"""The batched engine (antigrok.training.batched) against separate single runs (antigrok.training.train.train_run)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from antigrok.training import batched
from antigrok.training.batched import BatchedTrainer, mlp_gradients, train_runs
from antigrok.training.data import load_dataset
from antigrok.training.models import build_model
from antigrok.training.schedule import checkpoint_steps
from antigrok.training.train import BatchOrder, NonFiniteLossError, RunSpec, load_checkpoint, train_run
from conftest import REPO, SHARED_DATA, copy_workflow, requires_mnist

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-9  # the bar: batched equals separate runs to 1e-9 relative after 1000 float64 steps
SEEDS = (0, 3)

# Small but above the sizes where torch's bmm switches to its naive loops: every product here
# runs through the same BLAS kernels as the single run's addmm / mm.
SMALL_EXPERIMENT = {
    "dataset": {"name": "mnist"},
    "model": {"name": "mlp", "widths": [20, 16, 12, 4], "init_scale": 8.0},
    "loss": "mse",
    "optimizer": {"name": "adamw", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_steps": 5},
    "weight_decays": [0.01],
    "seeds": list(SEEDS),
    "steps": 1000,
    "batch_size": 16,
    "dtype": "float64",
}


def small_dataset(num_train=48, num_test=20, features=20, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "x_train": torch.rand(num_train, features, generator=generator),
        "y_train": torch.randint(0, classes, (num_train,), generator=generator),
        "x_test": torch.rand(num_test, features, generator=generator),
        "y_test": torch.randint(0, classes, (num_test,), generator=generator),
        "num_classes": classes,
    }


def specs_for(experiment, seeds=SEEDS, weight_decay=0.01):
    return [RunSpec("small", experiment, weight_decay, seed, checkpoint_per_decade=4, log_per_decade=10)
            for seed in seeds]


def assert_runs_match(expected_dir, actual_dir, rtol, per_tensor=False):
    """Same train_log.csv and the same checkpoints (files, metadata, tensors) within ``rtol``.

    Relative per element, or with ``per_tensor`` relative to each tensor's largest magnitude.
    """
    expected_log = pd.read_csv(expected_dir / "train_log.csv")
    actual_log = pd.read_csv(actual_dir / "train_log.csv")
    assert list(actual_log.columns) == list(expected_log.columns)
    pd.testing.assert_frame_equal(actual_log, expected_log, rtol=rtol, atol=0)
    expected_files = sorted(p.name for p in (expected_dir / "checkpoints").glob("step*.pt"))
    assert sorted(p.name for p in (actual_dir / "checkpoints").glob("step*.pt")) == expected_files
    assert expected_files
    for name in expected_files:
        expected = load_checkpoint(expected_dir / "checkpoints" / name)
        actual = load_checkpoint(actual_dir / "checkpoints" / name)
        assert {k: v for k, v in actual.items() if k != "model"} == {k: v for k, v in expected.items() if k != "model"}
        assert list(actual["model"]) == list(expected["model"])
        for key, tensor in expected["model"].items():
            assert actual["model"][key].dtype == torch.float64
            atol = rtol * tensor.abs().max().item() if per_tensor else 0.0
            torch.testing.assert_close(actual["model"][key], tensor, rtol=0 if per_tensor else rtol, atol=atol,
                                       msg=f"{name} {key}")
    assert not (actual_dir / ".resume").exists()


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """The reference: each seed trained alone by train_run for 1000 float64 steps."""
    root = tmp_path_factory.mktemp("single")
    for spec in specs_for(SMALL_EXPERIMENT):
        train_run(spec, small_dataset(), root / f"seed{spec.seed}", device="cpu", progress=False, cpu_engine="plain")
    return root


@pytest.mark.parametrize("chunked", [False, True], ids=["eager", "chunked-as-on-cuda"])
def test_batched_runs_equal_separate_runs_after_1000_steps(single_runs, tmp_path, chunked):
    # chunked: the CUDA code path (static index buffers, 7-step chunks and single steps) run eagerly
    specs = specs_for(SMALL_EXPERIMENT)
    run_dirs = [tmp_path / f"seed{spec.seed}" for spec in specs]
    logs = train_runs(specs, small_dataset(), run_dirs, device="cpu", progress=False, chunked=chunked, unroll=7)
    for spec, run_dir, train_log in zip(specs, run_dirs, logs):
        assert_runs_match(single_runs / f"seed{spec.seed}", run_dir, RTOL)
        assert len(train_log) == len(pd.read_csv(run_dir / "train_log.csv"))
    assert not (tmp_path / batched.RESUME_DIR_NAME).exists()


def test_mnist_widths_equal_separate_runs(tmp_path):
    experiment = dict(SMALL_EXPERIMENT, model={"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 8.0},
                      steps=3, batch_size=200)
    experiment["optimizer"] = dict(experiment["optimizer"], warmup_steps=0)
    dataset = small_dataset(num_train=400, num_test=50, features=784, classes=10)
    specs = specs_for(experiment, weight_decay=0.0)
    for spec in specs:
        train_run(spec, dataset, tmp_path / "single" / f"seed{spec.seed}", device="cpu", progress=False, cpu_engine="plain")
    train_runs(specs, dataset, [tmp_path / "batched" / f"seed{s.seed}" for s in specs], device="cpu", progress=False)
    for spec in specs:
        assert_runs_match(tmp_path / "single" / f"seed{spec.seed}", tmp_path / "batched" / f"seed{spec.seed}", RTOL)


def test_stacked_gradients_equal_autograd_of_each_run():
    cfg = SMALL_EXPERIMENT["model"]
    models = [build_model(cfg, seed=seed) for seed in SEEDS]
    data = small_dataset()
    x = data["x_train"].to(torch.float64)[:16]
    index = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    names = [f"fc{i}" for i in (1, 2, 3)]
    weights = [torch.stack([m.get_submodule(n).weight.detach() for m in models]) for n in names]
    biases = [torch.stack([m.get_submodule(n).bias.detach() for m in models]) for n in names]
    one_hot = F.one_hot(data["y_train"][:16], 4).to(torch.float64)
    weight_grads = [torch.empty_like(w) for w in weights]
    bias_grads = [torch.empty_like(b) for b in biases]
    mlp_gradients(weights, biases, x[index], one_hot[index], weight_grads, bias_grads)
    for run, model in enumerate(models):
        loss = F.mse_loss(model(x[index[run]]), one_hot[index[run]])
        loss.backward()
        for layer, name in enumerate(names):
            module = model.get_submodule(name)
            torch.testing.assert_close(weight_grads[layer][run], module.weight.grad, rtol=1e-12, atol=0)
            torch.testing.assert_close(bias_grads[layer][run], module.bias.grad, rtol=1e-12, atol=0)


def test_adamw_on_stacks_equals_adamw_per_run_after_1000_steps():
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 20), (16,), (4, 12)]
    runs = 3
    stacks = [torch.randn(runs, *shape, dtype=torch.float64, generator=generator) for shape in shapes]
    singles = [[stack[run].clone() for stack in stacks] for run in range(runs)]
    options = dict(lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    stacked_optimizer = torch.optim.AdamW(stacks, **options)
    single_optimizers = [torch.optim.AdamW(params, **options) for params in singles]
    for _ in range(1000):
        grads = [torch.randn(runs, *shape, dtype=torch.float64, generator=generator) * 1e-3 for shape in shapes]
        for stack, grad in zip(stacks, grads):
            stack.grad = grad
        stacked_optimizer.step()
        for run, optimizer in enumerate(single_optimizers):
            for param, grad in zip(singles[run], grads):
                param.grad = grad[run].clone()
            optimizer.step()
    for run in range(runs):
        for stack, single in zip(stacks, singles[run]):
            torch.testing.assert_close(stack[run], single, rtol=1e-9, atol=0)


@pytest.mark.parametrize("batch_size", [16, 48], ids=["minibatch", "full-batch"])
def test_batches_in_bulk_equal_one_batch_at_a_time(batch_size):
    one_by_one, in_bulk = BatchOrder(48, batch_size, seed=5), BatchOrder(48, batch_size, seed=5)
    for count in [1, 2, 7, 3, 11]:
        expected = torch.stack([one_by_one.next() for _ in range(count)])
        assert torch.equal(in_bulk.take(count), expected)
    assert in_bulk.position == one_by_one.position
    assert torch.equal(in_bulk.generator.get_state(), one_by_one.generator.get_state())


def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch, caplog):
    experiment = dict(SMALL_EXPERIMENT, steps=300)
    specs = specs_for(experiment)
    reference = [tmp_path / "reference" / f"seed{s.seed}" for s in specs]
    train_runs(specs, small_dataset(), reference, device="cpu", progress=False)

    # Interrupt mid-segment at step 137: the last resume state (resume_every_s=0) is from step 126.
    interrupted = [tmp_path / "interrupted" / f"seed{s.seed}" for s in specs]
    calls = {"steps": 0}
    original_step = BatchedTrainer.step

    def step_then_die(self, index):
        if calls["steps"] == 137:
            raise KeyboardInterrupt("simulated kill")
        calls["steps"] += 1
        original_step(self, index)

    monkeypatch.setattr(BatchedTrainer, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_runs(specs, small_dataset(), interrupted, device="cpu", resume_every_s=0.0, progress=False)
    state = torch.load(tmp_path / "interrupted" / batched.RESUME_DIR_NAME / "state.pt", weights_only=False)
    assert state["step"] == 126
    assert not (interrupted[0] / "train_log.csv").exists() and not (interrupted[0] / "checkpoints").exists()

    monkeypatch.setattr(BatchedTrainer, "step", original_step)
    with caplog.at_level(logging.INFO, logger="antigrok"):
        train_runs(specs, small_dataset(), interrupted, device="cpu", resume_every_s=0.0, progress=False)
    assert "from step 126" in caplog.text
    for expected_dir, actual_dir in zip(reference, interrupted):
        assert (actual_dir / "train_log.csv").read_bytes() == (expected_dir / "train_log.csv").read_bytes()
        assert_runs_match(expected_dir, actual_dir, rtol=0)
    assert not (tmp_path / "interrupted" / batched.RESUME_DIR_NAME).exists()


def test_resume_state_without_its_staged_checkpoints_is_discarded(tmp_path, monkeypatch, caplog):
    experiment = dict(SMALL_EXPERIMENT, steps=60)
    specs = specs_for(experiment)
    run_dirs = [tmp_path / f"seed{s.seed}" for s in specs]
    original_step = BatchedTrainer.step
    calls = {"steps": 0}

    def step_then_die(self, index):
        if calls["steps"] == 30:
            raise KeyboardInterrupt("simulated kill")
        calls["steps"] += 1
        original_step(self, index)

    monkeypatch.setattr(BatchedTrainer, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_runs(specs, small_dataset(), run_dirs, device="cpu", resume_every_s=0.0, progress=False)
    monkeypatch.setattr(BatchedTrainer, "step", original_step)
    for staged in (run_dirs[1] / ".resume" / "checkpoints").iterdir():
        staged.unlink()  # as if this run's directory had been cleaned by hand
    with caplog.at_level(logging.WARNING, logger="antigrok"):
        train_runs(specs, small_dataset(), run_dirs, device="cpu", resume_every_s=0.0, progress=False)
    assert "staged checkpoints of small/wd0.01/seed3 are missing" in caplog.text
    files = sorted(p.name for p in (run_dirs[1] / "checkpoints").iterdir())
    assert files == [f"step{s:09d}.pt" for s in checkpoint_steps(60, 4)]


def test_non_finite_loss_names_run_and_step_and_leaves_nothing_complete(tmp_path):
    dataset = small_dataset()
    dataset["x_train"][0, 0] = float("nan")
    specs = specs_for(dict(SMALL_EXPERIMENT, steps=20))
    run_dirs = [tmp_path / f"seed{s.seed}" for s in specs]
    with pytest.raises(NonFiniteLossError, match=r"run small/wd0.01/seed0: .* at step 0"):
        train_runs(specs, dataset, run_dirs, device="cpu", progress=False)
    for run_dir in run_dirs:
        assert not (run_dir / "train_log.csv").exists() and not (run_dir / "checkpoints").exists()
        assert not (run_dir / ".resume").exists()
    assert not (tmp_path / batched.RESUME_DIR_NAME).exists()


def test_a_group_holds_the_seeds_of_one_experiment_and_weight_decay_only(tmp_path):
    mixed = specs_for(SMALL_EXPERIMENT, seeds=(0,), weight_decay=0.0) + specs_for(SMALL_EXPERIMENT, seeds=(1,))
    with pytest.raises(ValueError, match="differ in weight_decay"):
        BatchedTrainer(mixed, small_dataset(), device="cpu")
    with pytest.raises(ValueError, match="distinct"):
        BatchedTrainer(specs_for(SMALL_EXPERIMENT, seeds=(2, 2)), small_dataset(), device="cpu")
    transformer = dict(SMALL_EXPERIMENT, model={"name": "transformer"}, loss="cross_entropy")
    with pytest.raises(ValueError, match="MLPs only.*train.batch_runs: false"):
        BatchedTrainer(specs_for(transformer), small_dataset(), device="cpu")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
def test_cuda_graphs_equal_eager_cuda_and_cpu(tmp_path):
    experiment = dict(SMALL_EXPERIMENT, steps=300)
    specs = specs_for(experiment)
    for name, device, graph in [("graph", "cuda", True), ("eager", "cuda", False), ("cpu", "cpu", False)]:
        train_runs(specs, small_dataset(), [tmp_path / name / f"seed{s.seed}" for s in specs], device=device,
                   progress=False, cuda_graph=graph, unroll=7)
    for spec in specs:
        seed = f"seed{spec.seed}"
        assert_runs_match(tmp_path / "eager" / seed, tmp_path / "graph" / seed, rtol=1e-12)
        # fused CUDA AdamW and cuBLAS round differently from the CPU kernels: close, not identical
        assert_runs_match(tmp_path / "cpu" / seed, tmp_path / "graph" / seed, rtol=1e-6, per_tensor=True)


def workflow_with(tmp_path, **train):
    """A copy of the workflow whose smoke config has ``train`` settings overridden."""
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())
    config["data"]["root"] = str(SHARED_DATA)
    config["train"].update(train)
    (workdir / "batched.yaml").write_text(yaml.safe_dump(config))
    return workdir, config


def dry_run_jobs(workdir) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "batched.yaml", "--quiet", "rules"],
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_batch_runs_makes_one_job_per_experiment_and_weight_decay(tmp_path):
    workdir, config = workflow_with(tmp_path, batch_runs=True)
    jobs = dry_run_jobs(workdir)
    mnist = config["experiments"]["mnist_mlp"]
    assert jobs["train_batched_mnist_mlp"] == len(mnist["weight_decays"])
    unbatched = sum(len(e["weight_decays"]) * len(e["seeds"]) for name, e in config["experiments"].items()
                    if name != "mnist_mlp")  # experiments the engine does not cover keep `train`
    assert jobs.get("train", 0) == unbatched


@pytest.mark.slow
@requires_mnist
def test_batched_snakemake_job_writes_each_runs_files_as_single_runs_do(tmp_path):
    workdir, config = workflow_with(tmp_path, batch_runs=True)
    mnist = config["experiments"]["mnist_mlp"]
    mnist["steps"] = 20
    (workdir / "batched.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/runs/mnist_mlp/wd{float(wd)}/seed{seed}/train_log.csv"
               for wd in mnist["weight_decays"] for seed in mnist["seeds"]]
    result = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "batched.yaml"],
                            cwd=workdir, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "train_batched_mnist_mlp" in result.stderr
    dataset = load_dataset(workdir / "results" / "data" / "mnist_mlp.pt")
    wd = float(mnist["weight_decays"][-1])
    for seed in mnist["seeds"]:
        spec = RunSpec("mnist_mlp", mnist, wd, seed, config["checkpoints"]["per_decade"], config["log"]["per_decade"])
        train_run(spec, dataset, tmp_path / "single" / f"seed{seed}", device="cpu", progress=False, cpu_engine="plain")
        assert_runs_match(tmp_path / "single" / f"seed{seed}", workdir / f"results/runs/mnist_mlp/wd{wd}/seed{seed}", RTOL)


@pytest.mark.slow
@requires_mnist
def test_adding_a_weight_decay_reruns_no_finished_batched_group(tmp_path):
    # The group job's params were the whole experiment, weight_decays included: a new weight decay
    # changed them and every finished group reran. Its params are the run settings only now.
    workdir, config = workflow_with(tmp_path, batch_runs=True)
    mnist = config["experiments"]["mnist_mlp"]
    mnist.update(steps=3, weight_decays=[0.0])
    config["experiments"] = {"mnist_mlp": mnist}
    (workdir / "batched.yaml").write_text(yaml.safe_dump(config))
    finished = [f"results/runs/mnist_mlp/wd0.0/seed{seed}/train_log.csv" for seed in mnist["seeds"]]
    result = subprocess.run([sys.executable, "-m", "snakemake", *finished, "--cores", "1", "--configfile",
                             "batched.yaml"], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mnist["weight_decays"] = [0.0, 0.5]
    (workdir / "batched.yaml").write_text(yaml.safe_dump(config))
    targets = finished + [f"results/runs/mnist_mlp/wd0.5/seed{seed}/train_log.csv" for seed in mnist["seeds"]]
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", *targets, "--configfile", "batched.yaml"],
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [line.split()[-1] for line in result.stdout.splitlines() if line.strip().startswith("wildcards:")]
    assert jobs == ["weight_decay=0.5"], result.stdout[-3000:]


def test_the_bit_identity_claim_names_the_engine_it_holds_for():
    # The docstrings promised bit-identity with train_run, whose default engine (fast) is equal
    # to rounding only; the tests above compare with cpu_engine="plain", which is what holds.
    assert 'cpu_engine="plain"' in batched.__doc__ and 'cpu_engine="plain"' in train_runs.__doc__
    assert "to rounding" in batched.__doc__
