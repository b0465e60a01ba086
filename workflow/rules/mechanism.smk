# Do traps cause the collapse? (issue 26; antigrok.mechanism): per MNIST MLP run, the prototypes,
# traps against the largest weight, trap removal and pixel-shuffled confusion; then the tables
# across runs and one figure of each per experiment and weight decay. Every threshold is a param.
rule prototypes:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
        phases=f"{RUN_DIR}/phases.csv",
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        f"{RUN_DIR}/prototypes.csv",
    log:
        "logs/prototypes/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/prototypes/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    params:
        edges=MECHANISM["edges"],
        components=MECHANISM["prototype_components"],
        rows=MECHANISM["prototype_rows"],
    script:
        "../scripts/prototypes.py"


rule largest_weight:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
    output:
        f"{RUN_DIR}/largest_weight.csv",
    log:
        "logs/largest_weight/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/largest_weight/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    params:
        tracy_widom_scale=config["traps"]["tracy_widom_scale"],
    script:
        "../scripts/largest_weight.py"


rule trap_removal:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
        phases=f"{RUN_DIR}/phases.csv",
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        f"{RUN_DIR}/trap_removal.csv",
    log:
        "logs/trap_removal/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/trap_removal/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    params:
        mechanism={key: MECHANISM[key] for key in REMOVAL_KEYS},
        tracy_widom_scale=config["traps"]["tracy_widom_scale"],
    script:
        "../scripts/trap_removal.py"


rule shuffled_confusion:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
        phases=f"{RUN_DIR}/phases.csv",
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        f"{RUN_DIR}/shuffled_confusion.csv",
    log:
        "logs/shuffled_confusion/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/shuffled_confusion/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    params:
        edges=MECHANISM["edges"],
        seed=MECHANISM["pixel_permutation_seed"],
    script:
        "../scripts/shuffled_confusion.py"


rule mechanism_tables:
    input:
        prototypes=mechanism_files("prototypes.csv"),
        largest_weight=mechanism_files("largest_weight.csv"),
        trap_removal=mechanism_files("trap_removal.csv"),
        shuffled_confusion=mechanism_files("shuffled_confusion.csv"),
        phases=mechanism_files("phases.csv"),
    output:
        prototypes=f"{RESULTS}/tables/mechanism_prototypes.csv",
        bound=f"{RESULTS}/tables/mechanism_bound.csv",
        removal=f"{RESULTS}/tables/mechanism_removal.csv",
        confusion=f"{RESULTS}/tables/mechanism_confusion.csv",
        html=report(
            f"{RESULTS}/tables/mechanism.html",
            caption="../report/mechanism_tables.rst",
            category="Mechanism",
            subcategory="Tables",
            labels={"table": "mechanism"},
        ),
    log:
        "logs/mechanism_tables/mechanism_tables.log",
    conda:
        ENV_ANALYSIS
    params:
        descriptions=lambda wildcards: {
            name: experiment_description(name) for name in mechanism_experiments()
        },
    script:
        "../scripts/mechanism_tables.py"


MECHANISM_FIGURES = {
    "prototypes": "prototypes (singular vectors as images)",
    "largest_weight": "traps against the largest weight",
    "trap_removal": "removing traps",
    "shuffled_confusion": "pixel-shuffled confusion",
}


wildcard_constraints:
    mechanism_figure="|".join(MECHANISM_FIGURES),


rule figure_mechanism:
    input:
        runs=lambda wildcards: seed_files(f"{wildcards.mechanism_figure}.csv")(
            wildcards
        ),
        phases=seed_files("phases.csv"),
        checkpoints=seed_files("checkpoints"),
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        png=report(
            f"{FIGURES}/{{mechanism_figure}}_{{experiment}}_wd{{weight_decay}}.png",
            caption="../report/mechanism.rst",
            category="Mechanism",
            subcategory=FIGURE_SUBCATEGORY,
            labels=lambda wildcards: {
                "figure": MECHANISM_FIGURES[wildcards.mechanism_figure],
                "experiment": wildcards.experiment,
                "weight decay": wildcards.weight_decay,
            },
        ),
        pdf=f"{FIGURES}/{{mechanism_figure}}_{{experiment}}_wd{{weight_decay}}.pdf",
    log:
        "logs/figure_mechanism/{mechanism_figure}_{experiment}_wd{weight_decay}.log",
    conda:
        ENV_ANALYSIS
    params:
        description=mechanism_caption_params,
        edges=MECHANISM["edges"],
        components=MECHANISM["prototype_components"],
    script:
        "../scripts/figure_mechanism.py"


RUN_TARGETS_MECHANISM = [
    "prototypes.csv",
    "largest_weight.csv",
    "trap_removal.csv",
    "shuffled_confusion.csv",
]
GLOBAL_TARGETS.extend(
    [path for name in RUN_TARGETS_MECHANISM for path in mechanism_files(name)]
    + (
        [
            f"{RESULTS}/tables/mechanism.html",
        ]
        + [
            f"{FIGURES}/{figure}_{experiment}_wd{weight_decay}.{ext}"
            for experiment, weight_decay in sorted(
                {run[:2] for run in runs() if run[0] in mechanism_experiments()}
            )
            for figure in MECHANISM_FIGURES
            for ext in ("png", "pdf")
        ]
        if mechanism_experiments()
        else []
    )
)
