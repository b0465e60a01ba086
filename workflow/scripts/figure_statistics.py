from antigrok.report.statistic_figures import write_statistic_figures
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_statistic_figures(
        snakemake.input.htsr,
        snakemake.input.traps,
        snakemake.input.progress,
        snakemake.input.phases,
        snakemake.wildcards.experiment,
        snakemake.params.statistics,
        snakemake.output,
        snakemake.params.description,
    )
