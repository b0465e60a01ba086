"""Saving a figure as PNG and PDF: laying it out for each format (matplotlib's default) against once.

``antigrok.report.figures.save_figure`` writes every figure twice (.png for the report, .pdf), and the
constrained layout it is built with is by default computed again for each format. This times, on one
run's ESD figure (Fig. 2: one row of two log-scale panels per layer), both saves with the layout
computed per format and with ``save_figure`` (computed by the first save, kept for the second),
interleaved, the fastest of ``--repeats`` in CPU time of this process.

    python benchmarks/figure_save.py RUN_DIR [--repeats 3]

RUN_DIR: a run folder of the workflow with spectra.npz and htsr.csv, e.g. the smoke workflow's
results/runs/modadd_transformer/wd0.0/seed0 (6 matrices, 12 panels).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from antigrok.report import figures
from antigrok.training.segments import cpu_model


def esd_figure(run: Path):
    fits = pd.read_csv(run / "htsr.csv")
    layers = list(dict.fromkeys(fits["layer"]))
    first, last = int(fits["step"].min()), int(fits["step"].max())
    with np.load(run / "spectra.npz") as npz:
        esd = [figures.load_spectrum(npz, fits, layer, last, rand=False) for layer in layers]
        rand_esd = [figures.load_spectrum(npz, fits, layer, first, rand=True) for layer in layers]
    return lambda: figures.plot_esd_fits(esd, rand_esd, f"{run}: ESD"), len(layers)


def layout_per_format(fig, paths) -> None:
    for path in paths:
        fig.savefig(path, dpi=figures.DPI, format=path.suffix.lstrip("."))


def cpu_seconds(save, make_figure, paths) -> float:
    fig = make_figure()
    start = time.process_time()
    save(fig, paths)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    make_figure, layers = esd_figure(args.run)
    times = {"layout per format": [], "save_figure (layout once)": []}
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / "esd.png", Path(folder) / "esd.pdf"]
        for _ in range(args.repeats):
            times["layout per format"].append(cpu_seconds(layout_per_format, make_figure, paths))
            times["save_figure (layout once)"].append(cpu_seconds(figures.save_figure, make_figure, paths))
    print(f"CPU: {cpu_model()}; matplotlib {matplotlib.__version__}; {args.run}: {layers} layers, {2 * layers} panels; "
          f"PNG ({figures.DPI} dpi) and PDF; fastest of {args.repeats}, CPU seconds of this process")
    print("| saving | PNG + PDF (s CPU) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} |")
    print(f"speed-up: {min(times['layout per format']) / min(times['save_figure (layout once)']):.2f}x")


if __name__ == "__main__":
    main()
