"""Training: optimisers of the reduced functional.

- :mod:`fem_dnn.optimize.tao`        TAO methods in L2/H1-orthonormal coordinates
                                     (:class:`Optimizer`), multilevel training
- :mod:`fem_dnn.optimize.minibatch`  mini-batch SGD and Adam
- :mod:`fem_dnn.optimize.paper`      the paper's proximal-point method and MSA (Pontryagin)
- :mod:`fem_dnn.optimize.transfer`   controls moved between (depth, node) discretisations
"""

from fem_dnn.optimize.minibatch import batches, minibatch
from fem_dnn.optimize.paper import hamiltonian_minimiser, msa, proximal_point
from fem_dnn.optimize.tao import METHODS, Coordinates, Optimizer, Result, multilevel, stop_reason
from fem_dnn.optimize.transfer import depth_matrix, interpolation_matrix, transfer_controls

__all__ = ["METHODS", "Coordinates", "Optimizer", "Result", "batches", "depth_matrix", "hamiltonian_minimiser",
           "interpolation_matrix", "minibatch", "msa", "multilevel", "proximal_point", "stop_reason",
           "transfer_controls"]
