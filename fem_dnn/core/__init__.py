"""The finite-element core: what a layer of the continuum network is made of.

- :mod:`fem_dnn.core.activation`  sigma and its derivatives, in numpy and UFL
- :mod:`fem_dnn.core.layout`      rank layouts: node partition and sample groups
- :mod:`fem_dnn.core.meshes`      node meshes: built-in, read from gmsh/XDMF, points on a mesh
- :mod:`fem_dnn.core.nodes`       the node space V_h: node weights, mass operators, natural order
- :mod:`fem_dnn.core.depth`       depth mesh, (depth, node) mesh
- :mod:`fem_dnn.core.forms`       every local weak form, in UFL (the reuse entry point:
                                  ``from fem_dnn.core import forms`` has no side effect)
- :mod:`fem_dnn.core.kernel`      the nonlocal operator B_b: kernel families (dense, local, lowrank)
"""
