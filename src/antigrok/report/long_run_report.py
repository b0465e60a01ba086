"""The long runs' figures and tables, from their reference folder alone (``scripts/long_run.py report``).

A long run's checkpoints are split across the machines that trained it, so the workflow's figure
and table rules cannot run on it. Its reference folder (antigrok.study.long_runs) holds the rows those
rules read: train_log.csv, phases.csv, htsr.csv, traps.csv, progress.csv, and the checkpoints at
the phase edges. This module draws from them, with the workflow's own functions:

    figures/accuracy_{experiment}_wd{wd}.png   Fig. 1: train and test accuracy, phases shaded
    figures/alpha_{experiment}_wd{wd}.png      Figs. 4 and 6: HTSR alpha per layer and averaged
    figures/progress_{experiment}_wd{wd}.png   Figs. 5 and 7: the progress measures and the l2 norm
    figures/traps_{experiment}_wd{wd}.png      Fig. 3: W_rand ESDs with their MP fit and the Correlation
                                               Traps at each kept phase-edge checkpoint (the spectra
                                               recomputed from it as the spectra rule computes them)
    tables/table1_alpha, table2_traps, table4_mp_fit (.csv, .md)   the paper's Tables 1, 2 and 4
    tables/paper_comparison (.csv, .md)        those tables cell by cell beside the paper's values
    tables/run_status.csv                      how far each run had trained when this was drawn
    figures/trap_counts_{experiment}.png       raw and centred Correlation Traps per layer over the steps
    figures/rescaled_{experiment}.png          with --rescaled: the long runs beside time-rescaled runs
    tables/same_time.csv, same_time_summary    against lr x step (antigrok.rescaled_comparison)
    REPORT.md                                  the list of the above, with the status line and command

An unfinished run is never passed off as finished: while any run trains, every figure title, every
table (a ``status`` column in the CSVs, a line under the Markdown title) and REPORT.md say
``provisional: wd 0 at step N of 1e7``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from antigrok.files import write_csv_atomically, write_text_atomically
from antigrok.formats.loading import read_state_dict
from antigrok.htsr import analyze_weights, weight_matrices
from antigrok.report.figures import (
    accuracy_figure_from_files,
    alpha_figure_from_files,
    figure_layers,
    load_spectrum,
    plot_trap_examples,
    progress_figure_from_files,
    save_figure,
)
from antigrok.runs import read_run_files
from antigrok.schema import REPO
from antigrok.spectra.primitives import read_htsr, save_spectra
from antigrok.study.long_runs import EDGE_COLUMNS, LongRun
from antigrok.study.paper import compare_with_paper, comparison_markdown, read_paper_tables
from antigrok.study.rescaled_comparison import (
    RunRows,
    plot_same_time,
    plot_traps_over_time,
    read_run_rows,
    runs_of_folder,
    same_time_summary,
    same_time_table,
    summary_markdown,
)
from antigrok.study.tables import TABLE_CAPTION, table1_alpha, table2_traps, table4_mp_fit, tidy_to_markdown
from antigrok.workflow_config import describe_experiment, format_weight_decay

log = logging.getLogger(__name__)

# The files of a run's reference folder that every figure and table reads.
REQUIRED_FILES = ("train_log.csv", "phases.csv", "htsr.csv", "traps.csv", "progress.csv")
# The paper's values of Tables 1, 2 and 4 (rule paper_comparison's input).
PAPER_TABLES = REPO / "workflow" / "resources" / "paper_tables.csv"
# Headings of the trap figure's columns, by checkpoints.csv's edge.
EDGE_HEADINGS = {
    "fit": "train set fitted",
    "grokking_start": "grokking starts",
    "peak": "test-accuracy peak",
    "decline_start": "decline (anti-grokking) starts",
    "end": "end of training",
}
TABLES = {
    "table1_alpha": "Table 1: HTSR alpha per phase",
    "table2_traps": "Table 2: Correlation Traps per layer per phase",
    "table4_mp_fit": "Table 4: MP fit of the randomized weights and Correlation Traps per phase",
}
FIGURE_DESCRIPTIONS = {
    "accuracy": "train and test accuracy over log steps, phases shaded (Fig. 1)",
    "alpha": "HTSR α per layer and averaged, phases shaded (Figs. 4 and 6)",
    "progress": "progress measures and the l2 weight norm (Figs. 5 and 7)",
    "traps": "W_rand ESDs with the MP fit and the Correlation Traps at the kept phase-edge checkpoints (Fig. 3)",
}
COMPARISON_DESCRIPTIONS = {
    "trap_counts": "raw (WeightWatcher's) and centred Correlation Traps per layer over the steps; a layer with "
                   "fewer than 100 eigenvalues pools 5 shuffled draws, as WeightWatcher does, so fc3's count "
                   "(10 eigenvalues) can reach 50",
    "rescaled": "the long runs (black) beside the time-rescaled runs (coloured by lr, one line per seed) against "
                "lr x step: test accuracy, fc1 and fc2 alpha, centred traps",
}
# The quantities of the same-time summary table, by column name of antigrok.rescaled_comparison.run_series.
SAME_TIME_QUANTITIES = ["test_acc", "alpha_fc1", "alpha_fc2", "traps", "traps_centered", "l2_norm"]
# Recomputed spectra must give htsr.csv's largest W_rand eigenvalue to this relative tolerance.
SPECTRA_RTOL = 1e-9


# ------------------------------------------------------------------------------------ run status


def format_steps(steps: int) -> str:
    """10000000 as 1e7 (a power of ten), any other count as itself."""
    exponent = math.log10(steps) if steps > 0 else 0.0
    return f"1e{int(exponent)}" if steps >= 10 and exponent == int(exponent) else str(steps)


@dataclass(frozen=True)
class RunStatus:
    """How far a run had trained and been analysed when its reference folder was read."""

    experiment: str
    weight_decay: float
    seed: int
    trained_step: int  # the train log's last step
    analysed_step: int  # the last checkpoint step with htsr.csv rows
    last_step: int  # the config's steps

    @property
    def finished(self) -> bool:
        return self.trained_step >= self.last_step and self.analysed_step >= self.last_step

    def where(self, name: str) -> str:
        """``wd 0 at step N of 1e7`` (and how far its rows are analysed, where that lags), or ``wd 0 finished``."""
        if self.finished:
            return f"{name} finished ({format_steps(self.last_step)} steps)"
        lag = f", rows analysed to step {self.analysed_step}" if self.analysed_step < self.trained_step else ""
        return f"{name} at step {self.trained_step} of {format_steps(self.last_step)}{lag}"


def reference_file(run: LongRun, name: str) -> Path:
    path = run.reference_dir / name
    if not path.exists():
        raise FileNotFoundError(missing_message([path]))
    return path


def missing_message(paths: Sequence[Path]) -> str:
    return (f"the reference folder lacks {', '.join(map(str, paths))}: the report draws from these files alone. "
            "Check --out and --configfile (the config that made the runs), or bring the folder up to date with "
            "`scripts/long_run.py analyse` on the machine that trains the runs (git pull where another machine "
            "committed them)")


def check_reference_files(runs: Sequence[LongRun]) -> None:
    """Every file the report reads (the rows, and the checkpoints checkpoints.csv lists), or one
    error naming all that are missing, before anything is drawn."""
    wanted = []
    for run in runs:
        wanted += [run.reference_dir / name for name in REQUIRED_FILES]
        index = run.reference_dir / "checkpoints.csv"
        if index.exists():
            wanted += [run.reference_dir / "checkpoints" / file for file in pd.read_csv(index)["file"]]
    missing = [path for path in wanted if not path.exists()]
    if missing:
        raise FileNotFoundError(missing_message(missing))


def run_status(run: LongRun) -> RunStatus:
    train_log = pd.read_csv(reference_file(run, "train_log.csv"))
    htsr = pd.read_csv(reference_file(run, "htsr.csv"))
    if train_log.empty or htsr.empty:
        raise ValueError(f"{run.reference_dir}: train_log.csv or htsr.csv has no rows yet; analyse the run first")
    return RunStatus(run.spec.experiment, run.spec.weight_decay, run.spec.seed, int(train_log["step"].max()),
                     int(htsr["step"].max()), run.last_step)


def run_names(statuses: Sequence[RunStatus]) -> list[str]:
    """``wd 0``, ``wd 0.01``: with the experiment and seed only where the runs need them told apart."""
    many_experiments = len({s.experiment for s in statuses}) > 1
    many_seeds = len({s.seed for s in statuses}) > 1
    return [(f"{s.experiment} " if many_experiments else "") + f"wd {s.weight_decay:g}"
            + (f" seed {s.seed}" if many_seeds else "") for s in statuses]


def status_line(statuses: Sequence[RunStatus], names: Sequence[str] | None = None) -> str:
    """``provisional: wd 0 at step N of 1e7; wd 0.01 at step M of 1e7`` while any run trains,
    ``finished: wd 0 (1e7 steps); wd 0.01 (1e7 steps)`` once all have."""
    names = run_names(statuses) if names is None else names
    if all(s.finished for s in statuses):
        return "finished: " + "; ".join(f"{name} ({format_steps(s.last_step)} steps)" for s, name in zip(statuses, names))
    return "provisional: " + "; ".join(s.where(name) for s, name in zip(statuses, names))


def status_table(statuses: Sequence[RunStatus]) -> pd.DataFrame:
    return pd.DataFrame([{"experiment": s.experiment, "weight_decay": s.weight_decay, "seed": s.seed,
                          "trained_step": s.trained_step, "analysed_step": s.analysed_step,
                          "last_step": s.last_step, "finished": s.finished} for s in statuses])


# ------------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class RunGroup:
    """The runs of one experiment and weight decay (one figure each, seeds as a band)."""

    experiment: str
    weight_decay: float
    runs: list[LongRun]
    note: str  # the status line of these runs

    @property
    def suffix(self) -> str:
        return f"{self.experiment}_wd{format_weight_decay(self.weight_decay)}"

    def files(self, name: str) -> list[Path]:
        return [reference_file(run, name) for run in self.runs]


def run_groups(runs: Sequence[LongRun], statuses: Sequence[RunStatus]) -> list[RunGroup]:
    names = dict(zip((run.name for run in runs), run_names(statuses)))
    keyed: dict[tuple[str, float], list[tuple[LongRun, RunStatus]]] = {}
    for run, status in zip(runs, statuses):
        keyed.setdefault((run.spec.experiment, run.spec.weight_decay), []).append((run, status))
    return [RunGroup(experiment, weight_decay, [run for run, _ in members],
                     status_line([s for _, s in members], [names[run.name] for run, _ in members]))
            for (experiment, weight_decay), members in keyed.items()]


def draw_figures(group: RunGroup, config: dict, folder: Path, work: Path) -> tuple[list[Path], list[str]]:
    """The group's accuracy, alpha, progress and trap figures; (files written, check lines)."""
    htsr_config = config["htsr"]
    common = {"experiment": group.experiment, "weight_decay": f"{group.weight_decay:g}", "note": group.note}
    phases = group.files("phases.csv")
    paths = {name: folder / f"{name}_{group.suffix}.png" for name in FIGURE_DESCRIPTIONS}
    accuracy_figure_from_files(train_logs=group.files("train_log.csv"), phases=phases, outputs=[paths["accuracy"]],
                               **common)
    alpha_figure_from_files(htsr=group.files("htsr.csv"), phases=phases, average_layers=dict(htsr_config["average_layers"]),
                            alpha_critical=float(htsr_config["alpha_critical"]), outputs=[paths["alpha"]], **common)
    progress_figure_from_files(progress=group.files("progress.csv"), phases=phases, outputs=[paths["progress"]],
                               **common)
    written = [paths["accuracy"], paths["alpha"], paths["progress"]]
    checks = []
    checks += [line for line in map(missing_edges_check, group.runs) if line]
    # The lowest seed stands for the group, as in the workflow's Fig. 3.
    run = min(group.runs, key=lambda r: r.spec.seed)
    edges = edge_checkpoints(run)
    if edges.empty:
        checks.append(f"{run.name}: no trap figure yet: the run has reached no phase edge, so no checkpoint is kept")
    else:
        checks.append(draw_trap_figure(run, edges, config, paths["traps"], work, group.note))
        written.append(paths["traps"])
    return written, checks


def edge_checkpoints(run: LongRun) -> pd.DataFrame:
    """checkpoints.csv's rows (edge, edge_step, checkpoint_step, file); none before the first edge.

    A run that has reached an edge (phases.csv) or finished must have its checkpoints.csv."""
    index = run.reference_dir / "checkpoints.csv"
    if index.exists():
        return pd.read_csv(index)
    first = pd.read_csv(reference_file(run, "phases.csv")).iloc[0]
    reached = [edge for edge, column in EDGE_COLUMNS.items() if column in first and not pd.isna(first[column])]
    if reached:
        raise FileNotFoundError(missing_message([index]) + f" (phases.csv says {run.name} has reached {reached[0]})")
    return pd.DataFrame(columns=["edge", "edge_step", "checkpoint_step", "file"])


def missing_edges_check(run: LongRun) -> str | None:
    """The edges phases.csv has reached whose checkpoint the reference folder does not keep (written by a
    machine that was gone before the edge was recognised), or None."""
    first = pd.read_csv(reference_file(run, "phases.csv")).iloc[0]
    kept = set(edge_checkpoints(run)["edge"])
    missing = [f"{EDGE_HEADINGS.get(edge, edge)} (step {int(first[column])})" for edge, column in EDGE_COLUMNS.items()
               if column in first and not pd.isna(first[column]) and edge not in kept]
    if not missing:
        return None
    return (f"{run.name}: no checkpoint kept for the {', '.join(missing)}, so the trap figure lacks it: it was "
            "written by a machine that was gone before the edge was recognised. `scripts/long_run.py recover` "
            "trains it again from a committed state (docs/long-runs.md)")


def edge_spectra(run: LongRun, edges: pd.DataFrame, config: dict, npz_path: Path) -> pd.DataFrame:
    """The spectra of the kept edge checkpoints, as the spectra rule computes them (the run's seed
    seeds each layer's randomization), written to ``npz_path``; their htsr rows."""
    rows, arrays = [], {}
    for step, file in edges.drop_duplicates("checkpoint_step")[["checkpoint_step", "file"]].itertuples(index=False):
        path = reference_file(run, f"checkpoints/{file}")
        matrices = weight_matrices(read_state_dict(path))  # safetensors: nothing is unpickled
        step_rows, step_arrays = analyze_weights(matrices, run_seed=run.spec.seed, step=int(step),
                                                 fix_fingers=config["htsr"]["fix_fingers"],
                                                 engine=config["htsr"]["engine"])
        rows.extend(step_rows)
        arrays.update(step_arrays)
    save_spectra(arrays, npz_path)
    return pd.DataFrame(rows)


def spectra_check(run: LongRun, recomputed: pd.DataFrame, htsr: pd.DataFrame) -> str:
    """Whether the recomputed spectra are the ones htsr.csv's rows came from (largest W_rand eigenvalue)."""
    merged = recomputed[["step", "layer", "max_rand_eval"]].merge(
        htsr[["step", "layer", "max_rand_eval"]], on=["step", "layer"], suffixes=("", "_rows"), how="left")
    agree = np.isclose(merged["max_rand_eval"], merged["max_rand_eval_rows"], rtol=SPECTRA_RTOL, atol=0.0)
    steps = ", ".join(map(str, sorted(merged["step"].unique())))
    if agree.all():
        return (f"{run.name}: the W_rand spectra recomputed from the kept checkpoints (steps {steps}) give "
                f"htsr.csv's largest eigenvalue in every layer (relative tolerance {SPECTRA_RTOL:g})")
    differing = merged[~agree]
    log.warning("%s: recomputed spectra differ from htsr.csv at %d (step, layer)", run.name, len(differing))
    return (f"{run.name}: WARNING: the W_rand spectra recomputed from the kept checkpoints differ from htsr.csv's "
            f"rows at " + ", ".join(f"step {r.step} {r.layer}" for r in differing.itertuples())
            + " (another engine or CPU than the analysis); the histograms there are the recomputed ones, the "
            "fits and trap counts htsr.csv's and traps.csv's")


def draw_trap_figure(run: LongRun, edges: pd.DataFrame, config: dict, output: Path, work: Path, note: str) -> str:
    """Fig. 3 at every kept phase-edge checkpoint of ``run``: one column per checkpoint, one row per layer."""
    npz_path = work / run.name.replace("/", "_") / "spectra.npz"
    recomputed = edge_spectra(run, edges, config, npz_path)
    htsr = read_htsr(reference_file(run, "htsr.csv"))
    traps = pd.read_csv(reference_file(run, "traps.csv"))
    layers = figure_layers(run.spec.experiment, dict(config["htsr"]["average_layers"]), htsr["layer"])
    columns = []
    with np.load(npz_path, allow_pickle=False) as npz:
        for step, group in edges.groupby("checkpoint_step", sort=True):
            heading = " and ".join(EDGE_HEADINGS.get(edge, edge) for edge in group["edge"])
            spectra = [load_spectrum(npz, htsr, layer, int(step), rand=True, traps=traps) for layer in layers]
            columns.append((f"{heading} (step {int(step)})", spectra))
    title = (f"Correlation Traps in W_rand at the phase-edge checkpoints (Fig. 3)\n{run.spec.experiment}, "
             f"weight decay {run.spec.weight_decay:g}, seed {run.spec.seed}\n{note}")
    figure = plot_trap_examples(columns, title)
    width, height = figure.get_size_inches()
    figure.set_size_inches(max(width, 5.5 * len(columns)), height)  # room for each column's two-line titles
    save_figure(figure, [output])
    return spectra_check(run, recomputed, htsr)


# -------------------------------------------------------------------------------------- tables


def with_status(markdown: str, status: str) -> str:
    """The status line in bold under the Markdown's first line (its title)."""
    title, _, rest = markdown.partition("\n")
    return f"{title}\n\n**{status}**\n{rest}"


def status_column(frame: pd.DataFrame, groups: Sequence[RunGroup]) -> pd.Series:
    """Per row of a table with experiment and weight_decay: the status line of the runs behind it."""
    lines = {(group.experiment, group.weight_decay): group.note for group in groups}
    return pd.Series([lines.get((experiment, float(weight_decay)), "no run")
                      for experiment, weight_decay in zip(frame["experiment"], frame["weight_decay"])],
                     index=frame.index, dtype=object)


def write_tables(runs: Sequence[LongRun], statuses: Sequence[RunStatus], groups: Sequence[RunGroup], config: dict,
                 folder: Path, status: str) -> list[Path]:
    """Tables 1, 2, 4 (antigrok.study.tables, as rule tables makes them) and the paper comparison."""
    htsr = read_run_files([reference_file(run, "htsr.csv") for run in runs])
    traps = read_run_files([reference_file(run, "traps.csv") for run in runs])
    phases = read_run_files([reference_file(run, "phases.csv") for run in runs])
    experiments = list(dict.fromkeys(run.spec.experiment for run in runs))
    descriptions = {name: describe_experiment(name, config["experiments"]) for name in experiments}
    tidy = {
        "table1_alpha": table1_alpha(htsr, phases, config["htsr"]["average_layers"], experiments),
        "table2_traps": table2_traps(traps, phases, experiments),
        "table4_mp_fit": table4_mp_fit(htsr, traps, phases, experiments),
    }
    written = []
    for name, table in tidy.items():
        write_csv_atomically(table.assign(status=status_column(table, groups)), folder / f"{name}.csv")
        markdown = tidy_to_markdown(table, TABLES[name], TABLE_CAPTION, descriptions)
        write_text_atomically(folder / f"{name}.md", with_status(markdown, status))
        written += [folder / f"{name}.csv", folder / f"{name}.md"]
    experiment = config["paper"]["experiment"]
    if experiment in experiments:
        paper = read_paper_tables(PAPER_TABLES, config["paper"]["positive_weight_decay"])
        comparison = compare_with_paper(paper, {"table1": tidy["table1_alpha"], "table2": tidy["table2_traps"],
                                                "table4": tidy["table4_mp_fit"]}, experiment)
        write_csv_atomically(comparison.assign(status=status_column(comparison, groups)),
                             folder / "paper_comparison.csv")
        write_text_atomically(folder / "paper_comparison.md",
                              with_status(comparison_markdown(comparison, descriptions[experiment]), status))
        written += [folder / "paper_comparison.csv", folder / "paper_comparison.md"]
    else:
        log.info("no paper comparison: paper.experiment %r is not among the runs", experiment)
    write_csv_atomically(status_table(statuses), folder / "run_status.csv")
    return written + [folder / "run_status.csv"]


# --------------------------------------------------------------------- beside the rescaled runs


def long_run_rows(runs: Sequence[LongRun], config: dict) -> list[RunRows]:
    experiments = config["experiments"]
    return [read_run_rows(run.reference_dir, experiments[run.spec.experiment]["optimizer"]["lr"]) for run in runs]


def write_comparisons(runs: Sequence[LongRun], config: dict, rescaled: Sequence[tuple[Path, dict]],
                      figures_dir: Path, tables_dir: Path, status: str) -> tuple[list[Path], list[Path], str]:
    """The trap-count figure of each experiment's long runs and, for the rescaled folders given as
    (folder, its config's experiments), the same-time figure and tables; returns (figures, tables,
    the summary's Markdown for REPORT.md)."""
    long_rows = long_run_rows(runs, config)
    rescaled_rows = [rows for folder, experiments in rescaled for rows in runs_of_folder(folder, experiments)]
    figures = []
    for experiment in dict.fromkeys(run.spec.experiment for run in runs):
        rows = [row for row, run in zip(long_rows, runs) if run.spec.experiment == experiment]
        what = describe_experiment(experiment, config["experiments"])
        path = figures_dir / f"trap_counts_{experiment}.png"
        save_figure(plot_traps_over_time(rows, f"{what}: Correlation Traps, raw and centred\n{status}"), [path])
        figures.append(path)
        if rescaled_rows:
            path = figures_dir / f"rescaled_{experiment}.png"
            save_figure(plot_same_time(rows, rescaled_rows, f"{what} beside the time-rescaled runs\n{status}"), [path])
            figures.append(path)
    if not rescaled_rows:
        return figures, [], ""
    table = same_time_table(long_rows, rescaled_rows)
    summary = same_time_summary(table)
    write_csv_atomically(table.assign(status=status), tables_dir / "same_time.csv")
    write_csv_atomically(summary.assign(status=status), tables_dir / "same_time_summary.csv")
    folders = ", ".join(f"`{folder}`" for folder, _ in rescaled)
    markdown = "\n".join([
        f"The rescaled runs of {folders} ({len(rescaled_rows)} runs) at their phase edges and their last analysed "
        "step; the long run's value at the same lr x step (its analysed checkpoint nearest in log step; — where it "
        "has not been analysed that far, and '(k reached)' where only k of the n matched steps are). "
        "Cells: median [min, max] over the runs. Every row of both directions (also the long runs' edges in the "
        "rescaled runs' time): tables/same_time.csv.",
        "",
        summary_markdown(summary, SAME_TIME_QUANTITIES),
    ])
    write_text_atomically(tables_dir / "same_time_summary.md",
                          with_status("# The long runs beside the time-rescaled runs\n\n" + markdown, status))
    return figures, [tables_dir / "same_time.csv", tables_dir / "same_time_summary.csv",
                     tables_dir / "same_time_summary.md"], markdown


# ------------------------------------------------------------------------------------- report


def figure_description(path: Path) -> str:
    """The description of a figure file, by the longest name its stem starts with."""
    descriptions = FIGURE_DESCRIPTIONS | COMPARISON_DESCRIPTIONS
    kind = max((name for name in descriptions if path.stem.startswith(name + "_")), key=len)
    return descriptions[kind]


def report_markdown(out: Path, reference: Path, status: str, statuses: Sequence[RunStatus], figures: list[Path],
                    tables: list[Path], checks: list[str], command: str, seconds: float,
                    same_time: str = "") -> str:
    lines = [
        "# The long runs, from their reference folder",
        "",
        f"**{status}**",
        "",
        f"Drawn from the rows of `{reference}` alone (scripts/long_run.py report; docs/long-runs.md) by",
        "",
        f"    {command}",
        "",
        f"in {seconds:.1f} s, with the workflow's own figure and table functions (antigrok.report.figures, antigrok.study.tables, "
        "antigrok.study.paper) on the reference folder's rows. The trap figure shows the kept phase-edge checkpoints, "
        "their spectra recomputed as the spectra rule computes them.",
        "",
        "## Runs",
        "",
        "| experiment | weight decay | seed | train log to step | rows analysed to step | steps | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in statuses:
        lines.append(f"| {s.experiment} | {s.weight_decay:g} | {s.seed} | {s.trained_step} | {s.analysed_step} | "
                     f"{s.last_step} | {'finished' if s.finished else 'provisional (training)'} |")
    lines += ["", "## Figures", ""]
    for path in figures:
        lines += [f"- [`{path.relative_to(out)}`]({path.relative_to(out)}): {figure_description(path)}", "",
                  f"  ![{path.stem}]({path.relative_to(out)})", ""]
    lines += ["## Tables", ""]
    for path in tables:
        if path.suffix == ".md":
            lines.append(f"- [`{path.relative_to(out)}`]({path.relative_to(out)}) "
                         f"(and its `.csv`, tidy, with a `status` column)")
    lines += ["- `tables/run_status.csv`: the steps above, one row per run", ""]
    if same_time:
        lines += ["## Beside the time-rescaled runs, at equal lr x step", "", same_time, ""]
    lines += ["## Checks", "", *[f"- {check}" for check in checks], ""]
    return "\n".join(lines)


def write_report(runs: Sequence[LongRun], config: dict, out: str | Path, command: str,
                 reference: str | Path | None = None, rescaled: Sequence[tuple[Path, dict]] = ()) -> str:
    """Every figure and table of the long runs into ``out``, and OUT/REPORT.md; returns the status line.
    ``rescaled``: (folder, its config's experiments) of time-rescaled runs to lay beside them."""
    start = time.perf_counter()
    out = Path(out)
    runs = list(runs)
    if not runs:
        raise ValueError("the config has no runs")
    check_reference_files(runs)
    statuses = [run_status(run) for run in runs]
    status = status_line(statuses)
    figures_dir, tables_dir = out / "figures", out / "tables"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures, checks = [], []
    groups = run_groups(runs, statuses)
    with tempfile.TemporaryDirectory(prefix="long_run_report_") as work:
        for group in groups:
            written, group_checks = draw_figures(group, config, figures_dir, Path(work))
            figures += written
            checks += group_checks
    tables = write_tables(runs, statuses, groups, config, tables_dir, status)
    comparison_figures, comparison_tables, same_time = write_comparisons(runs, config, rescaled, figures_dir,
                                                                         tables_dir, status)
    figures += comparison_figures
    tables += comparison_tables
    reference = Path(reference) if reference is not None else runs[0].reference_dir.parents[3]
    markdown = report_markdown(out, reference, status, statuses, figures, tables, checks, command,
                               time.perf_counter() - start, same_time)
    write_text_atomically(out / "REPORT.md", markdown)
    log.info("wrote %d figures and %d table files into %s (%s)", len(figures), len(tables), out, status)
    return status
