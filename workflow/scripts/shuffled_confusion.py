from antigrok.mechanism.confusion import write_confusion
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_confusion(
        snakemake.input.checkpoints,
        snakemake.input.phases,
        snakemake.input.dataset,
        snakemake.output[0],
        edges=list(snakemake.params.edges),
        seed=snakemake.params.seed,
    )
