from antigrok.mechanism.removal import RemovalSettings, write_removal
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_removal(
        snakemake.input.checkpoints,
        snakemake.input.phases,
        snakemake.input.dataset,
        snakemake.output[0],
        run_seed=int(snakemake.wildcards.seed),
        settings=RemovalSettings.from_config(snakemake.params.mechanism, snakemake.params.tracy_widom_scale),
    )
