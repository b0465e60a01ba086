import torch

from antigrok.runlog import to_log_file
from antigrok.study.progress import write_progress_csv

with to_log_file(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    write_progress_csv(
        snakemake.input.checkpoints,
        snakemake.input.dataset,
        snakemake.output[0],
        dict(snakemake.params.settings),
    )
