rule prepare_data:
    output:
        f"{RESULTS}/data/{{experiment}}.pt",
    params:
        dataset=lambda wc: experiment_config(wc)["dataset"],
        data=config["data"],
    log:
        "logs/prepare_data/{experiment}.log",
    conda:
        ENV_TORCH
    script:
        "../scripts/prepare_data.py"
