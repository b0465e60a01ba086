from antigrok.runlog import to_log_file
from antigrok.study.tables import write_paper_tables

with to_log_file(snakemake.log[0]):
    write_paper_tables(
        snakemake.input.htsr,
        snakemake.input.traps,
        snakemake.input.phases,
        dict(snakemake.output.items()),
        snakemake.params.average_layers,
        snakemake.params.experiments,
        snakemake.params.descriptions,
    )
