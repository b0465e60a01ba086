from antigrok.mechanism.largest_weight import write_largest_weight
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_largest_weight(
        snakemake.input.checkpoints,
        snakemake.output[0],
        run_seed=int(snakemake.wildcards.seed),
        tracy_widom_scale=snakemake.params.tracy_widom_scale,
    )
