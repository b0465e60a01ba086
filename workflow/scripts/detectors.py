from antigrok.runlog import to_log_file
from antigrok.study.detector import write_detector_tables

with to_log_file(snakemake.log[0]):
    write_detector_tables(
        snakemake.input.htsr,
        snakemake.input.traps,
        snakemake.input.progress,
        snakemake.input.phases,
        dict(snakemake.output.items()),
        snakemake.params.average_layers,
        snakemake.params.alpha_critical,
        snakemake.params.detector,
    )
