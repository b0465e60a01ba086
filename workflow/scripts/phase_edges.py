from antigrok.runlog import to_log_file
from antigrok.study.tables import write_phase_edges

with to_log_file(snakemake.log[0]):
    write_phase_edges(list(snakemake.input.phases), snakemake.output.csv, snakemake.output.html, snakemake.output.md)
