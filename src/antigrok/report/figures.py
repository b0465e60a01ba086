"""The paper's figures and the detector's, one set per experiment and weight decay.

Plotting functions take DataFrames and arrays and return a matplotlib Figure (testable without
files); the ``*_figure_from_files`` functions are the thin loaders the Snakemake rules call.

Conventions shared by every figure:

* Step axis: symmetric-log (``symlog``, linear on [0, 1], logarithmic above), so step 0, the
  initialization, is drawn at the left edge instead of being dropped by a log axis.
* Seeds: the line is the mean over seeds at each logged step, the band the min-max over seeds
  (NaN values, e.g. failed power-law fits, are skipped; a step where every seed is NaN is a gap).
* Phases: every seed's phases (phases.csv) are shaded as light translucent bands, one layer per
  seed, so where all seeds agree the shade is full and where they disagree it is lighter.
* Sizes: ``figure_size(name, panels)`` inches at ``DPI``; saved without tight cropping, so the
  PNG has exactly that many pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from antigrok import runs
from antigrok.files import write_atomically
from antigrok.spectra.primitives import mp_edges, mp_sigma_of_edge, spectrum_key
from antigrok.study.detector import FALSE_ALARM_OUTCOMES
from antigrok.study.detector import OUTCOMES as DETECTOR_OUTCOMES
from antigrok.study.tables import average_alpha_rows

log = logging.getLogger(__name__)

DPI = 150
PHASE_COLORS = {  # the paper's Fig. 1 colours
    "pre-grokking": "#9e9e9e",
    "grokking": "#f2c12e",
    "anti-grokking": "#4caf50",
}
PHASE_OPACITY = 0.30  # opacity of a band where every seed is in the same phase
STEP_LABEL = "training step (symlog axis: 0 = initialization, log scale from 1)"
FIGURE_NAMES = ("accuracy", "alpha", "progress", "esd", "traps", "detector")

# Progress measures of progress.csv in plotting order: column, panel title, y-axis label.
PROGRESS_PANELS = [
    ("activation_sparsity", "Activation sparsity (Eq. 8, first hidden layer)", "A_s (fraction of units < τ)"),
    ("abs_weight_entropy", "Absolute weight entropy (Eq. 9, all weight matrices)", "H_abs (nats)"),
    ("circuit_complexity", "Approximate local circuit complexity (Eq. 10)", "Λ_LC (nats, summed KL)"),
    ("l2_norm", "l2 weight norm (Eq. 7)", "‖W‖₂"),
]


class FigureDataError(ValueError):
    """The inputs of a figure lack what it needs (a column, a step, a layer)."""


def figure_size(name: str, panels: int = 1) -> tuple[float, float]:
    """Width and height in inches of figure ``name`` with ``panels`` rows (layers, alarms)."""
    if name == "accuracy":
        return (9.0, 5.0)
    if name in ("alpha", "progress"):
        return (9.0, 1.2 + 2.3 * panels)
    if name in ("esd", "traps"):
        return (15.0, 1.0 + 3.4 * panels)
    if name == "detector":
        return (13.0, 2.6 + 0.45 * panels)
    raise ValueError(f"unknown figure {name!r}; expected one of {FIGURE_NAMES}")


def _new_figure(name: str, panels: int = 1) -> Figure:
    # A bare Figure, not pyplot: no global state, no GUI backend; savefig renders PNG with Agg.
    return Figure(figsize=figure_size(name, panels), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, paths: Iterable[str | Path]) -> None:
    """Write ``fig`` to each path (format from the suffix: .png with Agg, .pdf).

    The constrained layout is computed once, by the first save; the other formats keep its axes
    positions instead of laying the figure out again (the layout is about a third of a save with
    many log-scale panels: benchmarks/figure_save.py).
    """
    for path in paths:
        path = Path(path)
        write_atomically(path, lambda partial: fig.savefig(partial, dpi=DPI, format=path.suffix.lstrip(".")))
        log.info("wrote %s", path)
        fig.set_layout_engine("none")


# ---------------------------------------------------------------------------------------------
# Shared pieces: step axis, seed aggregation, phase bands


def set_step_axis(ax, label: bool = True) -> None:
    """Symmetric-log step axis: linear on [0, 1] so that step 0 is shown, log above."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    ax.margins(x=0)
    ax.set_xlim(left=0)
    if label:
        ax.set_xlabel(STEP_LABEL)


def seed_statistics(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per step: mean, min and max of ``column`` over seeds (NaN skipped), and the seed count."""
    if column not in frame.columns:
        raise FigureDataError(f"column {column!r} missing; the table has {list(frame.columns)}")
    grouped = frame.groupby("step")[column]
    stats = pd.DataFrame(
        {"mean": grouped.mean(), "min": grouped.min(), "max": grouped.max(), "count": grouped.count()}
    )
    return stats.sort_index()


def plot_seed_band(ax, frame: pd.DataFrame, column: str, color: str, label: str):
    """Seed mean as a line and min-max over seeds as a band; returns the line (for legends)."""
    stats = seed_statistics(frame, column)
    steps = stats.index.to_numpy(dtype=float)
    (line,) = ax.plot(steps, stats["mean"], color=color, lw=1.6, label=label)
    ax.fill_between(steps, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)
    return line


def phase_intervals(phases: pd.DataFrame) -> list[tuple[str, float, float]]:
    """Contiguous blocks of one run's phase labels as (phase, first step, next block's first step).

    Each label holds from its step to the next logged step; the last block ends at the last step.
    """
    ordered = phases.sort_values("step")
    steps = ordered["step"].to_numpy(dtype=float)
    labels = ordered["phase"].fillna("none").astype(str).to_numpy()
    intervals = []
    start = 0
    for index in range(1, len(labels) + 1):
        if index == len(labels) or labels[index] != labels[start]:
            end = steps[index] if index < len(labels) else steps[-1]
            intervals.append((labels[start], steps[start], end))
            start = index
    return intervals


def shade_phases(ax, phases: pd.DataFrame | None) -> set[str]:
    """Shade every seed's phases as translucent bands; returns the phases drawn (for legends)."""
    if phases is None or phases.empty:
        return set()
    seeds = sorted(phases["seed"].unique())
    # Opacity per seed so that n overlapping bands compose to PHASE_OPACITY.
    per_seed = 1.0 - (1.0 - PHASE_OPACITY) ** (1.0 / len(seeds))
    drawn = set()
    for seed in seeds:
        for phase, start, end in phase_intervals(phases[phases["seed"] == seed]):
            if phase in PHASE_COLORS and end > start:
                ax.axvspan(start, end, color=PHASE_COLORS[phase], alpha=per_seed, lw=0, zorder=0)
                drawn.add(phase)
    return drawn


def phase_handles(drawn: set[str], phases: pd.DataFrame | None) -> list[Patch]:
    """Legend entries of the shaded phases; a note instead when no run reached any phase."""
    if phases is None:
        return []
    if not drawn:
        return [Patch(facecolor="none", edgecolor="none", label="no phase shaded: no seed reached one (phases.csv all 'none')")]
    return [
        Patch(color=color, alpha=PHASE_OPACITY, label=f"{phase} phase")
        for phase, color in PHASE_COLORS.items()
        if phase in drawn
    ]


def _style_panel(ax, title: str, ylabel: str) -> None:
    """One panel of a stack over the step axis: its label, title, grid, the shared step axis."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    set_step_axis(ax, label=False)


def _seed_count(*frames: pd.DataFrame | None) -> int:
    return max((frame["seed"].nunique() for frame in frames if frame is not None and "seed" in frame), default=0)


def run_title(what: str, experiment: str, weight_decay: float | str, seeds: int | None = None,
              note: str | None = None) -> str:
    """A figure's title; ``note`` is a last line, e.g. how far an unfinished run had trained."""
    title = f"{what}\n{experiment}, weight decay {weight_decay}"
    if seeds:
        title += f" (mean and min-max over {seeds} seed{'s' if seeds != 1 else ''})"
    if note:
        title += f"\n{note}"
    return title


def _outside_legend(fig: Figure, handles: list, columns: int | None = None) -> None:
    """One legend for the whole figure, below the panels, so it never covers the data."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=columns or min(len(handles), 5), fontsize=9)


# ---------------------------------------------------------------------------------------------
# Fig. 1: accuracy


def plot_accuracy(train_log: pd.DataFrame, phases: pd.DataFrame | None, title: str) -> Figure:
    """Train and test accuracy vs step (paper Fig. 1): seed mean with min-max band, phases shaded.

    ``train_log``: columns seed, step, train_acc, test_acc. ``phases``: seed, step, phase.
    """
    fig = _new_figure("accuracy")
    ax = fig.add_subplot()
    drawn = shade_phases(ax, phases)
    lines = [
        plot_seed_band(ax, train_log, "train_acc", "#d62728", "train accuracy"),
        plot_seed_band(ax, train_log, "test_acc", "#7b3fa0", "test accuracy"),
    ]
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy (fraction correct)")
    set_step_axis(ax)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=11)
    band = Patch(color="grey", alpha=0.25, label="min-max over seeds")
    _outside_legend(fig, lines + [band] + phase_handles(drawn, phases))
    return fig


# ---------------------------------------------------------------------------------------------
# Fig. 4 / Fig. 6: HTSR alpha


def seed_average_alpha(htsr: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Per (seed, step): the mean alpha over ``layers``, as Table 1 and the alarms average it
    (antigrok.spectra.primitives.mean_alpha: NaN where any listed layer's fit failed or is missing, so an
    average is always over the same layers; the seed statistics then skip it)."""
    # the seeds of the one experiment and weight decay that a figure shows, as runs of average_alpha_rows
    one_experiment = htsr.sort_values("seed", kind="stable").assign(experiment="", weight_decay=0.0)
    return average_alpha_rows(one_experiment, {"": list(layers)})[["seed", "step", "alpha"]]


def plot_alpha(
    htsr: pd.DataFrame,
    phases: pd.DataFrame | None,
    layers: Sequence[str],
    alpha_critical: float,
    title: str,
) -> Figure:
    """Average alpha over ``layers`` and each layer's alpha vs step (paper Fig. 4 / Fig. 6).

    ``htsr``: columns seed, step, layer, alpha (NaN for failed fits). The critical alpha is a
    dashed red line.
    """
    present = [layer for layer in layers if layer in set(htsr["layer"])]
    if not present:
        raise FigureDataError(
            f"none of the layers {list(layers)} (htsr.average_layers) is in htsr.csv, "
            f"which has {sorted(htsr['layer'].unique())}; fix htsr.average_layers in the config"
        )
    panels = [("average", seed_average_alpha(htsr, present))] + [
        (layer, htsr[htsr["layer"] == layer]) for layer in present
    ]
    fig = _new_figure("alpha", len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    drawn = set()
    for ax, (name, frame) in zip(axes, panels):
        drawn |= shade_phases(ax, phases)
        label = f"mean α of {', '.join(present)}" if name == "average" else f"α of {name}"
        line = plot_seed_band(ax, frame, "alpha", "#1f77b4", "α (seed mean)")
        critical = ax.axhline(alpha_critical, color="#d62728", ls="--", lw=1.2, label=f"α = {alpha_critical:g} (critical)")
        _style_panel(ax, label, "α (PL exponent)")
    axes[-1].set_xlabel(STEP_LABEL)
    fig.suptitle(title, fontsize=11)
    band = Patch(color="#1f77b4", alpha=0.2, label="min-max over seeds")
    _outside_legend(fig, [line, band, critical] + phase_handles(drawn, phases))
    return fig


# ---------------------------------------------------------------------------------------------
# Fig. 5 / Fig. 7: progress measures and l2 norm


def plot_progress(progress: pd.DataFrame, phases: pd.DataFrame | None, title: str) -> Figure:
    """Activation sparsity, absolute weight entropy, circuit complexity and l2 norm vs step.

    ``progress``: columns seed, step and the measures of progress.csv; a measure missing from
    the table is left out.
    """
    panels = [panel for panel in PROGRESS_PANELS if panel[0] in progress.columns]
    if not panels:
        raise FigureDataError(
            f"progress.csv has none of {[p[0] for p in PROGRESS_PANELS]}; it has {list(progress.columns)}"
        )
    fig = _new_figure("progress", len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    drawn = set()
    colors = ["#2ca02c", "#8c564b", "#9467bd", "#ff7f0e"]
    handles = []
    for ax, (column, panel_title, ylabel), color in zip(axes, panels, colors):
        drawn |= shade_phases(ax, phases)
        handles.append(plot_seed_band(ax, progress, column, color, panel_title.split(" (")[0]))
        _style_panel(ax, panel_title, ylabel)
    axes[-1].set_xlabel(STEP_LABEL)
    fig.suptitle(title, fontsize=11)
    band = Patch(color="grey", alpha=0.25, label="min-max over seeds")
    _outside_legend(fig, [band] + phase_handles(drawn, phases), columns=4)
    return fig


# ---------------------------------------------------------------------------------------------
# Fig. 2 / Fig. 3: spectra


@dataclass
class Spectrum:
    """The eigenvalues of one layer at one step and the htsr.csv (and traps.csv) rows that fit them.

    ``evals`` are in spectra.npz's units: WeightWatcher's eigenvalues of W^T W, the squared
    singular values of W (not divided by N; alpha, sigma_mp and the traps do not depend on it).
    """

    layer: str
    step: int
    evals: np.ndarray
    fit: pd.Series
    traps: pd.Series | None = None


def power_law_density(lam: np.ndarray, alpha: float, xmin: float, xmax: float, tail_fraction: float) -> np.ndarray:
    """rho(lambda) of the fitted power-law tail, truncated to [xmin, xmax], scaled to the ESD.

    p(lambda) = lambda^-alpha / Z with Z = integral of lambda^-alpha over [xmin, xmax]; times the
    fraction of eigenvalues in the tail, so it lies on a histogram of all eigenvalues.
    """
    if abs(alpha - 1.0) < 1e-9:
        norm = math.log(xmax / xmin)
    else:
        norm = (xmin ** (1 - alpha) - xmax ** (1 - alpha)) / (alpha - 1)
    return tail_fraction * lam ** (-alpha) / norm


def mp_density_per_decade(lam: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """The Marchenko-Pastur density of Eq. 3 per decade of lambda: rho_MP(lambda) * lambda * ln 10.

    That is the density a histogram of log10(lambda) shows, so it overlays a log-x histogram.
    ``sigma`` and ``q`` as in antigrok.spectra.primitives.mp_edges.
    """
    lower, upper = mp_edges(q, sigma)
    inside = (lam > lower) & (lam < upper)
    root = np.sqrt(np.clip((upper - lam) * (lam - lower), 0, None))
    return np.where(inside, q / (2 * math.pi * sigma**2) * root * math.log(10), 0.0)


def aspect_ratio(fit: pd.Series) -> float:
    rows, cols = float(fit["rows"]), float(fit["cols"])
    return max(rows, cols) / min(rows, cols)


def csv_to_npz_units(spectrum: Spectrum) -> float:
    """Factor from the CSVs' eigenvalue units to spectra.npz's (1 when they agree).

    htsr.csv's max_rand_eval is the largest W_rand eigenvalue; comparing it with the stored array
    keeps the MP fit, lambda+ and the traps on the histogram even if a stage rescaled the ESD.
    """
    reference = spectrum.fit.get("max_rand_eval", np.nan)
    if not np.isfinite(reference) or reference <= 0 or len(spectrum.evals) == 0:
        return 1.0
    factor = float(np.max(spectrum.evals)) / float(reference)
    if abs(factor - 1.0) > 1e-3:
        log.warning("layer %s step %d: rescaling CSV eigenvalues by %.4g to spectra.npz units", spectrum.layer, spectrum.step, factor)
    return factor


def tidy_log_axis(axis) -> None:
    """Plain tick labels (0.2, 0.5, 1, 2) on a log axis spanning under two decades.

    Matplotlib's default labels every minor tick in scientific notation there, which crowds.
    """
    low, high = axis.get_view_interval()
    if low > 0 and math.log10(high / low) < 2:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())


def _spectrum_legend(ax) -> None:
    """Legend right of the panel: spectra fill their panels, so inside it would hide data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _log_bins(values: np.ndarray, per_decade: int = 12) -> np.ndarray:
    low, high = np.log10(values.min()), np.log10(values.max())
    count = max(int((high - low) * per_decade), 10)
    return np.logspace(low - 0.02, high + 0.02, count + 1)


def plot_esd_with_power_law(ax, spectrum: Spectrum) -> None:
    """ESD of W on log-log axes with its power-law tail fit and the xmin / xmax lines (Fig. 2 left)."""
    evals = spectrum.evals[spectrum.evals > 0]
    if len(evals) == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
        return
    ax.hist(evals, bins=_log_bins(evals), density=True, color="#1f77b4", alpha=0.6, label="ESD of W")
    alpha, xmin, xmax = (float(spectrum.fit.get(key, np.nan)) for key in ("alpha", "xmin", "xmax"))
    if np.isfinite(xmax) and np.isfinite(xmin):
        xmax = min(xmax, float(evals.max()))
    if all(np.isfinite([alpha, xmin, xmax])) and xmax > xmin > 0:
        tail_fraction = np.mean((evals >= xmin) & (evals <= xmax))
        grid = np.logspace(np.log10(xmin), np.log10(xmax), 100)
        ax.plot(grid, power_law_density(grid, alpha, xmin, xmax, tail_fraction), "r--", lw=2, label=f"power-law fit, α = {alpha:.2f}")
        ax.axvline(xmin, color="red", lw=1.2, label=f"λ_min (xmin) = {xmin:.3g}")
        ax.axvline(xmax, color="orange", lw=1.2, label=f"λ_max (xmax) = {xmax:.3g}")
        status = f"α = {alpha:.2f}"
    else:
        status = f"power-law fit {spectrum.fit.get('fit_status', 'failed')}: no α"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ = s² of W (squared singular value, log scale)")
    ax.set_ylabel("density ρ(λ) (log scale)")
    tidy_log_axis(ax.xaxis)
    tidy_log_axis(ax.yaxis)
    ax.set_title(f"{spectrum.layer}, step {spectrum.step}: ESD of W, {status}", fontsize=10)
    _spectrum_legend(ax)


def plot_rand_esd_with_mp(ax, spectrum: Spectrum, mark_traps: bool = False) -> None:
    """ESD of W_rand on a log-x, linear-y axis with its MP fit (Eq. 3), lambda+ and the traps."""
    evals = spectrum.evals[spectrum.evals > 0]
    if len(evals) == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
        return
    fit = spectrum.fit
    units = csv_to_npz_units(spectrum)
    edges = _log_bins(evals, per_decade=20)
    counts, _ = np.histogram(evals, bins=edges)
    density = counts / (len(evals) * np.diff(np.log10(edges)))
    ax.stairs(density, edges, fill=True, color="#b39ddb", alpha=0.8, label="ESD of W_rand")
    q = aspect_ratio(fit)
    lambda_plus = float(fit.get("rand_lambda_plus", np.nan)) * units
    if np.isfinite(lambda_plus) and lambda_plus > 0:
        # sigma in the npz's units from the fitted bulk edge; sigma_mp itself is WeightWatcher's
        # fit on the ESD rescaled to unit mean, shown in the title.
        sigma = mp_sigma_of_edge(lambda_plus, q)
        lower, upper = mp_edges(q, sigma)
        grid = np.logspace(np.log10(max(lower, upper * 1e-4)), np.log10(upper), 400)
        ax.plot(grid, mp_density_per_decade(grid, sigma, q), color="red", lw=1.8, label=f"MP fit (Eq. 3), Q = {q:.2f}")
        ax.axvline(lambda_plus, color="red", ls=":", lw=1.2, label=f"λ+ = {lambda_plus:.3g}")
    trap_count = None
    if mark_traps and spectrum.traps is not None:
        threshold = float(spectrum.traps.get("trap_threshold", np.nan)) * units
        if np.isfinite(threshold):
            ax.axvline(threshold, color="black", ls="--", lw=1, label=f"trap threshold = {threshold:.3g}")
        traps = parse_trap_eigenvalues(spectrum.traps.get("trap_eigenvalues", "")) * units
        trap_count = len(traps)
        if trap_count:
            top = density.max() if len(density) else 1.0
            ax.vlines(traps, 0, 0.35 * top, color="#d62728", lw=2)
            ax.plot(traps, np.full(trap_count, 0.37 * top), "v", color="#d62728", ms=7, label=f"{trap_count} Correlation Trap(s)")
    ax.set_xscale("log")
    ax.set_xlabel("eigenvalue λ = s² of W_rand (log scale)")
    ax.set_ylabel("density per decade of λ")
    details = [f"σ_MP = {fit.get('rand_sigma_mp', np.nan):.3g}", f"KS p = {fit.get('mp_ks_pvalue', np.nan):.2g}"]
    if trap_count is not None:
        details.append(f"{trap_count} trap{'s' if trap_count != 1 else ''}")
    tidy_log_axis(ax.xaxis)
    ax.set_title(f"{spectrum.layer}, step {spectrum.step}: W_rand ESD, " + ", ".join(details), fontsize=10)
    _spectrum_legend(ax)


def parse_trap_eigenvalues(value) -> np.ndarray:
    """traps.csv's ";"-joined trap eigenvalues ("" or NaN: none) as an array."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return np.array([], dtype=float)
    return np.array([float(part) for part in str(value).split(";") if part.strip()], dtype=float)


def plot_esd_fits(esd: Sequence[Spectrum], rand_esd: Sequence[Spectrum], title: str) -> Figure:
    """Fig. 2 per layer (rows): left the ESD of W with its power-law fit (log-log), right the ESD
    of W_rand with its MP fit (log-linear)."""
    if len(esd) != len(rand_esd) or not esd:
        raise FigureDataError(f"need one W and one W_rand spectrum per layer, got {len(esd)} and {len(rand_esd)}")
    fig = _new_figure("esd", len(esd))
    axes = fig.subplots(len(esd), 2, squeeze=False)
    for row, (spectrum, rand_spectrum) in enumerate(zip(esd, rand_esd)):
        plot_esd_with_power_law(axes[row, 0], spectrum)
        plot_rand_esd_with_mp(axes[row, 1], rand_spectrum)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_trap_examples(columns: Sequence[tuple[str, Sequence[Spectrum]]], title: str) -> Figure:
    """Fig. 3: W_rand ESDs with the MP fit and the Correlation Traps marked.

    ``columns``: (heading, one Spectrum with ``traps`` per layer) per example step, e.g.
    ("right before the collapse", [...]) and ("end of training", [...]).
    """
    if not columns or not columns[0][1]:
        raise FigureDataError("no trap examples to plot")
    layers = len(columns[0][1])
    fig = _new_figure("traps", layers)
    axes = fig.subplots(layers, len(columns), squeeze=False)
    for col, (heading, spectra) in enumerate(columns):
        for row, spectrum in enumerate(spectra):
            plot_rand_esd_with_mp(axes[row, col], spectrum, mark_traps=True)
            axes[row, col].set_title(f"{heading}\n" + axes[row, col].get_title(), fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# Detector lead times

OUTCOME_GROUP_STYLE = {  # outcome group of one (alarm, run) in the figure: colour, marker, legend text
    "warned": ("#2ca02c", "o", "warned before the collapse"),
    "late": ("#ff7f0e", "s", "fired at or after the collapse"),
    "false_alarm": ("#d62728", "X", "false alarm (no collapse, or before the peak)"),
    "missed": ("#7f7f7f", "|", "missed: collapsed without alarm"),
    "quiet": ("#c7c7c7", "|", "quiet, no collapse (correct)"),
}
# detectors.csv's outcome (antigrok.study.detector.OUTCOMES) -> the figure's group
FIGURE_OUTCOME = {
    "after_peak_before_collapse": "warned",
    "late": "late",
    **{outcome: "false_alarm" for outcome in FALSE_ALARM_OUTCOMES},
    "missed": "missed",
    "quiet": "quiet",
}
# One list of outcomes (antigrok.study.detector's): an outcome added there must get a group here.
if set(FIGURE_OUTCOME) != set(DETECTOR_OUTCOMES):
    raise RuntimeError(f"figures.FIGURE_OUTCOME groups {sorted(FIGURE_OUTCOME)}, the detector's outcomes are "
                       f"{sorted(DETECTOR_OUTCOMES)}: give every detector outcome a figure group")


def outcome_group(row: pd.Series) -> str:
    """The OUTCOME_GROUP_STYLE key of one detectors.csv row: the group of its ``outcome`` (antigrok.study.detector)."""
    outcome = row.get("outcome")
    if outcome not in FIGURE_OUTCOME:
        raise FigureDataError(
            f"detectors.csv row ({row.get('alarm')}, seed {row.get('seed')}) has outcome {outcome!r}; "
            f"expected one of {sorted(FIGURE_OUTCOME)} (rerun the detectors rule)"
        )
    return FIGURE_OUTCOME[outcome]


def plot_detector_leads(detectors: pd.DataFrame, title: str) -> Figure:
    """Per alarm: lead in decades before the collapse for every run (left) and outcome counts (right).

    ``detectors``: rows of detectors.csv for one experiment and weight decay.
    """
    # detectors.csv names the lead against the collapse crossing lead_*_vs_collapse
    detectors = detectors.rename(
        columns={"lead_steps_vs_collapse": "lead_steps", "lead_decades_vs_collapse": "lead_decades"}
    )
    alarms = list(dict.fromkeys(detectors["alarm"]))
    fig = _new_figure("detector", max(len(alarms), 1))
    lead_ax, count_ax = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    if not alarms:
        lead_ax.text(0.5, 0.5, "no detector rows", ha="center", va="center", transform=lead_ax.transAxes)
        fig.suptitle(title, fontsize=11)
        return fig
    frame = detectors.assign(outcome=detectors.apply(outcome_group, axis=1))
    position = {alarm: index for index, alarm in enumerate(alarms)}
    seeds = sorted(frame["seed"].unique())
    offset = {seed: (i - (len(seeds) - 1) / 2) * 0.5 / max(len(seeds), 1) for i, seed in enumerate(seeds)}
    with_lead = frame[np.isfinite(frame["lead_decades"].astype(float))]
    for outcome, (color, marker, label) in OUTCOME_GROUP_STYLE.items():
        subset = with_lead[with_lead["outcome"] == outcome]
        if len(subset) and marker != "|":
            y = subset["alarm"].map(position) + subset["seed"].map(offset)
            lead_ax.scatter(subset["lead_decades"], y, color=color, marker=marker, s=45, label=label, zorder=3)
    lead_ax.axvline(0, color="black", lw=1, label="alarm at the collapse step (lead 0)")
    if with_lead.empty:
        lead_ax.text(0.5, 0.5, "no run collapsed: no lead times", ha="center", va="center", transform=lead_ax.transAxes)
    kinds = frame.groupby("alarm")["alarm_kind"].first() if "alarm_kind" in frame else pd.Series(dtype=str)
    lead_ax.set_yticks(range(len(alarms)), [f"{alarm} ({kinds[alarm]})" if alarm in kinds else alarm for alarm in alarms])
    lead_ax.set_ylim(len(alarms) - 0.5, -0.5)
    lead_ax.set_xlabel("lead before the collapse (decades: log10 collapse step − log10 alarm step; > 0 = early)")
    lead_ax.set_ylabel("alarm")
    lead_ax.set_title("lead time per run (one marker per seed)", fontsize=10)
    lead_ax.grid(axis="x", alpha=0.3)

    counts = frame.groupby(["alarm", "outcome"]).size().unstack(fill_value=0)
    left = np.zeros(len(alarms))
    for outcome, (color, _, label) in OUTCOME_GROUP_STYLE.items():
        values = counts.reindex(alarms).get(outcome, pd.Series(0, index=alarms)).fillna(0).to_numpy()
        if values.any():
            count_ax.barh(range(len(alarms)), values, left=left, color=color, label=label, height=0.6)
        left += values
    count_ax.set_xlabel("runs (seeds)")
    count_ax.set_title("outcome per alarm", fontsize=10)
    count_ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=11)
    handles = {}  # one entry per outcome, the marker (left panel) before the bar (right)
    for ax in (lead_ax, count_ax):
        for handle in ax.get_legend_handles_labels()[0]:
            handles.setdefault(handle.get_label(), handle)
    _outside_legend(fig, list(handles.values()), columns=3)
    return fig


# ---------------------------------------------------------------------------------------------
# Loaders: results files -> the frames above


def seed_of(path: str | Path) -> int:
    """The seed of a run file from its directory name (…/seed{seed}/file): antigrok.runs.seed_of."""
    try:
        return runs.seed_of(path)
    except ValueError as error:
        raise FigureDataError(str(error)) from None


def read_run_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate one CSV per run (all seeds of one experiment and weight decay), adding ``seed``."""
    try:
        return runs.read_seed_files(paths)
    except ValueError as error:
        raise FigureDataError(str(error)) from None


def _by_seed(paths: Sequence[str | Path]) -> dict[int, Path]:
    return {seed_of(path): Path(path) for path in paths}


def load_spectrum(npz, htsr: pd.DataFrame, layer: str, step: int, rand: bool, traps: pd.DataFrame | None = None) -> Spectrum:
    """One Spectrum from a run's spectra.npz (opened) and htsr.csv (and traps.csv) frames."""
    key = spectrum_key("rand_evals" if rand else "evals", layer, step)
    if key not in npz:
        raise FigureDataError(f"spectra.npz has no array {key!r}; rerun the spectra rule for this run")
    fit = _row(htsr, layer, step, "htsr.csv")
    trap_row = _row(traps, layer, step, "traps.csv") if traps is not None else None
    return Spectrum(layer=layer, step=int(step), evals=np.asarray(npz[key], dtype=float), fit=fit, traps=trap_row)


def _row(frame: pd.DataFrame, layer: str, step: int, name: str) -> pd.Series:
    rows = frame[(frame["layer"] == layer) & (frame["step"] == step)]
    if rows.empty:
        raise FigureDataError(f"{name} has no row for layer {layer!r} at step {step}")
    return rows.iloc[0]


def figure_layers(experiment: str, average_layers: dict, available: Iterable[str]) -> list[str]:
    """The layers a figure shows: htsr.average_layers[experiment] that are in the data, else all."""
    available = list(dict.fromkeys(available))
    wanted = [layer for layer in average_layers.get(experiment, []) if layer in available]
    return wanted or available


def accuracy_figure_from_files(train_logs, phases, experiment, weight_decay, outputs, note: str | None = None) -> None:
    log_frame = read_run_tables(train_logs)
    phase_frame = read_run_tables(phases) if phases else None
    title = run_title("Train and test accuracy (Fig. 1)", experiment, weight_decay, _seed_count(log_frame), note)
    save_figure(plot_accuracy(log_frame, phase_frame, title), outputs)


def alpha_figure_from_files(htsr, phases, experiment, weight_decay, average_layers, alpha_critical, outputs,
                            note: str | None = None) -> None:
    frame = read_run_tables(htsr)
    layers = figure_layers(experiment, average_layers, frame["layer"])
    title = run_title("HTSR α (Fig. 4 / Fig. 6)", experiment, weight_decay, _seed_count(frame), note)
    figure = plot_alpha(frame, read_run_tables(phases) if phases else None, layers, alpha_critical, title)
    save_figure(figure, outputs)


def progress_figure_from_files(progress, phases, experiment, weight_decay, outputs, note: str | None = None) -> None:
    frame = read_run_tables(progress)
    title = run_title("Progress measures and l2 norm (Fig. 5 / Fig. 7)", experiment, weight_decay, _seed_count(frame),
                      note)
    save_figure(plot_progress(frame, read_run_tables(phases) if phases else None, title), outputs)


def esd_figure_from_files(spectra, htsr, experiment, weight_decay, average_layers, outputs) -> None:
    """Fig. 2 for the lowest seed: ESD of W at the last checkpoint, W_rand at step 0 (the init)."""
    spectra_by_seed, htsr_by_seed = _by_seed(spectra), _by_seed(htsr)
    seed = min(spectra_by_seed)
    fits = pd.read_csv(htsr_by_seed[seed])
    layers = figure_layers(experiment, average_layers, fits["layer"])
    first, last = int(fits["step"].min()), int(fits["step"].max())
    with np.load(spectra_by_seed[seed]) as npz:
        esd = [load_spectrum(npz, fits, layer, last, rand=False) for layer in layers]
        rand_esd = [load_spectrum(npz, fits, layer, first, rand=True) for layer in layers]
    title = (
        f"ESD with power-law fit at the last step (left) and W_rand ESD with MP fit at step {first} "
        f"(right, Fig. 2)\n{experiment}, weight decay {weight_decay}, seed {seed}"
    )
    save_figure(plot_esd_fits(esd, rand_esd, title), outputs)


def choose_trap_examples(phases: pd.DataFrame, steps: dict[int, Sequence[int]]) -> tuple[int, list[tuple[str, int]], bool]:
    """The run and steps of Fig. 3: (seed, [(heading, step), ...], collapsed).

    The lowest seed that collapses, at the last analysed step before its collapse and at the end;
    if no seed collapses, the lowest seed at its test-accuracy peak and at the end.
    ``steps``: the analysed (checkpoint) steps of each seed.
    """
    edges = phases.groupby("seed")[["peak_step", "collapse_step"]].first().astype(float)
    collapsed = edges[edges["collapse_step"].notna()].index.intersection(list(steps))
    if len(collapsed):
        seed = int(min(collapsed))
        anchor, heading = edges.loc[seed, "collapse_step"], "right before the collapse"
        before = [s for s in steps[seed] if s < anchor]
    else:
        seed = int(min(set(edges.index) & set(steps)))
        anchor, heading = edges.loc[seed, "peak_step"], "at the test-accuracy peak"
        before = [s for s in steps[seed] if s <= anchor] if np.isfinite(anchor) else []
    available = sorted(steps[seed])
    if before:
        example = max(before)
    else:  # no peak: the run never fits its train set (phases.csv edges NaN)
        example, heading = available[len(available) // 2], "mid-training, no phase edges"
    return seed, [(f"{heading} (step {example})", example), (f"end of training (step {available[-1]})", available[-1])], bool(len(collapsed))


def traps_figure_from_files(spectra, htsr, traps, phases, experiment, weight_decay, average_layers, outputs) -> None:
    """Fig. 3 from the chosen run's spectra.npz, htsr.csv, traps.csv (see choose_trap_examples)."""
    spectra_by_seed, htsr_by_seed, traps_by_seed = _by_seed(spectra), _by_seed(htsr), _by_seed(traps)
    trap_frames = {seed: pd.read_csv(path) for seed, path in traps_by_seed.items()}
    steps = {seed: sorted(frame["step"].unique()) for seed, frame in trap_frames.items()}
    seed, examples, collapsed = choose_trap_examples(read_run_tables(phases), steps)
    fits, trap_frame = pd.read_csv(htsr_by_seed[seed]), trap_frames[seed]
    layers = figure_layers(experiment, average_layers, fits["layer"])
    with np.load(spectra_by_seed[seed]) as npz:
        columns = [
            (heading, [load_spectrum(npz, fits, layer, step, rand=True, traps=trap_frame) for layer in layers])
            for heading, step in examples
        ]
    what = "before the collapse and at the end" if collapsed else "no seed collapses, so not before a collapse"
    title = f"Correlation Traps in W_rand (Fig. 3), {what}\n{experiment}, weight decay {weight_decay}, seed {seed}"
    save_figure(plot_trap_examples(columns, title), outputs)


def detector_figure_from_files(detectors, experiment, weight_decay, outputs) -> None:
    frame = pd.read_csv(detectors)
    frame = frame[(frame["experiment"] == experiment) & np.isclose(frame["weight_decay"].astype(float), float(weight_decay))]
    title = f"Early-warning alarms, lead time before the collapse\n{experiment}, weight decay {weight_decay} ({frame['seed'].nunique()} seeds)"
    save_figure(plot_detector_leads(frame, title), outputs)
