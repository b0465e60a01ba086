from antigrok.phases import PhaseThresholds, write_phases
from antigrok.runlog import to_log_file

params = snakemake.params
with to_log_file(snakemake.log[0]):
    write_phases(
        snakemake.input.train_log,
        snakemake.output.phases,
        PhaseThresholds(
            train_fit=params.train_fit,
            collapse_drop=params.collapse_drop,
            smoothing_window=params.smoothing_window,
            grok_rise=params.grok_rise,
            grok_onset=params.grok_onset,
            collapse_onset=params.collapse_onset,
        ),
    )
