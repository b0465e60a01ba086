from antigrok.mechanism.figures import mechanism_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    mechanism_figure_from_files(
        figure=snakemake.wildcards.mechanism_figure,
        runs=list(snakemake.input.runs),
        phases=list(snakemake.input.phases),
        checkpoints=list(snakemake.input.checkpoints),
        edges=list(snakemake.params.edges),
        components=snakemake.params.components,
        dataset=snakemake.input.dataset,
        description=snakemake.params.description,
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
