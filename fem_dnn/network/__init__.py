"""The network: depth schemes, the continuum ResNet's solves, the readout.

- :mod:`fem_dnn.network.schemes`    the depth-scheme registry (Butcher tableaux of the
                                     explicit schemes, the implicit midpoint rule)
- :mod:`fem_dnn.network.continuum`  :class:`Network`: the stage function and its
                                     derivatives, forward / tangent / costate /
                                     second-order costate solves, evaluation, readout
- :mod:`fem_dnn.network.readout`    the readout's parameters and link functions

The names below are loaded on first use (PEP 562), so reading the scheme registry
(the config and the CLI do) does not import DOLFINx or PETSc.
"""

import importlib

_WHERE = {
    "Controls": "continuum", "Costate": "continuum", "Network": "continuum", "Stage": "continuum",
    "Trajectory": "continuum",
    "Readout": "readout", "logistic": "readout", "softmax": "readout",
    "ORDER": "schemes", "SCHEMES": "schemes", "STAGES": "schemes", "TABLEAUS": "schemes", "Scheme": "schemes",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fem_dnn.network.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fem_dnn.network' has no attribute {name!r}")


def __dir__():
    return __all__
