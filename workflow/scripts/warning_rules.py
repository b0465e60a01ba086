from antigrok.runlog import to_log_file
from antigrok.study.warning_rules import write_rule_tables

with to_log_file(snakemake.log[0]):
    write_rule_tables(
        snakemake.input.htsr,
        snakemake.input.traps,
        snakemake.input.progress,
        snakemake.input.phases,
        dict(snakemake.output.items()),
        snakemake.params.rules,
        snakemake.params.descriptions,
    )
