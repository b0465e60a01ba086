from antigrok.report.figures import traps_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    traps_figure_from_files(
        spectra=list(snakemake.input.spectra),
        htsr=list(snakemake.input.htsr),
        traps=list(snakemake.input.traps),
        phases=list(snakemake.input.phases),
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        average_layers=dict(snakemake.params.average_layers),
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
