"""antigrok: see from the weights alone that a network is losing its generalization.

The package, lowest layer first; a module imports only from its own layer and the ones listed
before it (tests/test_imports.py checks the order, tests/lint_imports.py that every name comes
from the module that defines it):

    files, schema, runs,      the foundations: atomic writes, the config's defaults (the schema),
    runlog, table_format,     the run-folder layout, the rule scripts' logs, numbers and tables as
    workflow_config           text, the config as the Snakefile builds it
    formats/                  reading weights from files (checkpoints, safetensors, Hugging Face
                              folders, MXFP4 experts, TorchScript) without unpickling code
    spectra/                  the HTSR primitives, the fast and WeightWatcher engines, the traps
    htsr                      the per-checkpoint analysis; antigrok.htsr.analyze_state_dict (public)
    training/                 models, data sets, the step engines, schedule, resume, the loop
    study/                    the study: phases, detector, warning rules, progress measures, the
                              paper's tables and comparisons, the long runs
    report/                   figures and the long runs' report
    mechanism/                does a trap cause the collapse (issue 26)
    users/                    users' models: any model file or folder, LLM checkpoints
    cli                       the ``antigrok`` command: ``antigrok analyze PATH... [-o OUT.csv]`` (public)
    monitor/                  the live monitor and its Lightning / Hugging Face adapters (public)

The Snakemake rules under workflow/ call plain functions of these modules.
"""

__version__ = "0.1.0"
