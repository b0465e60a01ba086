# Phases per run, the paper's tables across seeds, and the early-warning detector table.
TABLES = f"{RESULTS}/tables"


rule phases:
    input:
        train_log=f"{RUN_DIR}/train_log.csv",
    output:
        phases=f"{RUN_DIR}/phases.csv",
    log:
        "logs/phases/{experiment}/wd{weight_decay}/seed{seed}.log",
    conda:
        ENV_ANALYSIS
    params:
        thresholds=config["phases"],
    script:
        "../scripts/phases.py"


rule tables:
    input:
        htsr=run_files("htsr.csv"),
        traps=run_files("traps.csv"),
        phases=run_files("phases.csv"),
    output:
        table1_csv=f"{TABLES}/table1_alpha.csv",
        table1_md=f"{TABLES}/table1_alpha.md",
        table2_csv=f"{TABLES}/table2_traps.csv",
        table2_md=f"{TABLES}/table2_traps.md",
        table4_csv=f"{TABLES}/table4_mp_fit.csv",
        table4_md=f"{TABLES}/table4_mp_fit.md",
    log:
        "logs/tables/tables.log",
    benchmark:
        "logs/tables/tables.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    params:
        average_layers=config["htsr"]["average_layers"],
        experiments=list(config["experiments"]),
        descriptions={
            name: experiment_description(name) for name in config["experiments"]
        },
    script:
        "../scripts/tables.py"


rule detectors:
    input:
        htsr=run_files("htsr.csv"),
        traps=run_files("traps.csv"),
        progress=run_files("progress.csv"),
        phases=run_files("phases.csv"),
    output:
        detectors_csv=f"{TABLES}/detectors.csv",
        summary_csv=f"{TABLES}/detector_summary.csv",
        summary_md=f"{TABLES}/detector_summary.md",
    log:
        "logs/detectors/detectors.log",
    benchmark:
        "logs/detectors/detectors.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    params:
        average_layers=config["htsr"]["average_layers"],
        alpha_critical=config["htsr"]["alpha_critical"],
        detector=config["detector"],
    script:
        "../scripts/detectors.py"


RUN_TARGETS.append("phases.csv")
GLOBAL_TARGETS.extend(
    [
        f"{TABLES}/{name}.{ext}"
        for name in (
            "table1_alpha",
            "table2_traps",
            "table4_mp_fit",
            "detector_summary",
        )
        for ext in ("csv", "md")
    ]
    + [f"{TABLES}/detectors.csv"]
)


# Candidate early-warning rules (warning_rules.rules), each run scored by its own outcome.
rule warning_rules:
    input:
        htsr=run_files("htsr.csv"),
        traps=run_files("traps.csv"),
        progress=run_files("progress.csv"),
        phases=run_files("phases.csv"),
    output:
        runs_csv=f"{TABLES}/warning_rules.csv",
        summary_csv=f"{TABLES}/warning_rules_summary.csv",
        summary_md=f"{TABLES}/warning_rules_summary.md",
    log:
        "logs/warning_rules/warning_rules.log",
    benchmark:
        "logs/warning_rules/warning_rules.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    params:
        rules=config["warning_rules"]["rules"],
        descriptions={
            name: experiment_description(name) for name in config["experiments"]
        },
    script:
        "../scripts/warning_rules.py"


if config["warning_rules"]["rules"]:
    GLOBAL_TARGETS.extend(
        [
            f"{TABLES}/warning_rules.csv",
            f"{TABLES}/warning_rules_summary.csv",
            f"{TABLES}/warning_rules_summary.md",
        ]
    )
