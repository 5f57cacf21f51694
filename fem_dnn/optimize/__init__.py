"""Training: optimisers of the reduced functional.

- :mod:`fem_dnn.optimize.coordinates` the L2/H1-orthonormal coordinates every optimiser
                                     steps in (:class:`Coordinates`)
- :mod:`fem_dnn.optimize.tao`        TAO methods in those coordinates (:class:`Optimizer`),
                                     multilevel training
- :mod:`fem_dnn.optimize.stochastic` mini-batch SGD and Adam (:func:`minibatch`)
- :mod:`fem_dnn.optimize.proximal`   the proximal-point method (minimising movement)
- :mod:`fem_dnn.optimize.pmp`        the PMP step and the method of successive
                                     approximations (Pontryagin)
- :mod:`fem_dnn.optimize.callbacks`  what an optimiser takes from its caller: the
                                     checkpoint it saves to and resumes from, the monitor
                                     line's columns
- :mod:`fem_dnn.optimize.adaptive`   the adaptive loop: train, estimate, mark, refine
                                     (:func:`adapt`)
- :mod:`fem_dnn.optimize.methods`    the training methods by name (no PETSc import)

The names below are loaded on first use (PEP 562), so reading the method list (the
config does) does not import PETSc.
"""

from fem_dnn._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "batches": "stochastic", "minibatch": "stochastic",
    "hamiltonian_minimiser": "pmp", "msa": "pmp", "proximal_point": "proximal",
    "Coordinates": "coordinates", "Optimizer": "tao", "Result": "tao", "multilevel": "tao", "stop_reason": "tao",
    "StateStore": "callbacks", "accuracy_columns": "callbacks", "state_store": "callbacks",
    "Cycle": "adaptive", "adapt": "adaptive", "estimators": "adaptive",
    "BOUNDED": "methods", "HESSIAN": "methods", "METHODS": "methods", "TAO": "methods",
})
