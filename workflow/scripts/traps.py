from antigrok.runlog import to_log_file
from antigrok.spectra.traps import write_traps

with to_log_file(snakemake.log[0]):
    write_traps(
        snakemake.input.htsr,
        snakemake.input.spectra,
        snakemake.output[0],
        tracy_widom_scale=snakemake.params.tracy_widom_scale,
    )
