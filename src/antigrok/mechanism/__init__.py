"""Does a Correlation Trap cause the collapse? The 2026 follow-up's mechanism, measured (issue 26).

One concept per module:

- ``checkpoints``: which checkpoint stands for each phase edge, and the model it holds.
- ``prototypes``: top singular vectors of fc1 (fc2, fc3 back-projected) as images, and their
  correlation with the class-mean images.
- ``trap_components``: the singular components of the shuffled W_rand (WeightWatcher's shuffle),
  which of them are traps, and each component mapped back to W's coordinates.
- ``largest_weight``: the follow-up's theorem quantity max|W_pq| / sqrt(N) / (sigma (1 + sqrt(gamma)))
  beside the trap count, and whether the trap's eigenvector sits on that entry.
- ``removal``: the causal test: remove the traps (or replace them by a random direction of equal
  norm, or remove non-trap components as a control) and measure accuracy and the JS divergence
  of the outputs on Gaussian probe inputs; with the arms that tell traps from the mean:
- ``mean_component``: the entries' mean as a component of W, and a removal compensated through the bias.
- ``centred_traps``: the traps of W_rand with the mean taken out, as components of W.
- ``input_matched``: controls of the same norm that the train inputs load as strongly.
- ``confusion``: the test images with a fixed pixel permutation through a checkpoint.
- ``tables`` and ``figures``: across runs.

Imports: every layer below it (the foundations, antigrok.formats, antigrok.spectra,
antigrok.training, antigrok.study, antigrok.report).
"""
