"""Every figure renders from synthetic data to a PNG of the expected size; the helpers' math."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from antigrok.report import figures
from antigrok.spectra.primitives import mp_edges, mp_sigma_of_edge
from antigrok.study import tables as summary
from antigrok.study.detector import alarm_outcome

STEPS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
SEEDS = [0, 1]
LAYERS = ["fc1", "fc2", "fc3"]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def synthetic_train_log() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            t = math.log10(step + 1)
            rows.append(
                {
                    "seed": seed,
                    "step": step,
                    "train_acc": float(sigmoid(4 * (t - 1))),
                    "test_acc": float(0.1 + 0.8 * sigmoid(4 * (t - 2)) - 0.5 * sigmoid(6 * (t - 3.1)) + 0.01 * seed),
                }
            )
    return pd.DataFrame(rows)


def synthetic_phases() -> pd.DataFrame:
    labels = {0: "none", 1: "none", 2: "none", 5: "none", 10: "pre-grokking", 20: "pre-grokking"}
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            phase = labels.get(step) or ("grokking" if step <= 200 + 300 * seed else "anti-grokking")
            rows.append(
                {"seed": seed, "step": step, "phase": phase, "fit_step": 10, "peak_step": 200 + 300 * seed,
                 "collapse_step": 1000.0 if seed == 0 else np.nan, "groks": True, "collapses": seed == 0}
            )
    return pd.DataFrame(rows)


def synthetic_htsr() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            for index, layer in enumerate(LAYERS):
                alpha = 6 - 1.5 * math.log10(step + 1) + 0.3 * index + 0.1 * seed
                if layer == "fc1" and step == 5 and seed == 0:
                    alpha = np.nan  # a failed fit is skipped, not plotted as -1
                rows.append(
                    {"seed": seed, "step": step, "layer": layer, "alpha": alpha, "rows": 392, "cols": 100,
                     "xmin": 2.0, "xmax": 40.0, "fit_status": "ok", "rand_sigma_mp": 1.0,
                     "rand_lambda_plus": (1 + (392 / 100) ** -0.5) ** 2, "max_rand_eval": np.nan,
                     "mp_ks_stat": 0.02, "mp_ks_pvalue": 0.9}
                )
    return pd.DataFrame(rows)


def synthetic_progress() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            t = math.log10(step + 1)
            rows.append(
                {"seed": seed, "step": step, "l2_norm": 100 + 10 * t, "activation_sparsity": 0.5 + 0.1 * t,
                 "abs_weight_entropy": 5000 - 100 * t, "circuit_complexity": 10 * sigmoid(t - 2) + seed}
            )
    return pd.DataFrame(rows)


def marchenko_pastur_sample(rng, n=392, m=100, spike=0.0) -> np.ndarray:
    w = rng.standard_normal((n, m))
    if spike:
        w += spike * np.outer(rng.standard_normal(n), rng.standard_normal(m)) / math.sqrt(n)
    return np.sort(np.linalg.eigvalsh(w.T @ w / n))


def spectrum(rng, spike=0.0, traps=None, rand=True) -> figures.Spectrum:
    evals = marchenko_pastur_sample(rng, spike=spike)
    if not rand:
        evals = evals * np.exp(rng.pareto(2.0, len(evals)))  # a heavy tail
    fit = synthetic_htsr().iloc[0].copy()
    fit["max_rand_eval"] = evals.max()
    trap_row = None
    if traps is not None:
        trap_row = pd.Series({"trap_threshold": fit["rand_lambda_plus"] + 0.1, "trap_eigenvalues": traps})
    return figures.Spectrum(layer="fc2", step=2000, evals=evals, fit=fit, traps=trap_row)


def synthetic_detectors(collapse_step=1000) -> pd.DataFrame:
    """detectors.csv rows as antigrok.study.tables writes them (its alarm_outcome computes the outcome);
    seed 0 collapses at ``collapse_step`` (None: never), seed 1 never does."""
    rows = []
    for alarm in ["alpha_below_critical", "any_trap", "alpha_and_trap", "l2_norm"]:
        for seed in SEEDS:
            collapse = collapse_step if seed == 0 else None
            fired = not (alarm == "any_trap" and seed == 0)
            alarm_step = {"alpha_below_critical": 500, "alpha_and_trap": 2000, "l2_norm": 5}.get(alarm, 700)
            firings = [alarm_step] if fired else []
            rows.append({"experiment": "mnist_mlp", "weight_decay": 0.0, "seed": seed, "alarm": alarm,
                         **alarm_outcome(firings, fit_step=1, peak_step=200, collapse_step=collapse),
                         "threshold": 2.0})
    return pd.DataFrame(rows).astype({"collapse_step": float, "alarm_step": float})


def assert_png(fig, path, name, panels=1):
    figures.save_figure(fig, [path])
    assert path.stat().st_size > 10_000, "a figure with content is larger than a blank PNG"
    image = imread(path)
    width, height = figures.figure_size(name, panels)
    assert image.shape[:2] == (round(height * figures.DPI), round(width * figures.DPI))
    # Not a blank canvas: a few percent of the pixels are drawn (not white).
    drawn = (image[..., :3] < 0.9).any(axis=-1).mean()
    assert drawn > 0.03, f"only {drawn:.1%} of the pixels are drawn"


def assert_line(axis, label: str, expected: pd.Series) -> None:
    """The line called ``label`` draws ``expected`` (index: step) point for point: the figure's data."""
    [line] = [line for line in axis.lines if line.get_label() == label]
    np.testing.assert_allclose(line.get_xdata().astype(float), expected.index.to_numpy(dtype=float))
    np.testing.assert_allclose(line.get_ydata().astype(float), expected.to_numpy(dtype=float), rtol=1e-12)


def test_accuracy_figure(tmp_path):
    train_log = synthetic_train_log()
    fig = figures.plot_accuracy(train_log, synthetic_phases(), "accuracy")
    by_step = train_log.groupby("step")
    assert_line(fig.axes[0], "train accuracy", by_step["train_acc"].mean())
    assert_line(fig.axes[0], "test accuracy", by_step["test_acc"].mean())
    assert_png(fig, tmp_path / "accuracy.png", "accuracy")


def test_alpha_figure_has_average_and_one_panel_per_layer(tmp_path):
    fig = figures.plot_alpha(synthetic_htsr(), synthetic_phases(), ["fc1", "fc2"], 2.0, "alpha")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["mean α of fc1, fc2", "α of fc1", "α of fc2"]
    htsr = synthetic_htsr()
    per_layer = htsr[htsr["layer"].isin(["fc1", "fc2"])]
    # a run's average is NaN where one of its layers failed (seed 0, fc1, step 5): that step's mean is seed 1's
    run_average = per_layer.groupby(["seed", "step"])["alpha"].agg(lambda v: v.mean() if v.notna().all() else np.nan)
    assert_line(fig.axes[0], "α (seed mean)", run_average.groupby("step").mean())
    for axis, layer in zip(fig.axes[1:], ["fc1", "fc2"]):
        assert_line(axis, "α (seed mean)", htsr[htsr["layer"] == layer].groupby("step")["alpha"].mean())
    assert_png(fig, tmp_path / "alpha.png", "alpha", panels=3)


def test_alpha_figure_names_missing_layers():
    with pytest.raises(figures.FigureDataError, match="average_layers"):
        figures.plot_alpha(synthetic_htsr(), None, ["blocks.0.attn"], 2.0, "alpha")


def test_progress_figure(tmp_path):
    progress = synthetic_progress()
    fig = figures.plot_progress(progress, synthetic_phases(), "progress")
    drawn = {line.get_label(): axis for axis in fig.axes for line in axis.lines}
    for column, label in [("l2_norm", "l2 weight norm"), ("activation_sparsity", "Activation sparsity"),
                          ("abs_weight_entropy", "Absolute weight entropy"),
                          ("circuit_complexity", "Approximate local circuit complexity")]:
        assert_line(drawn[label], label, progress.groupby("step")[column].mean())
    assert_png(fig, tmp_path / "progress.png", "progress", panels=4)


def test_esd_figure(tmp_path):
    rng = np.random.default_rng(0)
    esd = [spectrum(rng, rand=False), spectrum(rng, rand=False)]
    rand_esd = [spectrum(rng), spectrum(rng)]
    fig = figures.plot_esd_fits(esd, rand_esd, "esd")
    assert_png(fig, tmp_path / "esd.png", "esd", panels=2)


def test_save_figure_lays_out_once_for_png_and_pdf(tmp_path, monkeypatch):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    layouts = []
    execute = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", lambda self, fig: layouts.append(fig) or execute(self, fig))
    rng = np.random.default_rng(0)
    fig = figures.plot_esd_fits([spectrum(rng, rand=False)], [spectrum(rng)], "esd")
    figures.save_figure(fig, [tmp_path / "esd.png", tmp_path / "esd.pdf"])
    assert layouts == [fig], "the second format reuses the first one's layout"
    assert (tmp_path / "esd.pdf").read_bytes().startswith(b"%PDF")
    placed = [ax.get_position().bounds for ax in fig.axes]
    assert placed != [ax.get_position().bounds for ax in figures.plot_esd_fits(
        [spectrum(rng, rand=False)], [spectrum(rng)], "esd").axes], "the kept positions are the constrained layout's"


def test_traps_figure_marks_traps(tmp_path):
    rng = np.random.default_rng(1)
    before = spectrum(rng, spike=30.0, traps="")
    end = spectrum(rng, spike=60.0, traps="")
    end.traps["trap_eigenvalues"] = f"{end.evals.max():.6g}"
    fig = figures.plot_trap_examples([("before", [before]), ("end", [end])], "traps")
    assert "1 trap" in fig.axes[1].get_title() and "0 traps" in fig.axes[0].get_title()
    assert_png(fig, tmp_path / "traps.png", "traps", panels=1)


def test_detector_figure(tmp_path):
    detectors = synthetic_detectors()
    fig = figures.plot_detector_leads(detectors, "detector")
    assert_png(fig, tmp_path / "detector.png", "detector", panels=detectors["alarm"].nunique())


def test_detector_figure_without_any_collapse(tmp_path):
    detectors = synthetic_detectors(collapse_step=None)
    fig = figures.plot_detector_leads(detectors, "detector")
    assert any("no run collapsed" in text.get_text() for text in fig.axes[0].texts)
    assert_png(fig, tmp_path / "detector.png", "detector", panels=detectors["alarm"].nunique())


def test_alarm_outcomes_are_the_summarys():
    outcomes = synthetic_detectors().apply(figures.outcome_group, axis=1).tolist()
    # seed 0 collapses at 1000 after the peak at 200; seed 1 never collapses.
    assert outcomes[:2] == ["warned", "false_alarm"]  # alpha fires at 500 / in a run that holds
    assert outcomes[2:4] == ["missed", "false_alarm"]  # any_trap silent before the collapse
    assert outcomes[4:6] == ["late", "false_alarm"]  # alpha_and_trap at 2000 > 1000
    assert outcomes[6] == "false_alarm"  # l2 fires at step 5, before the peak


def test_a_detectors_row_without_the_summarys_outcome_is_refused():
    row = synthetic_detectors().iloc[0].drop("outcome")
    with pytest.raises(figures.FigureDataError, match="outcome None.*rerun the detectors rule"):
        figures.outcome_group(row)


def test_phase_intervals_join_runs_of_one_label():
    phases = pd.DataFrame({"step": [0, 1, 10, 100, 1000], "phase": ["none", "pre-grokking", "pre-grokking", "grokking", "anti-grokking"]})
    assert figures.phase_intervals(phases) == [
        ("none", 0, 1), ("pre-grokking", 1, 100), ("grokking", 100, 1000), ("anti-grokking", 1000, 1000)
    ]


def test_average_alpha_is_missing_where_a_layer_fit_failed():
    htsr = synthetic_htsr()
    average = figures.seed_average_alpha(htsr, ["fc1", "fc2"]).set_index(["seed", "step"])["alpha"]
    assert np.isnan(average.loc[(0, 5)])  # fc1 failed there: no average over fewer layers
    stats = figures.seed_statistics(average.reset_index(), "alpha")
    assert stats.loc[5, "count"] == 1 and stats.loc[5, "mean"] == pytest.approx(average.loc[(1, 5)])
    both = htsr[(htsr.seed == 1) & (htsr.step == 5) & htsr.layer.isin(["fc1", "fc2"])]["alpha"].mean()
    assert average.loc[(1, 5)] == pytest.approx(both)


def test_seed_statistics_band_is_min_max_over_seeds():
    stats = figures.seed_statistics(synthetic_train_log(), "test_acc")
    assert (stats["max"] - stats["min"]).to_numpy() == pytest.approx(0.01)
    assert stats["count"].eq(2).all()


def test_mp_density_integrates_to_one_and_matches_eq3_edges():
    q, sigma = 784 / 200, 1.3**0.5
    density = figures.mp_density_per_decade
    lower, upper = mp_edges(q, sigma)
    assert upper == pytest.approx(1.3 * (1 + q**-0.5) ** 2) and lower == pytest.approx(1.3 * (1 - q**-0.5) ** 2)
    log_grid = np.linspace(np.log10(lower), np.log10(upper), 200_001)
    mass = np.trapezoid(density(10**log_grid, sigma, q), log_grid)
    assert mass == pytest.approx(1.0, abs=2e-3)
    inside = np.linspace(lower, upper, 7)[1:-1]
    assert (density(inside, sigma, q) > 0).all()
    assert density(np.array([lower * 0.999, upper * 1.001]), sigma, q).tolist() == [0.0, 0.0]


def test_the_rand_esd_panel_draws_the_bulk_edge_of_htsr_csv():
    """The MP curve ends at rand_lambda_plus (in the npz's units), the edge the fit reported."""
    rng = np.random.default_rng(4)
    shown = spectrum(rng)
    fig = Figure()
    ax = fig.subplots()
    figures.plot_rand_esd_with_mp(ax, shown)
    lambda_plus = float(shown.fit["rand_lambda_plus"]) * figures.csv_to_npz_units(shown)
    curve = next(line for line in ax.get_lines() if line.get_label().startswith("MP fit"))
    assert curve.get_xdata()[-1] == pytest.approx(lambda_plus, rel=1e-12)
    edge = next(line for line in ax.get_lines() if line.get_label().startswith("λ+"))
    assert edge.get_xdata()[0] == pytest.approx(lambda_plus, rel=1e-12)
    q = figures.aspect_ratio(shown.fit)
    assert mp_edges(q, mp_sigma_of_edge(lambda_plus, q))[1] == pytest.approx(lambda_plus, rel=1e-12)


def test_mp_density_matches_a_random_matrix_histogram():
    evals = marchenko_pastur_sample(np.random.default_rng(3), n=2000, m=500)
    q = 4.0
    edges = np.logspace(np.log10(evals.min()), np.log10(evals.max()), 16)
    counts, _ = np.histogram(evals, edges)
    density = counts / (len(evals) * np.diff(np.log10(edges)))
    centres = np.sqrt(edges[1:] * edges[:-1])
    expected = figures.mp_density_per_decade(centres, 1.0, q)
    assert np.abs(density - expected)[2:-2].max() < 0.15 * expected.max()


def test_power_law_density_integrates_to_the_tail_fraction():
    grid = np.logspace(0, 2, 100_001)
    for alpha in (1.0, 1.5, 3.0):
        mass = np.trapezoid(figures.power_law_density(grid, alpha, 1.0, 100.0, 0.25), grid)
        assert mass == pytest.approx(0.25, rel=1e-3)


def test_parse_trap_eigenvalues():
    assert figures.parse_trap_eigenvalues("").size == 0
    assert figures.parse_trap_eigenvalues(np.nan).size == 0
    assert figures.parse_trap_eigenvalues("30.5;4.25").tolist() == [30.5, 4.25]


def test_trap_examples_prefer_a_collapsing_seed_before_its_collapse():
    steps = {0: [0, 10, 100, 500, 2000], 1: [0, 10, 100, 500, 2000]}
    seed, examples, collapsed = figures.choose_trap_examples(synthetic_phases(), steps)
    assert (seed, collapsed) == (0, True)
    assert [step for _, step in examples] == [500, 2000]


def test_trap_examples_fall_back_to_the_peak_without_collapse():
    phases = synthetic_phases().assign(collapse_step=np.nan)
    steps = {0: [0, 10, 100, 500, 2000], 1: [0, 10, 100, 500, 2000]}
    seed, examples, collapsed = figures.choose_trap_examples(phases, steps)
    assert (seed, collapsed) == (0, False)
    assert [step for _, step in examples] == [100, 2000]
    assert "peak" in examples[0][0]


def test_seed_is_read_from_the_run_directory(tmp_path):
    assert figures.seed_of("results/runs/mnist_mlp/wd0.0/seed3/htsr.csv") == 3
    with pytest.raises(figures.FigureDataError, match="seed<N>"):
        figures.seed_of(tmp_path / "htsr.csv")


def test_figure_layers_fall_back_to_the_data():
    assert figures.figure_layers("mnist_mlp", {"mnist_mlp": ["fc1", "fc2"]}, LAYERS) == ["fc1", "fc2"]
    assert figures.figure_layers("modadd", {"mnist_mlp": ["fc1"]}, ["embed", "unembed"]) == ["embed", "unembed"]


def write_synthetic_runs(root) -> dict[str, list]:
    """Run files of two seeds (RUN_DIR layout) and a detectors.csv, as the workflow writes them."""
    rng = np.random.default_rng(2)
    paths = {name: [] for name in ("train_log", "phases", "htsr", "progress", "traps", "spectra")}
    frames = {
        "train_log": synthetic_train_log(),
        "phases": synthetic_phases().merge(synthetic_train_log(), on=["seed", "step"]),
        "htsr": synthetic_htsr(), "progress": synthetic_progress(),
    }
    for seed in SEEDS:
        run = root / "runs" / "mnist_mlp" / "wd0.0" / f"seed{seed}"
        run.mkdir(parents=True)
        for name, frame in frames.items():
            path = run / f"{name}.csv"
            frame[frame.seed == seed].drop(columns="seed").to_csv(path, index=False)
            paths[name].append(path)
        htsr = frames["htsr"][frames["htsr"].seed == seed]
        arrays, traps = {}, []
        for row in htsr.itertuples():
            evals = marchenko_pastur_sample(rng, n=120, m=30, spike=40.0 if row.step == 2000 else 0.0)
            arrays[f"evals/{row.layer}/{row.step:09d}"] = evals
            arrays[f"rand_evals/{row.layer}/{row.step:09d}"] = evals
            above = evals[evals > row.rand_lambda_plus + 0.1][::-1]
            traps.append({"step": row.step, "layer": row.layer, "tracy_widom_scale": 1.0,
                          "rand_lambda_plus": row.rand_lambda_plus, "trap_threshold": row.rand_lambda_plus + 0.1,
                          "num_traps": len(above), "trap_eigenvalues": ";".join(f"{v:.10g}" for v in above),
                          "max_rand_eval": evals.max()})
        np.savez(run / "spectra.npz", **arrays)
        pd.DataFrame(traps).to_csv(run / "traps.csv", index=False)
        paths["spectra"].append(run / "spectra.npz")
        paths["traps"].append(run / "traps.csv")
    detectors = root / "detectors.csv"
    synthetic_detectors().to_csv(detectors, index=False)
    paths["detectors"] = detectors
    return paths


def test_figures_from_files_write_png_and_pdf(tmp_path):
    files = write_synthetic_runs(tmp_path)
    layers = {"mnist_mlp": ["fc1", "fc2"]}
    common = {"experiment": "mnist_mlp", "weight_decay": "0.0"}
    out = tmp_path / "figures"
    figures.accuracy_figure_from_files(files["train_log"], files["phases"], **common, outputs=[out / "accuracy.png", out / "accuracy.pdf"])
    figures.alpha_figure_from_files(files["htsr"], files["phases"], **common, average_layers=layers, alpha_critical=2.0, outputs=[out / "alpha.png", out / "alpha.pdf"])
    figures.progress_figure_from_files(files["progress"], files["phases"], **common, outputs=[out / "progress.png", out / "progress.pdf"])
    figures.esd_figure_from_files(files["spectra"], files["htsr"], **common, average_layers=layers, outputs=[out / "esd.png", out / "esd.pdf"])
    figures.traps_figure_from_files(files["spectra"], files["htsr"], files["traps"], files["phases"], **common, average_layers=layers, outputs=[out / "traps.png", out / "traps.pdf"])
    figures.detector_figure_from_files(files["detectors"], **common, outputs=[out / "detector.png", out / "detector.pdf"])
    panels = {"accuracy": 1, "alpha": 3, "progress": 4, "esd": 2, "traps": 2, "detector": 4}
    for name, count in panels.items():
        width, height = figures.figure_size(name, count)
        assert imread(out / f"{name}.png").shape[:2] == (round(height * figures.DPI), round(width * figures.DPI))
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_phase_edges_table(tmp_path):
    files = write_synthetic_runs(tmp_path)
    csv, html = tmp_path / "phase_edges.csv", tmp_path / "phase_edges.html"
    summary.write_phase_edges(files["phases"], csv, html)
    edges = pd.read_csv(csv)
    assert edges[["experiment", "weight_decay", "seed"]].values.tolist() == [["mnist_mlp", 0.0, 0], ["mnist_mlp", 0.0, 1]]
    assert edges["peak_step"].tolist() == [200, 500]
    assert edges["collapse_step"].isna().tolist() == [False, True]
    assert "<table" in html.read_text() and "collapse_step" in html.read_text()


def test_table_html_keeps_every_row(tmp_path):
    csv, html = tmp_path / "detectors.csv", tmp_path / "detectors.html"
    synthetic_detectors().to_csv(csv, index=False)
    summary.write_table_html(csv, html, title="detectors")
    text = html.read_text()
    assert text.count("<tr") == len(synthetic_detectors()) + 1  # the header row and one per row
