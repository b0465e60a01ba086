from antigrok.runlog import to_log_file
from antigrok.users.llm import write_part

with to_log_file(snakemake.log[0]):
    write_part(
        snakemake.input[0],
        snakemake.wildcards.part,
        snakemake.output.htsr,
        snakemake.output.skipped,
        experts_per_part=snakemake.params.experts_per_part,
        seed=snakemake.params.seed,
        layers=snakemake.params.layers,
        fix_fingers=snakemake.params.fix_fingers,
        engine=snakemake.params.engine,
        threads=snakemake.threads,
    )
