from antigrok.report.figures import alpha_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    alpha_figure_from_files(
        htsr=list(snakemake.input.htsr),
        phases=list(snakemake.input.phases),
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        average_layers=dict(snakemake.params.average_layers),
        alpha_critical=float(snakemake.params.alpha_critical),
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
