from antigrok.report.figures import detector_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    detector_figure_from_files(
        detectors=snakemake.input.detectors,
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
