"""Training throughput: a plain single-run PyTorch loop against the batched engine, side by side.

The reference is the paper's setup written the plain way: a 784-200-200-10 ReLU MLP (PyTorch
init x 8), float64, torch.optim.AdamW (lr 5e-4, weight decay 0.01), MSE against one-hot targets,
batches of 200 from a 1000 x 784 train subset held on the device (a fresh permutation each
epoch), one eager step at a time. The engine is antigrok.batched.BatchedTrainer training 1, 5
and 10 runs (seeds) at once; on CUDA it replays CUDA graphs. Only training steps are timed
(no evaluation or checkpoints). Each configuration is timed ``--repeats`` times, interleaved with
the others so that a busy machine slows them alike, and the fastest repeat is reported. On CPU
the table gives wall-clock time and the process's CPU time: on a shared machine the CPU time is
the fair comparison (the wall clock also counts the time other processes held the cores).

    python benchmarks/train_throughput.py                     # CPU, and CUDA when available
    python benchmarks/train_throughput.py --devices cpu --cpu-steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from antigrok.batched import BatchedTrainer
from antigrok.train import RunSpec

WIDTHS = [784, 200, 200, 10]
NUM_TRAIN, BATCH, LR, WEIGHT_DECAY, INIT_SCALE = 1000, 200, 5e-4, 0.01, 8.0
FULL_GRID_STEPS, FULL_GRID_WEIGHT_DECAYS, FULL_GRID_SEEDS = 10_000_000, 2, 5


def synthetic_subset(device) -> dict:
    """A stand-in for the MNIST subset: same shapes and ranges (timing does not depend on values)."""
    generator = torch.Generator().manual_seed(0)
    return {
        "x_train": torch.rand(NUM_TRAIN, 784, generator=generator),
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


def time_plain_loop(device, steps: int, warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of the plain eager loop (one run)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(INIT_SCALE)
    model = model.to(device, torch.float64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    data = synthetic_subset(device)
    x = data["x_train"].to(device, torch.float64)
    one_hot = F.one_hot(data["y_train"], 10).to(device, torch.float64)
    generator = torch.Generator().manual_seed(0)
    batches_per_epoch = NUM_TRAIN // BATCH

    def run(count: int, start: int) -> None:
        nonlocal permutation
        for step in range(start, start + count):
            if step % batches_per_epoch == 0:
                permutation = torch.randperm(NUM_TRAIN, generator=generator).to(device)
            index = permutation[(step % batches_per_epoch) * BATCH:(step % batches_per_epoch + 1) * BATCH]
            loss = F.mse_loss(model(x[index]), one_hot[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    permutation = None
    run(warmup, 0)
    with Clock(device) as clock:
        run(steps, warmup)
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

    for _ in range(repeats):
        keep("plain", time_plain_loop(device, steps, warmup))
        for num_runs in runs:
            keep(num_runs, time_engine(device, num_runs, steps, warmup))
    rows = [{"engine": "plain loop", "runs": 1, "step_s": best["plain"][0], "cpu_step_s": best["plain"][1]}]
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
    group = next((row for row in rows[1:] if row["runs"] == FULL_GRID_SEEDS), None)
    if group is not None:
        grid_s = FULL_GRID_WEIGHT_DECAYS * FULL_GRID_STEPS * group["step_s"]
        plain_s = FULL_GRID_WEIGHT_DECAYS * FULL_GRID_SEEDS * FULL_GRID_STEPS * plain
        print(f"full grid ({FULL_GRID_WEIGHT_DECAYS} weight decays x {FULL_GRID_SEEDS} seeds x {FULL_GRID_STEPS:.0e} steps) "
              f"projected from these timings, training steps only, one group after the other: batched {grid_s / 3600:.1f} h "
              f"({FULL_GRID_STEPS * group['step_s'] / 60:.1f} min per weight decay), plain loop {plain_s / 3600:.1f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cpu and/or cuda (skipped without CUDA)")
    parser.add_argument("--runs", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--cpu-steps", type=int, default=10)
    parser.add_argument("--cuda-steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA: at least one graph chunk)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, as train.threads of a job (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("\nCUDA: not available on this machine; skipped")
            continue
        device = torch.device(name)
        steps = args.cuda_steps if device.type == "cuda" else args.cpu_steps
        warmup = max(args.warmup, 64) if device.type == "cuda" else args.warmup
        print_table(device, benchmark(device, args.runs, steps, warmup, args.repeats), steps)


if __name__ == "__main__":
    main()
