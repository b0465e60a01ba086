rule prepare_data:
    output:
        f"{RESULTS}/data/{{experiment}}.pt",
    log:
        "logs/prepare_data/{experiment}.log",
    conda:
        ENV_TORCH
    params:
        # data.root is read by the script, not a param: moving the data reruns nothing
        dataset=dataset_identity,
    script:
        "../scripts/prepare_data.py"
