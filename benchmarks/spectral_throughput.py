"""Spectral-analysis throughput: WeightWatcher 0.7.5.5 against the fast engine, per checkpoint.

Both engines analyze the same checkpoints through ``antigrok.htsr.analyze_weights`` exactly as the
``spectra`` rule does (every 2-D weight, each layer seeded by (run seed, step, layer), fix_fingers
as configured, the MP KS test included): ``engine="weightwatcher"`` calls
``WeightWatcher.analyze(randomize=True, fix_fingers=...)`` per layer, ``engine="fast"`` calls
``antigrok.spectra.fast_engine``. The two engines alternate, ``--repeats`` times per checkpoint, so that
a busy machine slows them alike, and the fastest repeat of each is reported; each engine is warmed
up (imports) on the first checkpoint before timing. The table gives wall-clock time and this
process's CPU time per checkpoint (on a shared machine the CPU time is the fair comparison: the
wall clock also counts the time other processes held the cores), the speedup, and the largest
relative difference between the engines in alpha, xmin,
num_pl_spikes, rand_sigma_mp and ww_num_traps over the checkpoint's layers. BLAS runs with
``--threads`` threads (default 1, as in the rule's worker processes) for WeightWatcher; the fast
engine always limits BLAS to one thread for its small matrices.

    python benchmarks/spectral_throughput.py                        # the smoke run's checkpoints
    python benchmarks/spectral_throughput.py results/runs/mnist_mlp/wd0.0/seed0/checkpoints -n 8
    python benchmarks/spectral_throughput.py a.pt b.pt --threads 0 --fix-fingers false   # BLAS default
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from antigrok import htsr
from antigrok.training.train import load_checkpoint

DEFAULT_CHECKPOINTS = Path("results/runs/mnist_mlp/wd0.0/seed0/checkpoints")
COMPARED = ("alpha", "xmin", "num_pl_spikes", "rand_sigma_mp", "ww_num_traps")


def pick(files: list[Path], count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted list (first and last included)."""
    if count >= len(files):
        return files
    index = np.unique(np.linspace(0, len(files) - 1, count).round().astype(int))
    return [files[i] for i in index]


def timed(matrices, *, run_seed: int, step: int, fix_fingers, engine: str):
    wall, cpu = time.perf_counter(), time.process_time()
    rows, _ = htsr.analyze_weights(matrices, run_seed=run_seed, step=step, fix_fingers=fix_fingers, engine=engine)
    return rows, time.perf_counter() - wall, time.process_time() - cpu


def max_relative_difference(rows_a: list[dict], rows_b: list[dict]) -> float:
    worst = 0.0
    for a, b in zip(rows_a, rows_b):
        for key in COMPARED:
            x, y = float(a[key]), float(b[key])
            if math.isnan(x) and math.isnan(y):
                continue
            if math.isnan(x) != math.isnan(y):
                return math.inf
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help=f"checkpoint files or folders (default: {DEFAULT_CHECKPOINTS})")
    parser.add_argument("-n", "--num-checkpoints", type=int, default=6,
                        help="checkpoints to time, spread over those given (default 6)")
    parser.add_argument("-r", "--repeats", type=int, default=2,
                        help="timings per engine and checkpoint, interleaved; the fastest counts (default 2)")
    parser.add_argument("--fix-fingers", default="clip_xmax", choices=["clip_xmax", "false"])
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for both engines (default 1, as in the spectra rule's workers; "
                             "0: the library default; the fast engine itself always uses 1)")
    args = parser.parse_args(argv)
    fix_fingers = False if args.fix_fingers == "false" else args.fix_fingers

    files = []
    for path in args.checkpoints or [DEFAULT_CHECKPOINTS]:
        files.extend(htsr.checkpoints_to_analyze(path))
    if not files:
        raise SystemExit("no checkpoint files given")
    files = pick(sorted(files), args.num_checkpoints)

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    checkpoints = []
    for path in files:
        checkpoint = load_checkpoint(path)
        step = int(checkpoint.get("step") or 0)
        checkpoints.append((path, step, int(checkpoint.get("seed", 0) or 0), htsr.weight_matrices(checkpoint["model"])))

    _, _, run_seed, matrices = checkpoints[0]
    for engine in ("weightwatcher", "fast"):  # warm-up: imports, first-call costs
        timed(matrices, run_seed=run_seed, step=checkpoints[0][1], fix_fingers=fix_fingers, engine=engine)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"BLAS threads: {args.threads or 'default'}; fix_fingers: {fix_fingers}; "
          f"fastest of {max(1, args.repeats)} repeats")
    layers = ", ".join(f"{name} {tuple(w.shape)}" for name, w in checkpoints[0][3].items())
    print(f"{len(checkpoints)} checkpoints of {files[0].parent}; layers: {layers}\n")
    header = (f"{'step':>10} | {'WW wall s':>9} {'WW CPU s':>9} | {'fast wall ms':>12} {'fast CPU ms':>11} | "
              f"{'speedup wall':>12} {'speedup CPU':>11} | {'max rel diff':>12}")
    print(header)
    print("-" * len(header))
    totals = {"ww_wall": 0.0, "ww_cpu": 0.0, "fast_wall": 0.0, "fast_cpu": 0.0}
    speedups = []
    for path, step, seed, matrices in checkpoints:
        ww_wall = ww_cpu = fast_wall = fast_cpu = math.inf
        for _ in range(max(1, args.repeats)):
            ww_rows, wall, cpu = timed(matrices, run_seed=seed, step=step, fix_fingers=fix_fingers,
                                       engine="weightwatcher")
            ww_wall, ww_cpu = min(ww_wall, wall), min(ww_cpu, cpu)
            fast_rows, wall, cpu = timed(matrices, run_seed=seed, step=step, fix_fingers=fix_fingers,
                                         engine="fast")
            fast_wall, fast_cpu = min(fast_wall, wall), min(fast_cpu, cpu)
        totals["ww_wall"] += ww_wall
        totals["ww_cpu"] += ww_cpu
        totals["fast_wall"] += fast_wall
        totals["fast_cpu"] += fast_cpu
        speedups.append(ww_cpu / fast_cpu)
        print(f"{step:>10} | {ww_wall:>9.2f} {ww_cpu:>9.2f} | {fast_wall * 1e3:>12.1f} {fast_cpu * 1e3:>11.1f} | "
              f"{ww_wall / fast_wall:>11.0f}x {ww_cpu / fast_cpu:>10.0f}x | "
              f"{max_relative_difference(ww_rows, fast_rows):>12.1e}")
    count = len(checkpoints)
    print("-" * len(header))
    print(f"{'mean':>10} | {totals['ww_wall'] / count:>9.2f} {totals['ww_cpu'] / count:>9.2f} | "
          f"{totals['fast_wall'] / count * 1e3:>12.1f} {totals['fast_cpu'] / count * 1e3:>11.1f} | "
          f"{totals['ww_wall'] / totals['fast_wall']:>11.0f}x {totals['ww_cpu'] / totals['fast_cpu']:>10.0f}x |")
    print(f"\nspeedup (CPU time): total {totals['ww_cpu'] / totals['fast_cpu']:.0f}x, "
          f"median over checkpoints {statistics.median(speedups):.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()
