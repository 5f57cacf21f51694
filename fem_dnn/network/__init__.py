"""The network: depth schemes, the continuum ResNet's solves, the readout.

- :mod:`fem_dnn.network.schemes`    the depth-scheme registry (Butcher tableaux of the
                                     explicit schemes, the implicit midpoint rule)
- :mod:`fem_dnn.network.stage`      the stage function of a layer and its derivatives
- :mod:`fem_dnn.network.continuum`  :class:`Network`: forward / tangent / costate /
                                     second-order costate solves
- :mod:`fem_dnn.network.evaluation` the state at any depth and point
- :mod:`fem_dnn.network.readout`    the readout, its derivatives and link functions
- :mod:`fem_dnn.network.slabs`      depth slabs: networks in sequence on coarsening node
                                     spaces, joined by the L2 projection or
                                     the max pooling

The names below are loaded on first use (PEP 562), so reading the scheme registry
(the config and the CLI do) does not import DOLFINx or PETSc.
"""

from fem_dnn._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "Controls": "continuum", "Costate": "continuum", "Network": "continuum", "Trajectory": "continuum",
    "Stage": "stage",
    "Readout": "readout", "logistic": "readout", "softmax": "readout",
    "SLAB_POOLINGS": "slabs", "SlabControls": "slabs", "SlabMaxPooling": "slabs", "SlabNetwork": "slabs",
    "SlabProjection": "slabs", "SlabTrajectory": "slabs",
    "ORDER": "schemes", "SCHEMES": "schemes", "STAGES": "schemes", "TABLEAUS": "schemes", "Scheme": "schemes",
})
