"""Pilot of the transformer search (issue 36): what a training step of each candidate shape costs on
this CPU, and how many steps one core trains in a given budget.

Each configuration is config.yaml's ``modadd_transformer`` (Nanda et al.'s 1-layer transformer,
AdamW betas (0.9, 0.98), warm-up 10, cross-entropy) at one size, batch, dtype and option:

    p53      p 53, 40% train (1123 pairs), d_model 64, 4 heads of 16, d_mlp 256 (configs/modadd_cpu.yaml)
    p113     p 113, 30% train (3830 pairs), d_model 128, 4 heads of 32, d_mlp 512 (config.yaml, Nanda et al.)
    p53_pre4 p 53, 50% train (1404 pairs), d_model 64, 4 heads of 16, d_mlp 256, 4 pre-LayerNorm blocks
    p97_pre4 p 97, 50% train (4704 pairs), d_model 128, 4 heads of 32, d_mlp 512, 4 pre-LayerNorm
             blocks (the Verma-like arms; Verma 2026 states layers, p, fraction, batch, not widths)

each full batch and mini-batch (``--batches``; 512 = Verma's), float32 and float64, float32 weights
with float64 logits (``model.logits_dtype``) and the MSE loss at float32 (``--precisions``; the MSE
loss at float64, the MLP's recipe, on request).

A step is timed exactly as ``train_run`` takes it: ``antigrok.training.train.SingleRun`` (model, AdamW, batch
order, step object) advanced ``--steps`` steps, ``--repeats`` times, after ``--warmup`` untimed steps.
Evaluation (the train_log.csv row: loss and accuracy on every train and test pair) is timed
``--eval-repeats`` times. Both are measured in process CPU time (``time.process_time``) and wall time
with ``torch.set_num_threads(--threads)``: on a machine shared with other processes the wall clock
also counts the time this process waited for a core, so the CPU time is the cost of a step; the
median of the repeats is reported, the fastest beside it.

``budget steps`` is the largest step count whose steps plus its train_log.csv evaluations
(``log.per_decade`` 60 and ``checkpoints.per_decade`` 20, as the workflow logs) fit in ``--budget-hours``
of one core's CPU time at the median costs (checkpoints and the resume state are not counted: a few
hundred small files).

    python benchmarks/modadd_pilot.py                        # the default grid, a markdown table
    python benchmarks/modadd_pilot.py --sizes p53 --steps 5  # a quick look
    python benchmarks/modadd_pilot.py --sizes p53 p53_pre4 --batches 128 156 200 \
        --precisions float32 "float64, MSE"                  # the search's mini-batch arms
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from antigrok.training.data import prepare_modadd
from antigrok.training.schedule import log_steps
from antigrok.training.train import RunSpec, SingleRun, evaluation_row
from antigrok.workflow_config import load_workflow_config

REPO = Path(__file__).resolve().parents[1]
LOG_PER_DECADE, CHECKPOINT_PER_DECADE = 60, 20

# name -> (modulus, train_fraction, d_model, d_mlp, num_layers, layer_norm)
SIZES = {
    "p53": (53, 0.4, 64, 256, 1, None),
    "p113": (113, 0.3, 128, 512, 1, None),
    "p53_pre4": (53, 0.5, 64, 256, 4, "pre"),
    "p97_pre4": (97, 0.5, 128, 512, 4, "pre"),
}
# name -> (dtype, model.logits_dtype, loss)
PRECISIONS = {
    "float32": ("float32", None, "cross_entropy"),
    "float64": ("float64", None, "cross_entropy"),
    "float32+float64 logits": ("float32", "float64", "cross_entropy"),
    "float32, MSE": ("float32", None, "mse"),
    "float64, MSE": ("float64", None, "mse"),
}


def experiment(size: str, precision: str, batch_size: int | None) -> dict:
    """config.yaml's modadd_transformer at ``size`` and ``precision``; full batch when batch_size is None."""
    modulus, fraction, d_model, d_mlp, num_layers, layer_norm = SIZES[size]
    dtype, logits_dtype, loss = PRECISIONS[precision]
    base = load_workflow_config()["experiments"]["modadd_transformer"]
    settings = copy.deepcopy(base)
    settings["dataset"].update(modulus=modulus, train_fraction=fraction)
    settings["model"].update(d_vocab=modulus + 1, d_model=d_model, num_heads=4, d_head=d_model // 4,
                             d_mlp=d_mlp, num_layers=num_layers)
    if layer_norm is not None:
        settings["model"]["layer_norm"] = layer_norm
    if logits_dtype is not None:
        settings["model"]["logits_dtype"] = logits_dtype
    settings.update(dtype=dtype, loss=loss, batch_size=batch_size or modulus * modulus, steps=10**6)
    return settings


def timed(function, repeats: int) -> tuple[list[float], list[float]]:
    """Process CPU seconds and wall seconds of each of ``repeats`` calls of ``function``."""
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        function()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return cpu, wall


def budget_steps(step_s: float, eval_s: float, budget_s: float) -> int:
    """The most steps whose steps and logged evaluations cost at most ``budget_s``."""
    def cost(steps: int) -> float:
        return steps * step_s + len(log_steps(steps, LOG_PER_DECADE, CHECKPOINT_PER_DECADE)) * eval_s

    low, high = 1, max(2, int(budget_s / step_s) + 1)
    while low < high:  # cost grows with steps: the last affordable count by bisection
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= budget_s else (low, middle - 1)
    return low


def measure(size: str, precision: str, batch_size: int | None, args) -> dict:
    settings = experiment(size, precision, batch_size)
    dataset = prepare_modadd(settings["dataset"]["modulus"], settings["dataset"]["train_fraction"], 0)
    run = SingleRun(RunSpec("pilot", settings, weight_decay=1.0, seed=0), dataset, device="cpu")
    run.start()
    step = 0

    def advance(count: int) -> None:
        nonlocal step
        run.advance(step, count)
        step += count

    advance(args.warmup)
    step_cpu, step_wall = timed(lambda: advance(args.steps), args.repeats)
    run.sync()
    eval_cpu, eval_wall = timed(lambda: evaluation_row(run.model, run.spec, step, run.train_data, run.test_data,
                                                       run.loss_name), args.eval_repeats)
    step_s = statistics.median(step_cpu) / args.steps
    eval_s = statistics.median(eval_cpu)
    return {
        "size": size, "train_pairs": len(dataset["x_train"]),
        "batch": "full" if batch_size is None else str(batch_size), "precision": precision,
        "cpu_ms_per_step": 1e3 * step_s, "fastest_cpu_ms_per_step": 1e3 * min(step_cpu) / args.steps,
        "wall_ms_per_step": 1e3 * statistics.median(step_wall) / args.steps,
        "cpu_ms_per_eval": 1e3 * eval_s, "wall_ms_per_eval": 1e3 * statistics.median(eval_wall),
        "budget_steps": budget_steps(step_s, eval_s, args.budget_hours * 3600),
    }


COLUMNS = [("size", "size"), ("train_pairs", "train pairs"), ("batch", "batch"), ("precision", "precision"),
           ("cpu_ms_per_step", "CPU ms / step"), ("fastest_cpu_ms_per_step", "fastest"),
           ("wall_ms_per_step", "wall ms / step"), ("cpu_ms_per_eval", "CPU ms / log row"),
           ("wall_ms_per_eval", "wall ms / log row"), ("budget_steps", "steps in budget")]


def markdown_row(values: list) -> str:
    return "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) + " |"


def configurations(sizes: list[str], batches: list[str], precisions: list[str]) -> list[tuple[str, str, int | None]]:
    """(size, precision, batch) of the pilot: every combination; batch ``full`` is None."""
    return [(size, precision, None if batch == "full" else int(batch))
            for size in sizes for batch in batches for precision in precisions]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batches", nargs="+", default=["full", "512"], help="'full' or a batch size")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS)[:4])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-hours", type=float, default=1.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# modadd pilot: torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; median of "
          f"{args.repeats} x {args.steps} steps after {args.warmup} untimed, {args.eval_repeats} evaluations; "
          f"steps in budget: {args.budget_hours:g} h of one core's CPU time (log rows included)\n")
    print(markdown_row([title for _, title in COLUMNS]))
    print("|" + "---|" * len(COLUMNS), flush=True)
    for size, precision, batch in configurations(args.sizes, args.batches, args.precisions):
        row = measure(size, precision, batch, args)
        print(markdown_row([row[key] for key, _ in COLUMNS]), flush=True)
    print(f"\n# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
