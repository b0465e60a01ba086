"""Training one run: ``models`` and ``data`` (MNIST subsets, modular addition), ``schedule`` (the
log-spaced checkpoint and log steps), ``resume`` (the resume protocol: state, staging, the
two-phase finish), ``segments`` (where and how fast each job trained), the step engines
(``fast_mlp_step``, the plain autograd step in ``train``, the seeds of a weight decay at once in
``batched``) and the loop (``train``).

Imports: the foundations and antigrok.formats (reading checkpoints back).
"""
