# Comparisons across experiments: the time-scale (learning rate) study and the paper's own numbers.
PAPER_TABLES = "workflow/resources/paper_tables.csv"
TIMESCALE_EXPERIMENTS = config["timescale"]["experiments"]
PAPER_EXPERIMENT = config["paper"]["experiment"]


rule timescale:
    input:
        train_logs=timescale_files("train_log.csv"),
        phases=timescale_files("phases.csv"),
        htsr=timescale_files("htsr.csv"),
        traps=timescale_files("traps.csv"),
    output:
        table_csv=f"{TABLES}/timescale.csv",
        table_md=f"{TABLES}/timescale.md",
        slope_csv=f"{TABLES}/timescale_slope.csv",
        figure_png=report(
            f"{FIGURES}/timescale_accuracy.png",
            caption="../report/timescale.rst",
            category="Time-scale study",
            labels={"figure": "accuracy per learning rate"},
        ),
        figure_pdf=f"{FIGURES}/timescale_accuracy.pdf",
    log:
        "logs/timescale/timescale.log",
    conda:
        ENV_ANALYSIS
    params:
        learning_rates={
            name: config["experiments"][name]["optimizer"]["lr"]
            for name in TIMESCALE_EXPERIMENTS
        },
        average_layers=config["htsr"]["average_layers"],
        alpha_critical=config["htsr"]["alpha_critical"],
    script:
        "../scripts/timescale.py"


rule paper_comparison:
    input:
        paper=PAPER_TABLES,
        table1=f"{TABLES}/table1_alpha.csv",
        table2=f"{TABLES}/table2_traps.csv",
        table4=f"{TABLES}/table4_mp_fit.csv",
    output:
        csv=f"{TABLES}/paper_comparison.csv",
        md=f"{TABLES}/paper_comparison.md",
    log:
        "logs/paper_comparison/paper_comparison.log",
    conda:
        ENV_ANALYSIS
    params:
        experiment=PAPER_EXPERIMENT,
        positive_weight_decay=config["paper"]["positive_weight_decay"],
        description=(
            experiment_description(PAPER_EXPERIMENT)
            if PAPER_EXPERIMENT in config["experiments"]
            else ""
        ),
    script:
        "../scripts/paper_comparison.py"


if TIMESCALE_EXPERIMENTS:
    GLOBAL_TARGETS.extend(
        [
            f"{TABLES}/timescale.csv",
            f"{TABLES}/timescale.md",
            f"{TABLES}/timescale_slope.csv",
            f"{FIGURES}/timescale_accuracy.png",
            f"{FIGURES}/timescale_accuracy.pdf",
        ]
    )
if PAPER_EXPERIMENT in config["experiments"]:
    GLOBAL_TARGETS.extend(
        [f"{TABLES}/paper_comparison.csv", f"{TABLES}/paper_comparison.md"]
    )
