import json
from pathlib import Path

import torch

from antigrok.runlog import log_slurm_allocation, to_log_file
from antigrok.runs import parse_run_dir
from antigrok.training.batched import train_runs
from antigrok.training.data import load_dataset
from antigrok.training.train import RunSpec


def seeds_of(train_logs):
    """The group's seeds, from its outputs (a seed is no param: adding one reruns nothing else)."""
    return [parse_run_dir(path)[2] for path in train_logs]


wc, params = snakemake.wildcards, snakemake.params
with to_log_file(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    log_slurm_allocation()
    experiment_cfg = json.loads(params.experiment)
    specs = [
        RunSpec(
            experiment=params.experiment_name,
            experiment_cfg=experiment_cfg,
            weight_decay=float(wc.weight_decay),
            seed=int(seed),
            checkpoint_per_decade=params.checkpoint_per_decade,
            log_per_decade=params.log_per_decade,
        )
        for seed in seeds_of(snakemake.output.train_logs)
    ]
    train_runs(
        specs,
        load_dataset(snakemake.input.dataset),
        [Path(path).parent for path in snakemake.output.train_logs],
        device=params.device,
        resume_every_s=params.resume_every_s,
    )
