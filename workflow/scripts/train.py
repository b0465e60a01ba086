import json
from pathlib import Path

import torch

from antigrok.runlog import log_slurm_allocation, to_log_file
from antigrok.training.data import load_dataset
from antigrok.training.train import RunSpec, train_run

wc, params = snakemake.wildcards, snakemake.params
with to_log_file(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    log_slurm_allocation()
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
        cpu_engine=params.cpu_engine,
    )
