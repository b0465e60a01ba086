"""antigrok's numbers for the layers of real state_dict files beside WeightWatcher 0.7.5.5's own.

For each file: ``antigrok.users.analyze.analyze_path`` (what ``antigrok analyze`` writes), then, for every
analysed layer, ``WeightWatcher(model={"<layer>.weight": tensor}).analyze(randomize=True,
fix_fingers="clip_xmax")`` with the global NumPy RNG seeded as antigrok seeds that layer
(``layer_seed(0, 0, layer)``). Prints alpha and the trap count of both, and the largest relative
difference of alpha, xmin and rand_sigma_mp. The files are read with torch.load(weights_only=True).

    python benchmarks/conv_weights_vs_weightwatcher.py pnet.pt rnet.pt onet.pt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
import warnings

import numpy as np

from antigrok.formats.loading import read_checkpoint
from antigrok.spectra.primitives import layer_seed
from antigrok.spectra.ww_engine import import_weightwatcher
from antigrok.users.analyze import analyze_path


def weightwatcher_row(ww, name: str, tensor, seed: int):
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        details = ww.WeightWatcher(model={f"{name}.weight": tensor}).analyze(
            randomize=True, fix_fingers="clip_xmax", plot=False, savefig=False)
        return details.iloc[0], time.perf_counter() - start


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if math.isfinite(a) and b not in (0, -1) else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="state_dict files (.pt)")
    args = parser.parse_args()
    ww = import_weightwatcher()
    for path in args.paths:
        start = time.perf_counter()
        table, skipped = analyze_path(path)
        seconds = time.perf_counter() - start
        state = read_checkpoint(path)["model"]
        print(f"{path}: {len(table)} layers analysed in {seconds:.2f} s, {len(skipped)} tensors skipped")
        for row in table.itertuples():
            tensor = state[f"{row.layer}.weight"]
            theirs, ww_seconds = weightwatcher_row(ww, row.layer, tensor, layer_seed(0, 0, row.layer))
            worst = max(relative(row.alpha, theirs.alpha), relative(row.xmin, theirs.xmin),
                        relative(row.rand_sigma_mp, theirs.rand_sigma_mp))
            shape = "x".join(map(str, tensor.shape))
            print(f"  {row.layer:10s} {shape:12s} {str(theirs.layer_type):7s} alpha {row.alpha:.4f} (ww {theirs.alpha:.4f})"
                  f"  traps {row.num_traps} (ww {theirs.rand_num_spikes}; M {theirs.M}, {theirs.num_evals} evals)"
                  f"  max rel diff {worst:.1e}  ww {ww_seconds:.1f} s")


if __name__ == "__main__":
    main()
