from antigrok.mechanism.tables import write_mechanism_tables
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_mechanism_tables(
        prototypes=list(snakemake.input.prototypes),
        largest_weight=list(snakemake.input.largest_weight),
        trap_removal=list(snakemake.input.trap_removal),
        shuffled_confusion=list(snakemake.input.shuffled_confusion),
        phases=list(snakemake.input.phases),
        outputs=dict(snakemake.output.items()),
        descriptions=dict(snakemake.params.descriptions),
    )
