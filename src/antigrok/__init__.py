"""antigrok: see from the weights alone that a network is losing its generalization.

Modules, one concept each: data, models, train, htsr, traps, progress, phases, summary,
figures, cli. The Snakemake rules under workflow/ call plain functions of these modules.
"""

__version__ = "0.1.0"
