# Correlation Traps (paper Sec. 3.2, 4.2) from the stored randomized spectra: no SVD, so changing
# traps.tracy_widom_scale reruns only this rule and what follows it.


rule traps:
    input:
        htsr=f"{RUN_DIR}/htsr.csv",
        spectra=f"{RUN_DIR}/spectra.npz",
    output:
        f"{RUN_DIR}/traps.csv",
    log:
        "logs/traps/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/traps/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    params:
        tracy_widom_scale=config["traps"]["tracy_widom_scale"],
    script:
        "../scripts/traps.py"


RUN_TARGETS.append("traps.csv")
