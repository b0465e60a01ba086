from antigrok.runlog import to_log_file
from antigrok.users.llm import write_figures

with to_log_file(snakemake.log[0]):
    write_figures(
        snakemake.input.htsr,
        snakemake.output.alpha,
        snakemake.output.traps,
        snakemake.params.name,
    )
