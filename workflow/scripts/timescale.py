from antigrok.runlog import to_log_file
from antigrok.study.timescale import write_timescale

params = snakemake.params
with to_log_file(snakemake.log[0]):
    write_timescale(
        snakemake.input.train_logs,
        snakemake.input.phases,
        snakemake.input.htsr,
        snakemake.input.traps,
        dict(params.learning_rates),
        params.average_layers,
        params.alpha_critical,
        dict(snakemake.output.items()),
    )
