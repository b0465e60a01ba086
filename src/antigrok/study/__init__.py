"""The study of the runs: ``phases`` (phase edges), ``progress`` (the comparative progress
measures), ``detector`` (the early-warning alarms and their outcomes), ``warning_rules`` and
``rule_worth`` (candidate rules scored run by run; what the studies measured them to be worth),
``tables`` (the paper's tables, the phase-edges table), ``paper`` (the comparison with the
paper's numbers), ``timescale``, ``centred_trap_counts``, ``outcome_continuum``,
``search_outcome`` (post hoc readings of the studies), ``long_runs`` (runs longer than a job)
and ``rescaled_comparison`` (the long runs beside the time-rescaled runs at equal lr x step).

Imports: the foundations, antigrok.formats, antigrok.spectra, antigrok.htsr and antigrok.training.
"""
