import json
import logging
import os
from pathlib import Path

import torch

from antigrok.data import load_dataset
from antigrok.runlog import to_log_file
from antigrok.train import RunSpec, train_run

wc, params = snakemake.wildcards, snakemake.params
with to_log_file(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    if "SLURM_JOB_ID" in os.environ:  # which allocation and GPU ran this run, on a cluster
        logging.getLogger("antigrok").info(
            "SLURM_JOB_ID=%s CUDA_VISIBLE_DEVICES=%s",
            os.environ["SLURM_JOB_ID"],
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
    spec = RunSpec(
        experiment=wc.experiment,
        experiment_cfg=json.loads(params.experiment),
        weight_decay=float(wc.weight_decay),
        seed=int(wc.seed),
        checkpoint_per_decade=params.checkpoint_per_decade,
        log_per_decade=params.log_per_decade,
    )
    train_run(
        spec,
        load_dataset(snakemake.input.dataset),
        Path(snakemake.output.train_log).parent,
        device=params.device,
        resume_every_s=params.resume_every_s,
    )
