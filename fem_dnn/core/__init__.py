"""The finite-element core: what a layer of the continuum network is made of.

- :mod:`fem_dnn.core.activation`  sigma and its derivatives, in numpy and UFL
- :mod:`fem_dnn.core.domain`      node mesh and node space, depth mesh, (depth, node) mesh,
                                  rank layouts
- :mod:`fem_dnn.core.forms`       every local weak form, in UFL (the reuse entry point:
                                  ``from fem_dnn.core import forms`` has no side effect)
- :mod:`fem_dnn.core.kernel`      the nonlocal operator B_b: kernel families (dense, local, lowrank)
"""
