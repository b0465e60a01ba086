from antigrok.runlog import to_log_file
from antigrok.study.paper import write_paper_comparison

params, inputs = snakemake.params, snakemake.input
with to_log_file(snakemake.log[0]):
    write_paper_comparison(
        inputs.paper,
        {"table1": inputs.table1, "table2": inputs.table2, "table4": inputs.table4},
        params.experiment,
        params.positive_weight_decay,
        params.description,
        snakemake.output.csv,
        snakemake.output.md,
    )
