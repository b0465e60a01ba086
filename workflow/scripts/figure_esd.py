from antigrok.report.figures import esd_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    esd_figure_from_files(
        spectra=list(snakemake.input.spectra),
        htsr=list(snakemake.input.htsr),
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        average_layers=dict(snakemake.params.average_layers),
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
