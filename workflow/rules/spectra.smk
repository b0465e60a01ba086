# HTSR spectral analysis of every checkpoint of a run (paper Sec. 3.1): WeightWatcher's alpha and
# the randomized ESD with its MP fit, per (step, layer) in htsr.csv; the eigenvalues in spectra.npz
# so that traps, tables and figures never redo an SVD.


rule spectra:
    input:
        checkpoints=f"{RUN_DIR}/checkpoints",
    output:
        htsr=f"{RUN_DIR}/htsr.csv",
        spectra=f"{RUN_DIR}/spectra.npz",
    log:
        "logs/spectra/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/spectra/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_ANALYSIS
    threads: config["htsr"]["threads"]
    params:
        fix_fingers=config["htsr"]["fix_fingers"],
        engine=config["htsr"]["engine"],
    script:
        "../scripts/spectra.py"


RUN_TARGETS.append("htsr.csv")
