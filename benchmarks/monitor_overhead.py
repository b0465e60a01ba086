"""Overhead of antigrok.monitor.SpectralMonitor on a training loop: the reference loop and the
same loop with the monitor attached, side by side (interleaved repeats, medians).

The loop is the workflow's MNIST MLP (784-200-200-10, float64, AdamW, MSE, batch 200) on
synthetic data of MNIST's shape, so it runs without the data set:

    nice -n 19 .venv/bin/python benchmarks/monitor_overhead.py                   # the defaults
    nice -n 19 .venv/bin/python benchmarks/monitor_overhead.py --steps 5000 --every 500 --modes thread,process,none
    nice -n 19 .venv/bin/python benchmarks/monitor_overhead.py --pieces-only        # the pieces' CPU cost

Prints one line per mode: median wall and CPU seconds (CPU: this process and its threads, plus
the monitor's worker process in mode "process"), overhead of each in % of the reference loop,
analyses done. On a busy machine wall time mostly measures the scheduler: read the CPU overhead.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import warnings

import torch

from antigrok.monitor import SpectralAlarmWarning, SpectralMonitor
from antigrok.training.models import build_model

WIDTHS = [784, 200, 200, 10]
DEFAULT_EVERY = inspect.signature(SpectralMonitor).parameters["every_n_steps"].default
DEFAULT_BACKGROUND = inspect.signature(SpectralMonitor).parameters["background"].default


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(steps: int, monitor_kwargs: dict | None, seed: int = 0) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``steps`` optimizer steps (the monitor made and closed inside the
    timing), analyses done."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1000, 784, generator=generator, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (1000,), generator=generator), 10).to(torch.float64)
    model = build_model({"name": "mlp", "widths": WIDTHS, "init_scale": 8.0}, "float64", seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        monitor = None
        start, start_cpu, start_children = time.perf_counter(), time.process_time(), children_cpu()
        if monitor_kwargs is not None:
            monitor = SpectralMonitor(model, csv_path=Path(tmp) / "monitor.csv", average_layers=["fc1", "fc2"],
                                      **monitor_kwargs)
        for _ in range(steps):
            index = torch.randint(0, 1000, (200,), generator=generator)
            loss = torch.nn.functional.mse_loss(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step()
        if monitor is not None:
            monitor.close()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - start_cpu + children_cpu() - start_children
    analyses = 0 if monitor is None else monitor.history["step"].nunique()
    return seconds, cpu, analyses


def piece_costs(steps: int = 100, analyses: int = 3, copies: int = 50) -> dict[str, float]:
    """CPU seconds of one training step, one weight copy and one analysis (the monitor's pieces)."""
    from antigrok.monitor import analyze_snapshot, snapshot_weights

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 784, generator=generator, dtype=torch.float64)
    y = torch.rand(1000, 10, generator=generator, dtype=torch.float64)
    model = build_model({"name": "mlp", "widths": WIDTHS, "init_scale": 8.0}, "float64", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    analyze_snapshot(snapshot_weights(model), 0, 0)  # warm-up
    start = time.process_time()
    for _ in range(steps):
        index = torch.randint(0, 1000, (200,), generator=generator)
        loss = torch.nn.functional.mse_loss(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step = (time.process_time() - start) / steps
    start = time.process_time()
    for _ in range(copies):
        snapshot_weights(model)
    copy = (time.process_time() - start) / copies
    start = time.process_time()
    for index in range(analyses):
        analyze_snapshot(snapshot_weights(model), 0, index + 1)
    analysis = (time.process_time() - start) / analyses
    return {"training step": step, "weight copy": copy, "analysis": analysis}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per loop (default 3000)")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY, help=f"every_n_steps (default {DEFAULT_EVERY})")
    parser.add_argument("--modes", default="thread,process,none",
                        help="monitor background modes to compare, comma-separated (none = in the call)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per loop (default 3)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads (default 1, train.threads)")
    parser.add_argument("--pieces-only", action="store_true",
                        help="only the CPU cost of a training step, a weight copy and an analysis")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    warnings.simplefilter("ignore", SpectralAlarmWarning)  # alarms on random data mean nothing here

    pieces = piece_costs()
    print("CPU seconds: " + ", ".join(f"{name} {seconds:.5f}" for name, seconds in pieces.items())
          + f"; at every_n_steps={args.every}: analysis = "
          f"{100 * pieces['analysis'] / (args.every * pieces['training step']):.2f} % of the training CPU time, "
          f"the copy on the training thread {100 * pieces['weight copy'] / (args.every * pieces['training step']):.4f} %")
    if args.pieces_only:
        return

    modes = [mode.strip() for mode in args.modes.split(",")]
    loops = {"reference": None} | {
        mode: {"every_n_steps": args.every, "background": None if mode == "none" else mode} for mode in modes
    }
    train(200, None)  # warm-up: allocator, thread pools
    times = {name: [] for name in loops}
    cpu_times = {name: [] for name in loops}
    analyses = {}
    for _ in range(args.repeats):
        for name, kwargs in loops.items():  # interleaved, so a busy machine slows every loop alike
            seconds, cpu, analyses[name] = train(args.steps, kwargs)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}; {args.steps} steps, every_n_steps={args.every}, "
          f"{args.repeats} repeats (default background: {DEFAULT_BACKGROUND})")
    reference = statistics.median(times["reference"])
    reference_cpu = statistics.median(cpu_times["reference"])
    for name, values in times.items():
        wall, cpu = statistics.median(values), statistics.median(cpu_times[name])
        label = "reference" if name == "reference" else f"monitor background={name}"
        print(f"{label:30s} wall {wall:7.2f} s ({100.0 * (wall - reference) / reference:+6.1f} %)  "
              f"CPU {cpu:7.2f} s ({100.0 * (cpu - reference_cpu) / reference_cpu:+6.1f} %)  "
              f"analyses {analyses[name]}")


if __name__ == "__main__":
    main()
