"""The spectral engine, one weight matrix at a time: ``primitives`` (layer seeds, the
Marchenko-Pastur law, WeightWatcher's rescaling and Tracy-Widom term, the spectra.npz and htsr.csv
files, the alpha averaged over layers), ``kernels`` (convolution kernels as WeightWatcher reads
them), ``fast_engine`` (the fast HTSR engine, htsr.engine: fast), ``ww_engine`` (WeightWatcher
itself, htsr.engine: weightwatcher) and ``traps`` (Correlation Traps from the stored spectra).

Imports: the foundations only. antigrok.htsr runs these engines over checkpoints and state dicts.
"""
