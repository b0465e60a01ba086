from antigrok.report.figures import accuracy_figure_from_files
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    accuracy_figure_from_files(
        train_logs=list(snakemake.input.train_logs),
        phases=list(snakemake.input.phases),
        experiment=snakemake.wildcards.experiment,
        weight_decay=snakemake.wildcards.weight_decay,
        outputs=[snakemake.output.png, snakemake.output.pdf],
    )
