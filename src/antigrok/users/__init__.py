"""The diagnostic on users' own models: ``analyze`` (any model file or folder to htsr rows),
and ``llm`` (large language model checkpoints, layer by layer), which the ``antigrok`` command
(antigrok.cli) runs. The public entry points are antigrok.htsr.analyze_state_dict, the
``antigrok`` command and antigrok.monitor (docs/own-models.md, docs/monitor.md).

Imports: the foundations, antigrok.formats, antigrok.spectra and antigrok.htsr.
"""
