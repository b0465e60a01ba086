rule prepare_data:
    output:
        f"{RESULTS}/data/{{experiment}}.pt",
    log:
        "logs/prepare_data/{experiment}.log",
    conda:
        ENV_TORCH
    params:
        dataset=lambda wc: experiment_config(wc)["dataset"],
        data=config["data"],
    script:
        "../scripts/prepare_data.py"
