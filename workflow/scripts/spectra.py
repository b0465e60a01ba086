from antigrok.htsr import write_spectra
from antigrok.runlog import to_log_file

with to_log_file(snakemake.log[0]):
    write_spectra(
        snakemake.input.checkpoints,
        snakemake.output.htsr,
        snakemake.output.spectra,
        run_seed=int(snakemake.wildcards.seed),
        fix_fingers=snakemake.params.fix_fingers,
        engine=snakemake.params.engine,
        threads=snakemake.threads,
    )
