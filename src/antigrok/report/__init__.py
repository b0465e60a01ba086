"""What the study shows: ``figures`` (the paper's figures and the detector's), ``statistic_figures``
(the warning rules' statistics across seeds) and ``long_run_report`` (the long runs' figures and
tables from their reference folder alone).

Imports: the foundations, antigrok.formats, antigrok.spectra, antigrok.htsr, antigrok.training
and antigrok.study.
"""
