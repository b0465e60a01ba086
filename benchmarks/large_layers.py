"""LLM-size layers: WeightWatcher 0.7.5.5 against the fast engine, side by side, in one run.

Synthetic layers of 4096 x 11008 (LLaMA-7B's MLP shape), 2880 x 5760 (a gpt-oss expert's packed
gate_up matrix) and 2880 x 2880 (one gpt-oss expert projection: gate, up or down, in both
gpt-oss-20b and -120b), or any ``--shapes``, made here from a fixed seed (no download):
Student-t entries with 3 degrees of freedom (heavy tailed, as trained LLM weights), scaled by
1/sqrt(in), plus a small positive mean, a
rank-one structure that survives shuffling and gives Correlation Traps. Each engine analyses each
layer once through ``antigrok.htsr.analyze_layer`` with the same seed, as ``antigrok analyze``
does (``fix_fingers='clip_xmax'``, the MP KS test included), the fast engine first.

Reported per layer and engine: wall-clock and process CPU time (on a shared machine CPU time is
the fair comparison: the wall clock also counts the time other processes held the cores; with
several threads CPU time adds up all of them), the peak memory (growth of the process's peak
resident set during the call: /proc/self/status VmHWM after resetting it through
/proc/self/clear_refs), the largest relative difference in alpha, xmin and rand_sigma_mp, and both
trap counts. Then where the fast engine's time goes on each layer. When 2880 x 2880 was measured,
the projected time of the expert matrices of gpt-oss-20b (24 blocks x 32 experts x 3) and -120b
(36 x 128 x 3) follows, from its measured CPU time per matrix: on one core, on this machine's
cores, and on N SLURM nodes of ``--node-cores`` cores (one job per core, workflow/llm.smk).

BLAS / LAPACK threads: ``--threads`` for both engines (default 0: the libraries' default, every
core). The fast engine uses them for layers of 1024 x 1024 and larger (fastspectra.BIG_LAYER_WORK).

    python benchmarks/large_layers.py --threads 1                     # the three shapes, projection
    python benchmarks/large_layers.py --shapes 1024x1024,4096x4096 --threads 1
    python benchmarks/large_layers.py --shapes 4096x11008 --engines fast   # the fast engine alone
    python benchmarks/large_layers.py --shapes 4096x11008 --breakdown only # its steps alone
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from contextlib import contextmanager

import numpy as np

from antigrok import htsr
from antigrok.spectra import fast_engine as fs
from antigrok.spectra import primitives as spectral
from antigrok.spectra.ww_engine import import_weightwatcher

DEFAULT_SHAPES = "4096x11008,2880x5760,2880x2880"
EXPERT_SHAPE = "2880x2880"  # gpt-oss-20b and -120b: hidden 2880, intermediate 2880
# expert matrices (blocks x experts x gate, up, down): config.json of openai/gpt-oss-20b and -120b
GPT_OSS_EXPERT_MATRICES = {"gpt-oss-20b": 24 * 32 * 3, "gpt-oss-120b": 36 * 128 * 3}
NODE_COUNTS = (1, 10, 100)
COMPARED = ("alpha", "xmin", "rand_sigma_mp")


def synthetic_layer(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A heavy-tailed (rows, cols) weight with a small positive mean, from ``default_rng(seed)``."""
    generator = np.random.default_rng(seed)
    weight = generator.standard_t(3.0, size=(rows, cols))
    weight += 0.2  # a rank-one mean shift, ~1/9 of the entries' scale: traps in W_rand
    weight /= np.sqrt(cols)
    return weight


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return math.nan


@contextmanager
def measured(result: dict):
    """Wall time, CPU time and peak-RSS growth (MB) of the block, into ``result``."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    baseline = _status_mb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    result["wall"] = time.perf_counter() - wall
    result["cpu"] = time.process_time() - cpu
    result["peak_mb"] = _status_mb("VmHWM") - baseline


def relative_difference(a, b) -> float:
    a, b = float(a), float(b)
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def fast_phases(weight: np.ndarray, seed: int) -> dict[str, tuple[float, float]]:
    """(CPU s, wall s) of the fast engine's steps on one layer, run one after the other.

    The steps are the calls ``fastspectra.analyze_layer_series`` makes, with the same arguments (in
    it the shuffle of a big layer overlaps W's decomposition in a second thread: the CPU times add
    up the same, the wall times do not). The Gram matrix product and the eigenvalue solver inside
    ``esd_batch`` are timed again on their own ("of which" rows), to show which one dominates and
    whether ``esd_batch`` fell back to WeightWatcher's SVD (its row would exceed the two).
    """
    phases = {}

    def timed(name, function):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function()
        phases[name] = (time.process_time() - cpu, time.perf_counter() - wall)
        return value

    stack = weight[None]
    big = fs.is_big_layer(weight.shape)
    smaller_gram = (lambda w: w @ w.T) if weight.shape[0] <= weight.shape[1] else (lambda w: w.T @ w)
    with fs.blas_threads_for(weight.shape):
        evals = timed("eigenvalues of W (esd_batch)", lambda: fs.esd_batch(stack))
        gram = timed("  of which: Gram matrix product", lambda: smaller_gram(weight))
        timed("  of which: eigvalsh", lambda: fs.symmetric_eigenvalues(gram, big))
        del gram
        shuffled = timed("shuffle (WeightWatcher's draws)", lambda: fs.shuffled_stack(stack, [seed]))
        rand_evals = timed("eigenvalues of W_rand", lambda: fs.random_esd_batch(stack, [seed], shuffled=shuffled))
        del shuffled
        timed("rest: power law, MP fit, traps, KS",
              lambda: fs.layer_columns(evals[0], rand_evals[0], weight.shape, "clip_xmax"))
    return phases


def print_breakdown(table: dict[str, dict[str, tuple[float, float]]]) -> None:
    """The steps' (CPU s / wall s), one column per layer shape."""
    names = list(next(iter(table.values())))
    print(f"{'step':>36} | " + " ".join(f"{shape:>15}" for shape in table))
    for name in names:
        print(f"{name:>36} | " + " ".join(f"{f'{cpu:.2f} / {wall:.2f}':>15}" for cpu, wall in
                                          (phases[name] for phases in table.values())))
    totals = [sum(phases[n][0] for n in names if not n.startswith(" ")) for phases in table.values()]
    print(f"{'sum of the steps (CPU)':>36} | " + " ".join(f"{total:>15.2f}" for total in totals), flush=True)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def print_projection(per_matrix: dict[str, float], node_cores: int) -> dict:
    """Projected analysis time of the gpt-oss experts from the CPU seconds per expert matrix of each
    engine; returns {model: {engine: {"one core": s, "this machine": s, "N nodes": s}}}."""
    cores = os.cpu_count() or 1
    columns = ["one core", f"this machine ({cores} cores)"] + [f"{n} node{'s' if n > 1 else ''} x {node_cores} cores"
                                                               for n in NODE_COUNTS]
    print(f"\nprojected time of the expert matrices (CPU s per {EXPERT_SHAPE} matrix x matrices / cores; one job "
          "per core, no queueing; attention and router add 5% (20b) and 1.3% (120b) more matrices):")
    print(f"{'model':>13} {'matrices':>8} | {'engine':>13} {'s / matrix':>10} | "
          + " ".join(f"{c:>24}" for c in columns))
    projection = {}
    for model, matrices in GPT_OSS_EXPERT_MATRICES.items():
        for engine, seconds in per_matrix.items():
            total = matrices * seconds
            times = [total, total / cores] + [total / (n * node_cores) for n in NODE_COUNTS]
            projection.setdefault(model, {})[engine] = dict(zip(columns, times))
            print(f"{model:>13} {matrices:>8} | {engine:>13} {seconds:>10.2f} | "
                  + " ".join(f"{_duration(t):>24}" for t in times))
    return projection


def main(argv=None) -> dict:
    """Prints the tables as each layer is done; returns {shape: {"engines": {engine: (layer, timing)},
    "differences": {...}, "steps": {...}}}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"ROWSxCOLS,... (default {DEFAULT_SHAPES})")
    parser.add_argument("--engines", default="weightwatcher,fast", help="weightwatcher,fast (default both)")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS / LAPACK / torch threads for both engines (default 0: the libraries' default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic layers (default 0)")
    parser.add_argument("--node-cores", type=int, default=32,
                        help="cores per SLURM node of the projection (default 32)")
    parser.add_argument("--breakdown", choices=["after", "none", "only"], default="after",
                        help="the fast engine's steps: after each layer (default), not at all, or only them")
    args = parser.parse_args(argv)
    shapes = [tuple(int(n) for n in text.lower().split("x")) for text in args.shapes.split(",")]
    engines = [] if args.breakdown == "only" else [
        e for e in ("fast", "weightwatcher") if e in args.engines.split(",")]

    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    if args.threads:
        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    if "weightwatcher" in engines:
        import_weightwatcher()  # its import (~4 s) is not timed
    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info()
                     if i["user_api"] == "blas")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; BLAS: {blas}; torch threads {torch.get_num_threads()}")
    print(f"layers: Student-t(3) entries + mean shift, seed {args.seed}; fix_fingers clip_xmax; one run per engine\n")

    header = (f"{'layer':>11} | {'engine':>13} | {'wall s':>8} {'CPU s':>8} {'peak MB':>8} | {'alpha':>8} "
              f"{'xmin':>10} {'sigma_mp':>9} {'traps':>5}")
    report = {}
    for rows, cols in shapes:
        shape = f"{rows}x{cols}"
        weight = synthetic_layer(rows, cols, args.seed)
        seed = spectral.layer_seed(args.seed, 0, f"synthetic_{shape}")
        entry = report[shape] = {"engines": {}}
        if engines:
            print(header)
        for engine in engines:
            with measured({}) as timing:
                layer = htsr.analyze_layer(weight, seed=seed, fix_fingers="clip_xmax", engine=engine)
            entry["engines"][engine] = (layer, timing)
            print(f"{shape:>11} | {engine:>13} | {timing['wall']:>8.2f} {timing['cpu']:>8.2f} "
                  f"{timing['peak_mb']:>8.0f} | {layer['alpha']:>8.4f} {layer['xmin']:>10.4g} "
                  f"{layer['rand_sigma_mp']:>9.5f} {layer['ww_num_traps']:>5}", flush=True)
        if len(entry["engines"]) == 2:
            (ww, ww_time), (fast, fast_time) = entry["engines"]["weightwatcher"], entry["engines"]["fast"]
            entry["differences"] = {key: relative_difference(ww[key], fast[key]) for key in COMPARED}
            entry["speedup_cpu"] = ww_time["cpu"] / fast_time["cpu"]
            entry["speedup_wall"] = ww_time["wall"] / fast_time["wall"]
            entry["traps"] = (int(ww["ww_num_traps"]), int(fast["ww_num_traps"]))
        if args.breakdown != "none" and ("fast" in engines or args.breakdown == "only"):
            print(f"\n{shape}: the fast engine's steps, CPU s / wall s (run one after the other):")
            entry["steps"] = fast_phases(weight, seed)
            print_breakdown({shape: entry["steps"]})
        print()
        del weight

    compared = {shape: entry for shape, entry in report.items() if "differences" in entry}
    if compared:
        print("side by side (speedup = WeightWatcher time / fast time; differences relative):")
        print(f"{'layer':>11} | {'speedup CPU':>11} {'speedup wall':>12} | {'alpha':>8} {'xmin':>8} "
              f"{'sigma_mp':>8} | {'traps WW / fast':>15}")
        for shape, entry in compared.items():
            differences, (ww_traps, fast_traps) = entry["differences"], entry["traps"]
            print(f"{shape:>11} | {entry['speedup_cpu']:>10.1f}x {entry['speedup_wall']:>11.1f}x | "
                  f"{differences['alpha']:>8.1e} {differences['xmin']:>8.1e} {differences['rand_sigma_mp']:>8.1e} | "
                  f"{f'{ww_traps} / {fast_traps}':>15}")
    steps = {shape: entry["steps"] for shape, entry in report.items() if "steps" in entry}
    if len(steps) > 1:
        print("\nthe fast engine's steps, CPU s / wall s:")
        print_breakdown(steps)
    if EXPERT_SHAPE in report and report[EXPERT_SHAPE]["engines"]:
        per_matrix = {engine: timing["cpu"] for engine, (_, timing) in report[EXPERT_SHAPE]["engines"].items()}
        report["projection"] = print_projection(per_matrix, args.node_cores)
    return report


if __name__ == "__main__":
    main()
