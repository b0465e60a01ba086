# Figures (paper Figs. 1-7 and the detector's lead times), one set per experiment and weight
# decay, and the tables as HTML; each wrapped in report() for `snakemake --report report.html`.
FIGURES = f"{RESULTS}/figures"
FIGURE_NAMES = ["accuracy", "alpha", "progress", "esd", "traps", "detector"]
REPORT_TABLES = [
    "table1_alpha",
    "table2_traps",
    "table4_mp_fit",
    "detectors",
    "detector_summary",
]
# Report labels of every figure; figure files are {name}_{experiment}_wd{weight_decay}.png/.pdf.
FIGURE_SUBCATEGORY = "{experiment}, weight decay {weight_decay}"
FIGURE_LABELS = {"experiment": "{experiment}", "weight decay": "{weight_decay}"}


wildcard_constraints:
    table="|".join(REPORT_TABLES),


rule figure_accuracy:
    input:
        train_logs=seed_files("train_log.csv"),
        phases=seed_files("phases.csv"),
    output:
        png=report(
            f"{FIGURES}/accuracy_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/accuracy.rst",
            category="Training",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "accuracy (Fig. 1)", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/accuracy_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_accuracy/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/figure_accuracy.py"


rule figure_alpha:
    input:
        htsr=seed_files("htsr.csv"),
        phases=seed_files("phases.csv"),
    output:
        png=report(
            f"{FIGURES}/alpha_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/alpha.rst",
            category="HTSR alpha",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "alpha (Fig. 4, Fig. 6)", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/alpha_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_alpha/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    params:
        average_layers=config["htsr"]["average_layers"],
        alpha_critical=config["htsr"]["alpha_critical"],
    script:
        "../scripts/figure_alpha.py"


rule figure_progress:
    input:
        progress=seed_files("progress.csv"),
        phases=seed_files("phases.csv"),
    output:
        png=report(
            f"{FIGURES}/progress_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/progress.rst",
            category="Progress measures",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "progress measures (Fig. 5, Fig. 7)", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/progress_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_progress/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/figure_progress.py"


rule figure_esd:
    input:
        spectra=seed_files("spectra.npz"),
        htsr=seed_files("htsr.csv"),
    output:
        png=report(
            f"{FIGURES}/esd_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/esd.rst",
            category="HTSR alpha",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "ESD, power-law and MP fits (Fig. 2)", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/esd_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_esd/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    params:
        average_layers=config["htsr"]["average_layers"],
    script:
        "../scripts/figure_esd.py"


rule figure_traps:
    input:
        spectra=seed_files("spectra.npz"),
        htsr=seed_files("htsr.csv"),
        traps=seed_files("traps.csv"),
        phases=seed_files("phases.csv"),
    output:
        png=report(
            f"{FIGURES}/traps_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/traps.rst",
            category="Correlation Traps",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "Correlation Trap examples (Fig. 3)", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/traps_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_traps/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    params:
        average_layers=config["htsr"]["average_layers"],
    script:
        "../scripts/figure_traps.py"


rule figure_detector:
    input:
        detectors=f"{RESULTS}/tables/detectors.csv",
    output:
        png=report(
            f"{FIGURES}/detector_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/detector.rst",
            category="Detector",
            subcategory=FIGURE_SUBCATEGORY,
            labels={"figure": "alarm lead times", **FIGURE_LABELS},
        ),
        pdf=f"{FIGURES}/detector_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_detector/{experiment}/wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/figure_detector.py"


# The tables as HTML pages: the report shows HTML inline but a CSV only as a download.
rule report_table:
    input:
        f"{RESULTS}/tables/{{table}}.csv",
    output:
        report(
            f"{RESULTS}/tables/{{table}}.html",
            caption="../report/tables.rst",
            subcategory="Tables",
            category=lambda wc: (
                "Detector" if wc.table.startswith("detector") else "Phases and tables"
            ),
            labels={"table": "{table}"},
        ),
    log:
        "logs/report_table/{table}.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/report_table.py"


rule phase_edges:
    input:
        phases=run_files("phases.csv"),
    output:
        csv=f"{RESULTS}/tables/phase_edges.csv",
        md=f"{RESULTS}/tables/phase_edges.md",
        html=report(
            f"{RESULTS}/tables/phase_edges.html",
            caption="../report/phase_edges.rst",
            category="Phases and tables",
            subcategory="Tables",
            labels={"table": "phase_edges"},
        ),
    log:
        "logs/phase_edges/phase_edges.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/phase_edges.py"


GLOBAL_TARGETS.extend(
    [
        f"{FIGURES}/{name}_{experiment}_wd{weight_decay}.{ext}"
        for experiment, weight_decay in sorted({run[:2] for run in runs()})
        for name in FIGURE_NAMES
        for ext in ("png", "pdf")
    ]
    + [f"{RESULTS}/tables/{table}.html" for table in REPORT_TABLES]
    + [f"{RESULTS}/tables/phase_edges.{ext}" for ext in ("csv", "md", "html")]
)


# One figure per statistic that the warning rules read: weight decays side by side across seeds.
RULE_STATISTICS = sorted(
    {
        entry["statistic"]
        for entry in config["warning_rules"]["rules"]
        if entry.get("statistic")
    }
)


rule figure_statistics:
    input:
        htsr=lambda w: experiment_run_files(w.experiment, "htsr.csv"),
        traps=lambda w: experiment_run_files(w.experiment, "traps.csv"),
        progress=lambda w: experiment_run_files(w.experiment, "progress.csv"),
        phases=lambda w: experiment_run_files(w.experiment, "phases.csv"),
    output:
        [
            report(
                f"{FIGURES}/statistic_{statistic}_{{experiment}}.png",
                caption="../report/statistics.rst",
                category="Warning rules",
                subcategory="{experiment}",
                labels={"statistic": statistic, "experiment": "{experiment}"},
            )
            for statistic in RULE_STATISTICS
        ],
    log:
        "logs/figure_statistics/{experiment}.log",
    conda:
        ENV_ANALYSIS
    params:
        statistics=RULE_STATISTICS,
        description=lambda w: experiment_description(w.experiment),
    script:
        "../scripts/figure_statistics.py"


if RULE_STATISTICS:
    GLOBAL_TARGETS.extend(
        expand(
            f"{FIGURES}/statistic_{{statistic}}_{{experiment}}.png",
            statistic=RULE_STATISTICS,
            experiment=list(config["experiments"]),
        )
    )
