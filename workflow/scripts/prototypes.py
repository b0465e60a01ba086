from antigrok.mechanism.prototypes import write_prototypes
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_prototypes(
        snakemake.input.checkpoints,
        snakemake.input.phases,
        snakemake.input.dataset,
        snakemake.output[0],
        edges=list(snakemake.params.edges),
        components=snakemake.params.components,
        rows=snakemake.params.rows,
    )
