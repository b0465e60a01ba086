rule train:
    input:
        dataset=f"{RESULTS}/data/{{experiment}}.pt",
    output:
        checkpoints=directory(f"{RUN_DIR}/checkpoints"),
        train_log=f"{RUN_DIR}/train_log.csv",
    log:
        "logs/train/{experiment}/wd{weight_decay}/seed{seed}.log",
    benchmark:
        "logs/train/{experiment}/wd{weight_decay}/seed{seed}.benchmark.tsv"
    conda:
        ENV_TORCH
    threads: config["train"]["threads"]
    resources:
        gpu=1 if training_uses_cuda() else 0,
    params:
        experiment=experiment_json,
        checkpoint_per_decade=config["checkpoints"]["per_decade"],
        log_per_decade=config["log"]["per_decade"],
        device=config["train"]["device"],
        resume_every_s=config["train"]["resume_every_s"],
    script:
        "../scripts/train.py"
