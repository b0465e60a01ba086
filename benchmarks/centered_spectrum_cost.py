"""What the mean-removed shuffled spectrum (num_traps_centered) adds to one matrix's analysis.

    OMP_NUM_THREADS=1 python benchmarks/centered_spectrum_cost.py [--rows 2880] [--cols 2880] [--repeats 3]

Every analysis (the workflow's spectra rule, ``antigrok analyze``, workflow/llm.smk) computes, beside
the fast engine's layer analysis (``htsr.analyze_layer``), the eigenvalues of the shuffled matrix with
its mean removed (``fastspectra.centered_random_esd``). Both are timed here on the same Gaussian
matrix, one after the other in each repeat, in CPU seconds; the ratio of the medians is what the
centred count adds to the projected times of docs/own-models.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from antigrok.htsr import analyze_layer
from antigrok.spectra.fast_engine import centered_random_esd


def cpu_seconds(function) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2880)
    parser.add_argument("--cols", type=int, default=2880)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    weight = np.random.default_rng(0).standard_normal((args.rows, args.cols)) * 0.02
    layer, centred = [], []
    for seed in range(args.repeats):
        layer.append(cpu_seconds(lambda: analyze_layer(weight, seed=seed, engine="fast")))
        centred.append(cpu_seconds(lambda: centered_random_esd(weight, seed)))
    print(f"{platform.processor() or platform.machine()}, {args.rows} x {args.cols}, {args.repeats} repeats, CPU s")
    print(f"analyze_layer (fast):  {', '.join(f'{s:.2f}' for s in layer)}  median {np.median(layer):.2f}")
    print(f"centered_random_esd:   {', '.join(f'{s:.2f}' for s in centred)}  median {np.median(centred):.2f}")
    print(f"added by the centred count: {np.median(centred) / np.median(layer):.0%} of the layer analysis")


if __name__ == "__main__":
    main()
