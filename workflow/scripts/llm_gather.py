from antigrok.runlog import to_log_file
from antigrok.users.llm import write_gathered

with to_log_file(snakemake.log[0]):
    write_gathered(
        snakemake.input.model,
        list(snakemake.input.htsr),
        list(snakemake.input.skipped),
        snakemake.output.htsr,
        snakemake.output.skipped,
        snakemake.output.flagged,
    )
