from antigrok.report.figures import progress_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    progress_figure_from_files(
        progress=list(snakemake.input.progress),
        phases=list(snakemake.input.phases),
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
