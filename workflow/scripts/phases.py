from antigrok.runlog import to_log_file
from antigrok.study.phases import PhaseThresholds, write_phases

params = snakemake.params
with to_log_file(snakemake.log[0]):
    write_phases(
        snakemake.input.train_log,
        snakemake.output.phases,
        PhaseThresholds(**params.thresholds),
    )
