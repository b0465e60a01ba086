"""Training throughput: the plain single-run loop against the fast CPU step and the batched engine.

The reference is the paper's setup written the plain way: a 784-200-200-10 ReLU MLP (PyTorch
init x 8), float64, torch.optim.AdamW (lr 5e-4, weight decay 0.01), MSE against one-hot targets,
batches of 200 from a 1000 x 784 train subset held on the device (a fresh permutation each
epoch), one eager step at a time. Against it: on CPU the fast step that ``train_run`` uses for
a single run (antigrok.training.fast_mlp_step.FastMLPStep, ``train.cpu_engine: fast``), and the batched
engine (antigrok.training.batched.BatchedTrainer) training 1, 5 and 10 runs (seeds) at once; on CUDA it
replays CUDA graphs. The synthetic subset has random pixels except 195 columns that are zero in
every example, as the paper's MNIST subset (589 of its 784 pixels are ever non-zero), because
the fast step skips those. Only training steps are timed (no evaluation or checkpoints).

Each configuration is timed ``--repeats`` times, interleaved with the others so that a busy
machine slows them alike, and the fastest repeat is reported. On CPU the table gives wall-clock
time and the process's CPU time: on a shared machine the CPU time is the fair comparison (the
wall clock also counts the time other processes held the cores). On CPU it also projects the
training time of configs/cpu.yaml and configs/timescale.yaml from these timings.

``--profile`` shows where a step's time goes, plain loop against fast step: the matrix products
(aten::mm / addmm self time), the optimizer (AdamW's step, all it calls) and the rest (gather,
activations, loss, autograd bookkeeping, Python), from torch.profiler (wall time of this thread).

    python benchmarks/train_throughput.py                     # CPU, and CUDA when available
    python benchmarks/train_throughput.py --devices cpu --runs 1 --cpu-steps 200 --threads 2
    python benchmarks/train_throughput.py --devices cpu --runs --profile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, record_function

from antigrok.training.batched import BatchedTrainer
from antigrok.training.fast_mlp_step import FastMLPStep
from antigrok.training.models import build_model
from antigrok.training.train import BatchOrder, RunSpec, make_optimizer
from antigrok.workflow_config import load_workflow_config

WIDTHS = [784, 200, 200, 10]
NUM_TRAIN, BATCH, LR, WEIGHT_DECAY, INIT_SCALE = 1000, 200, 5e-4, 0.01, 8.0
ZERO_COLUMNS = 195  # pixels that are zero in every image of the paper's 1000-image MNIST subset
FULL_GRID_STEPS, FULL_GRID_WEIGHT_DECAYS, FULL_GRID_SEEDS = 10_000_000, 2, 5
PRODUCT_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
CPU_CONFIGS = ["configs/cpu.yaml", "configs/timescale.yaml"]
REPO = Path(__file__).resolve().parents[1]


def synthetic_subset(device) -> dict:
    """A stand-in for the MNIST subset: same shapes and ranges, and as many always-zero columns."""
    generator = torch.Generator().manual_seed(0)
    x_train = torch.rand(NUM_TRAIN, 784, generator=generator)
    x_train[:, :ZERO_COLUMNS] = 0.0
    return {
        "x_train": x_train,
        "y_train": torch.arange(NUM_TRAIN) % 10,
        "x_test": torch.rand(100, 784, generator=generator),
        "y_test": torch.arange(100) % 10,
        "num_classes": 10,
    }


def experiment_config(steps: int) -> dict:
    return {
        "dataset": {"name": "mnist"},
        "model": {"name": "mlp", "widths": WIDTHS, "init_scale": INIT_SCALE},
        "loss": "mse",
        "optimizer": {"name": "adamw", "lr": LR, "betas": [0.9, 0.999], "eps": 1e-8},
        "weight_decays": [WEIGHT_DECAY],
        "seeds": [0],
        "steps": steps,
        "batch_size": BATCH,
        "dtype": "float64",
    }


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def part(name: str, profiling: bool):
    """A named range in the profile (nothing at all when not profiling)."""
    return record_function(name) if profiling else contextlib.nullcontext()


class Clock:
    """Wall-clock and process CPU seconds of a block, after the device finished its work."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


class PlainLoop:
    """The reference: nn.Sequential, autograd, torch.optim.AdamW, one eager step at a time."""

    def __init__(self, device):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(INIT_SCALE)
        self.device = device
        self.model = model.to(device, torch.float64)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        data = synthetic_subset(device)
        self.x = data["x_train"].to(device, torch.float64)
        self.one_hot = F.one_hot(data["y_train"], 10).to(device, torch.float64)
        self.generator = torch.Generator().manual_seed(0)
        self.permutation = None
        self.step = 0

    def run(self, count: int, profiling: bool = False) -> None:
        batches_per_epoch = NUM_TRAIN // BATCH
        for _ in range(count):
            position = self.step % batches_per_epoch
            if position == 0:
                self.permutation = torch.randperm(NUM_TRAIN, generator=self.generator).to(self.device)
            index = self.permutation[position * BATCH:(position + 1) * BATCH]
            loss = F.mse_loss(self.model(self.x[index]), self.one_hot[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with part("optimizer", profiling):
                self.optimizer.step()
            self.step += 1


class FastStep:
    """What train_run does per step with train.cpu_engine fast: BatchOrder, then FastMLPStep."""

    def __init__(self, device):
        experiment = experiment_config(1)
        model = build_model(experiment["model"], "float64", seed=0)
        optimizer = make_optimizer(model, experiment["optimizer"], WEIGHT_DECAY)
        data = synthetic_subset(device)
        self.stepper = FastMLPStep(model, optimizer, data["x_train"].to(torch.float64), data["y_train"])
        self.batches = BatchOrder(NUM_TRAIN, BATCH, seed=0)

    def run(self, count: int, profiling: bool = False) -> None:
        for _ in range(count):
            index = self.batches.next()
            if not profiling:
                self.stepper.step(index, LR)
                continue
            self.stepper.compute_gradients(index)
            with part("optimizer", profiling):
                self.stepper.apply_update(LR)


def time_runner(runner, device, steps: int, warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of ``runner`` (PlainLoop or FastStep)."""
    runner.run(warmup)
    with Clock(device) as clock:
        runner.run(steps)
    return clock.wall / steps, clock.cpu / steps


def time_engine(device, num_runs: int, steps: int, warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of the batched engine training ``num_runs`` runs (all of them)."""
    experiment = experiment_config(warmup + steps)
    specs = [RunSpec("bench", experiment, WEIGHT_DECAY, seed) for seed in range(num_runs)]
    trainer = BatchedTrainer(specs, synthetic_subset(device), device=str(device))
    trainer.train(0, warmup)  # on CUDA this captures the graphs
    with Clock(device) as clock:
        trainer.train(warmup, steps)
    return clock.wall / steps, clock.cpu / steps


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores, load average {load:.1f}"


def benchmark(device, runs: list[int], steps: int, warmup: int, repeats: int) -> list[dict]:
    """The fastest of ``repeats`` interleaved timings (wall, cpu) per configuration."""
    best: dict = {}

    def keep(key, timing):
        wall, cpu = best.get(key, (float("inf"), float("inf")))
        best[key] = (min(wall, timing[0]), min(cpu, timing[1]))

    # Built once: each repeat continues their runs, so later repeats time steady-state steps.
    plain = PlainLoop(device)
    fast = FastStep(device) if device.type == "cpu" else None
    for _ in range(repeats):
        keep("plain", time_runner(plain, device, steps, warmup))
        if fast is not None:
            keep("fast", time_runner(fast, device, steps, warmup))
        for num_runs in runs:
            keep(num_runs, time_engine(device, num_runs, steps, warmup))
    rows = [{"engine": "plain loop", "runs": 1, "step_s": best["plain"][0], "cpu_step_s": best["plain"][1]}]
    if fast is not None:
        rows.append({"engine": "fast step", "runs": 1, "step_s": best["fast"][0], "cpu_step_s": best["fast"][1]})
    rows += [{"engine": "batched engine", "runs": n, "step_s": best[n][0], "cpu_step_s": best[n][1]} for n in runs]
    return rows


def print_table(device, rows: list[dict], steps: int) -> None:
    print(f"\n{device.type.upper()}: {machine(device)}; {steps} timed steps, float64, batch {BATCH}")
    show_cpu = device.type == "cpu"
    header = f"{'engine':<16}{'runs':>5}{'ms/step':>10}{'ms/run-step':>13}{'run-steps/s':>13}{'vs plain':>10}"
    print(header + (f"{'CPU ms/run-step':>17}{'vs plain':>10}" if show_cpu else ""))
    plain, plain_cpu = rows[0]["step_s"], rows[0]["cpu_step_s"]
    for row in rows:
        per_run, cpu_per_run = row["step_s"] / row["runs"], row["cpu_step_s"] / row["runs"]
        line = (f"{row['engine']:<16}{row['runs']:>5}{row['step_s'] * 1e3:>10.3f}{per_run * 1e3:>13.3f}"
                f"{1 / per_run:>13.1f}{plain / per_run:>9.2f}x")
        if show_cpu:
            line += f"{cpu_per_run * 1e3:>17.3f}{plain_cpu / cpu_per_run:>9.2f}x"
        print(line)
    group = next((row for row in rows if row["engine"] == "batched engine" and row["runs"] == FULL_GRID_SEEDS), None)
    if group is not None:
        grid_s = FULL_GRID_WEIGHT_DECAYS * FULL_GRID_STEPS * group["step_s"]
        plain_s = FULL_GRID_WEIGHT_DECAYS * FULL_GRID_SEEDS * FULL_GRID_STEPS * plain
        print(f"full grid ({FULL_GRID_WEIGHT_DECAYS} weight decays x {FULL_GRID_SEEDS} seeds x {FULL_GRID_STEPS:.0e} steps) "
              f"projected from these timings, training steps only, one group after the other: batched {grid_s / 3600:.1f} h "
              f"({FULL_GRID_STEPS * group['step_s'] / 60:.1f} min per weight decay), plain loop {plain_s / 3600:.1f} h")


def run_lengths(config_path: Path) -> list[int]:
    """The training steps of each run of a config (experiments x weight decays x seeds)."""
    config = load_workflow_config([config_path])
    return [experiment["steps"] for experiment in config["experiments"].values()
            for _ in experiment["weight_decays"] for _ in experiment["seeds"]]


def two_core_wall(lengths: list[int]) -> int:
    """Steps on the busier of 2 cores when the runs (one core each) go longest first to the idler core."""
    cores = [0, 0]
    for length in sorted(lengths, reverse=True):
        cores[cores.index(min(cores))] += length
    return max(cores)


def print_config_estimates(rows: list[dict]) -> None:
    """Training time of the CPU configs at these per-step CPU times (steps only, one run per core)."""
    print("\ntraining time of the CPU configs at these CPU times per step (training steps only; "
          "evaluation, checkpoints and the analyses come on top)")
    for row in rows[:2]:
        for name in CPU_CONFIGS:
            lengths = run_lengths(REPO / name)
            core_hours = sum(lengths) * row["cpu_step_s"] / 3600
            wall_min = two_core_wall(lengths) * row["cpu_step_s"] / 60
            print(f"  {row['engine']:<12}{name:<24}{len(lengths)} runs, {sum(lengths):.2e} steps: "
                  f"{core_hours:.2f} core-hours, {wall_min:.0f} min wall on 2 idle cores")


def profile_parts(runner, steps: int) -> dict:
    """Milliseconds per step in the products, the optimizer and the rest, from torch.profiler."""
    runner.run(3)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profile:
        with record_function("steps"):
            runner.run(steps, profiling=True)
    events = {event.key: event for event in profile.key_averages()}
    total = events["steps"].cpu_time_total
    optimizer = events["optimizer"].cpu_time_total
    products = sum(event.self_cpu_time_total for key, event in events.items() if key in PRODUCT_OPS)
    parts = {"products": products, "optimizer": optimizer, "rest": total - products - optimizer, "total": total}
    return {name: microseconds / steps / 1e3 for name, microseconds in parts.items()}


def print_profile(device, steps: int) -> None:
    print(f"\nwhere a step's time goes ({machine(device)}; torch.profiler, {steps} steps, wall time of this thread)")
    print(f"{'engine':<12}{'total ms':>10}{'products':>16}{'optimizer':>16}{'rest':>16}")
    for name, runner in (("plain loop", PlainLoop(device)), ("fast step", FastStep(device))):
        parts = profile_parts(runner, steps)
        cells = "".join(f"{parts[key]:>8.2f} ({parts[key] / parts['total']:>3.0%})" for key in ("products", "optimizer", "rest"))
        print(f"{name:<12}{parts['total']:>10.2f}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cpu and/or cuda (skipped without CUDA)")
    parser.add_argument("--runs", nargs="*", type=int, default=[1, 5, 10], help="batched engine group sizes (none: skip it)")
    parser.add_argument("--cpu-steps", type=int, default=10)
    parser.add_argument("--cuda-steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA: at least one graph chunk)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, as train.threads of a job (default 1)")
    parser.add_argument("--profile", action="store_true", help="CPU: also profile where a step's time goes")
    parser.add_argument("--profile-steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("\nCUDA: not available on this machine; skipped")
            continue
        device = torch.device(name)
        steps = args.cuda_steps if device.type == "cuda" else args.cpu_steps
        warmup = max(args.warmup, 64) if device.type == "cuda" else args.warmup
        rows = benchmark(device, args.runs, steps, warmup, args.repeats)
        print_table(device, rows, steps)
        if device.type == "cpu":
            print_config_estimates(rows)
            if args.profile:
                print_profile(device, args.profile_steps)


if __name__ == "__main__":
    main()
