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
        cpu_engine=config["train"]["cpu_engine"],
    script:
        "../scripts/train.py"


# train.batch_runs: true trains the seeds of one (experiment, weight decay) in one job with the
# batched engine (antigrok.training.batched), for the experiments it supports (MLP, MSE loss:
# antigrok.workflow_config.batched_unsupported_reason); their per-run outputs then come from that
# job. Other experiments keep one `train` job per run.
BATCHED_EXPERIMENTS = [
    name
    for name, settings in config["experiments"].items()
    if config["train"]["batch_runs"] and batched_unsupported_reason(settings) is None
]

for _experiment in BATCHED_EXPERIMENTS:
    _seeds = config["experiments"][_experiment]["seeds"]
    _group_dir = f"{RESULTS}/runs/{_experiment}/wd{{weight_decay}}"

    rule:
        name:
            f"train_batched_{_experiment}"
        input:
            dataset=f"{RESULTS}/data/{_experiment}.pt",
        output:
            checkpoints=directory(
                expand(
                    f"{_group_dir}/seed{{seed}}/checkpoints",
                    seed=_seeds,
                    allow_missing=True,
                )
            ),
            train_logs=expand(
                f"{_group_dir}/seed{{seed}}/train_log.csv",
                seed=_seeds,
                allow_missing=True,
            ),
        log:
            f"logs/train_batched/{_experiment}/wd{{weight_decay}}.log",
        benchmark:
            f"logs/train_batched/{_experiment}/wd{{weight_decay}}.benchmark.tsv"
        conda:
            ENV_TORCH
        threads: config["train"]["threads"]
        resources:
            gpu=1 if training_uses_cuda() else 0,
        params:
            experiment_name=_experiment,
            # run_settings, as the train rule: the lists of runs are no param, so adding a
            # weight decay to the config reruns no group that already finished.
            experiment=json.dumps(
                run_settings(config["experiments"][_experiment]), sort_keys=True
            ),
            checkpoint_per_decade=config["checkpoints"]["per_decade"],
            log_per_decade=config["log"]["per_decade"],
            device=config["train"]["device"],
            resume_every_s=config["train"]["resume_every_s"],
        script:
            "../scripts/train_batched.py"

    # Both rules could make these runs' files: the batched job does.
    workflow.ruleorder(f"train_batched_{_experiment}", "train")
