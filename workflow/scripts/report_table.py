from antigrok.runlog import to_log_file
from antigrok.study.tables import write_table_html

with to_log_file(snakemake.log[0]):
    write_table_html(snakemake.input[0], snakemake.output[0], title=snakemake.wildcards.table)
