# Comparative progress measures (paper Appendix B, Eqs. 7-10) of every checkpoint of a run.
# The settings are params, so changing one reruns only this rule and what follows it.


rule progress:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        f"{RUN_DIR}/progress.csv",
    log:
        "logs/progress/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/progress/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    threads: 1
    params:
        settings=config["progress"],
    script:
        "../scripts/progress.py"


RUN_TARGETS.append("progress.csv")
