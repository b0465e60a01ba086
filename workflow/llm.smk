# One large language model, analysed as one job per transformer block (antigrok.users.llm):
#   snakemake -s workflow/llm.smk --configfile configs/llm.yaml --cores 2
#   snakemake -s workflow/llm.smk --configfile configs/llm.yaml --profile profiles/slurm
# A killed or preempted job reruns only its block; the gather waits for all of them.
from snakemake.utils import min_version, validate

from antigrok.users.llm import model_parts, open_single_model

min_version("9.0")


configfile: "configs/llm.yaml"


validate(config, "schemas/llm.schema.yaml")

LLM = config["llm"]
OUT = f"results/llm/{LLM['name']}"
LOGS = f"logs/llm/{LLM['name']}"
ENV_ANALYSIS = "../envs/analysis.yaml"
# the model's parts, from its headers alone (no tensor is read here)
PARTS = model_parts(open_single_model(LLM["model"]), LLM["experts_per_job"])


wildcard_constraints:
    part=r"block\d+(_experts\d+)?|other",


localrules:
    llm_gather,
    llm_figures,


rule all:
    default_target: True
    input:
        f"{OUT}/htsr.csv",
        f"{OUT}/flagged.csv",
        f"{OUT}/alpha_by_type.png",
        f"{OUT}/traps_per_layer.png",


rule llm_part:
    input:
        LLM["model"],
    output:
        htsr=f"{OUT}/parts/{{part}}.csv",
        skipped=f"{OUT}/parts/{{part}}.skipped.csv",
    log:
        f"{LOGS}/part_{{part}}.log",
    benchmark:
        f"{LOGS}/part_{{part}}.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    threads: LLM["threads"]
    resources:
        mem_mb=LLM["mem_mb"],
        runtime=LLM["runtime"],
    params:
        experts_per_part=LLM["experts_per_job"],
        seed=LLM["seed"],
        layers=LLM["layers"],
        fix_fingers=LLM["fix_fingers"],
        engine=LLM["engine"],
    script:
        "scripts/llm_part.py"


rule llm_gather:
    input:
        model=LLM["model"],
        htsr=expand(f"{OUT}/parts/{{part}}.csv", part=PARTS),
        skipped=expand(f"{OUT}/parts/{{part}}.skipped.csv", part=PARTS),
    output:
        htsr=f"{OUT}/htsr.csv",
        skipped=f"{OUT}/skipped.csv",
        flagged=f"{OUT}/flagged.csv",
    log:
        f"{LOGS}/gather.log",
    benchmark:
        f"{LOGS}/gather.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    script:
        "scripts/llm_gather.py"


rule llm_figures:
    input:
        htsr=f"{OUT}/htsr.csv",
    output:
        alpha=report(
            f"{OUT}/alpha_by_type.png",
            caption="report/llm_alpha.rst",
            category="Large model",
        ),
        traps=report(
            f"{OUT}/traps_per_layer.png",
            caption="report/llm_traps.rst",
            category="Large model",
        ),
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{LOGS}/figures.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    params:
        name=LLM["name"],
    script:
        "scripts/llm_figures.py"
