"""The mechanism's figures, one per analysis, experiment and weight decay (results/figures/)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from antigrok.formats.loading import read_state_dict
from antigrok.mechanism.checkpoints import checkpoint_paths, edge_checkpoints
from antigrok.mechanism.prototypes import best_match, class_means, pixel_images, top_rows
from antigrok.mechanism.removal import CONDITIONS
from antigrok.report.figures import read_run_tables, save_figure, seed_of, set_step_axis, shade_phases

log = logging.getLogger(__name__)
DPI = 150
CONDITION_ORDER = [condition for condition in CONDITIONS if condition != "none"]


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _image(ax, vector: np.ndarray, title: str) -> None:
    side = int(round(np.sqrt(vector.size)))
    limit = float(np.max(np.abs(vector))) or 1.0
    ax.imshow(vector.reshape(side, side), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_prototypes(state_dicts: Sequence[tuple[str, int, dict]], means: np.ndarray, components: int,
                    title: str) -> Figure:
    """Rows: checkpoints (edge, step); columns: fc1's top singular images, fc2's and fc3's top one
    back-projected, and W1's top 3 rows; each titled with its best centred class and |corr|."""
    columns = components + 2 + 3
    fig = _figure(1.25 * columns, 1.45 * len(state_dicts) + 0.6)
    axes = fig.subplots(len(state_dicts), columns, squeeze=False)
    for row, (edge, step, state_dict) in enumerate(state_dicts):
        panels = []
        _, images = pixel_images(state_dict, "fc1", components)
        panels += [(f"fc1 sv{i}", image) for i, image in enumerate(images)]
        for layer in ("fc2", "fc3"):
            panels.append((f"{layer} sv0", pixel_images(state_dict, layer, 1)[1][0]))
        indices, rows = top_rows(state_dict, 3)
        panels += [(f"W1 row {i}", image) for i, image in zip(indices, rows)]
        for column, (name, image) in enumerate(panels):
            match = best_match(image, means)
            _image(axes[row, column], image, f"{name}\n{match['best_class_centered']}: {match['corr_centered']:.2f}")
        axes[row, 0].set_ylabel(f"{edge}\nstep {step}", fontsize=7)
    fig.suptitle(title + "\n(panel: best class of the centred class means: |corr|)", fontsize=9)
    return fig


def plot_largest_weight(table: pd.DataFrame, phases: pd.DataFrame | None, title: str) -> Figure:
    layers = list(dict.fromkeys(table["layer"]))
    fig = _figure(4.2 * len(layers), 5.2)
    axes = fig.subplots(2, len(layers), squeeze=False, sharex=True)
    for column, layer in enumerate(layers):
        top, bottom = axes[0, column], axes[1, column]
        for seed, part in table[table["layer"] == layer].groupby("seed"):
            part = part.sort_values("step")
            (line,) = top.plot(part["step"], part["bound_ratio"], lw=1.2, label=f"seed {seed}")
            trapped = part["num_traps"] > 0
            top.plot(part["step"][trapped], part["bound_ratio"][trapped], "o", ms=2.5, color=line.get_color())
            bottom.plot(part["step"], part["trap_mean_share"], lw=1.2, color=line.get_color())
        top.axhline(1.0, color="k", ls="--", lw=0.8)
        top.set_yscale("log")
        top.set_title(f"{layer}: max|W|/sqrt(N) / (sigma (1+sqrt(gamma)))  (dots: trap)", fontsize=8)
        bottom.set_title(f"{layer}: largest trap's cosine with a constant matrix", fontsize=8)
        bottom.set_ylim(0, 1.05)
        for ax in (top, bottom):
            shade_phases(ax, phases)
            set_step_axis(ax, label=ax is bottom and column == 0)
        top.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_trap_removal(table: pd.DataFrame, title: str) -> Figure:
    edges = list(dict.fromkeys(table["edge"]))
    scopes = [scope for scope in dict.fromkeys(table["scope"]) if scope != "none"]
    fig = _figure(6.0 * max(len(edges), 1), 4.6)
    axes = fig.subplots(1, max(len(edges), 1), squeeze=False, sharey=True)
    for column, edge in enumerate(edges):
        ax = axes[0, column]
        part = table[table["edge"] == edge]
        for _, before in part[part["condition"] == "none"].iterrows():
            ax.axhline(before["test_acc"], color="grey", lw=0.6)
        for offset, scope in enumerate(scopes):
            rows = part[part["scope"] == scope]
            x = [CONDITION_ORDER.index(c) + (offset - len(scopes) / 2) * 0.12 for c in rows["condition"]]
            ax.plot(x, rows["test_acc"], "o", ms=3, alpha=0.7, label=scope)
        ax.set_xticks(range(len(CONDITION_ORDER)), [c.replace("_", "\n") for c in CONDITION_ORDER], fontsize=6)
        ax.set_title(f"{edge} (grey: unmodified)", fontsize=8)
        ax.set_ylabel("test accuracy after the change")
        ax.legend(fontsize=6, title="layer", title_fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_shuffled_confusion(table: pd.DataFrame, title: str) -> Figure:
    table = table[table["inputs"] == "pixel_shuffled"]
    keys = list(dict.fromkeys(zip(table["edge"], table["step"])))
    fig = _figure(2.6 * max(len(keys), 1), 3.0)
    axes = fig.subplots(1, max(len(keys), 1), squeeze=False)
    for column, (edge, step) in enumerate(keys):
        part = table[(table["edge"] == edge) & (table["step"] == step)]
        classes = int(part[["true_class", "predicted_class"]].max().max()) + 1
        counts = np.zeros((classes, classes))
        counts[part["true_class"], part["predicted_class"]] = part["count"]
        share = counts.sum(axis=0).max() / counts.sum()
        ax = axes[0, column]
        ax.imshow(counts, cmap="viridis")
        ax.set_title(f"{edge}, step {step}\nmost-predicted class {int(counts.sum(axis=0).argmax())}: {share:.0%}",
                     fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def mechanism_figure_from_files(figure: str, runs, phases, checkpoints, dataset, edges, components, description,
                                outputs) -> None:
    """The rule ``figure_mechanism``: one of the four figures of an experiment and weight decay.

    ``dataset``: the dataset file (or the loaded dict); ``checkpoints``: each seed's checkpoint folder."""
    from antigrok.training.data import load_dataset

    lowest = min(runs, key=seed_of)
    seeds = sorted(seed_of(path) for path in runs)
    title = f"{description}; seeds {', '.join(map(str, seeds))}"
    phase_frame = read_run_tables(phases)
    lowest_phases = phase_frame[phase_frame["seed"] == seed_of(lowest)]
    if figure == "prototypes":
        folder = next(path for path in checkpoints if Path(path).parent.name == Path(lowest).parent.name)
        chosen = edge_checkpoints(lowest_phases, checkpoint_paths(folder), edges)
        data = dataset if isinstance(dataset, dict) else load_dataset(dataset)
        fig = plot_prototypes([(e.edge, e.step, read_state_dict(e.path)) for e in chosen],
                              class_means(data["x_train"], data["y_train"]), components,
                              f"Prototypes, seed {seed_of(lowest)}: {description}")
    elif figure == "largest_weight":
        fig = plot_largest_weight(read_run_tables(runs), lowest_phases, title)
    elif figure == "trap_removal":
        fig = plot_trap_removal(read_run_tables(runs), title)
    elif figure == "shuffled_confusion":
        fig = plot_shuffled_confusion(pd.read_csv(lowest), f"Pixel-shuffled test images, seed {seed_of(lowest)}: "
                                                            f"{description}")
    else:
        raise ValueError(f"unknown mechanism figure {figure!r}")
    save_figure(fig, outputs)
