"""The learning problem: controls, losses, the reduced functional, verification.

- :mod:`fem_dnn.learning.controls`    the control blocks (a, b, W, mu) as one PETSc Vec,
                                      their inner products and Riesz map
- :mod:`fem_dnn.learning.losses`      the loss registry (one class per loss)
- :mod:`fem_dnn.learning.functional`  the reduced functional J(m): value, derivative,
                                      gradient, Hessian action; wrappers (fixed readout,
                                      proximal term)
- :mod:`fem_dnn.learning.verify`      Taylor tests, space-time residuals
"""

from fem_dnn.learning.controls import BLOCKS, ControlSpace, DepthOperator
from fem_dnn.learning.functional import (AbstractReducedFunctional, FixedReadout, Proximal, ReducedFunctional,
                                         WrappedFunctional)
from fem_dnn.learning.losses import LOSSES, Loss

__all__ = ["BLOCKS", "LOSSES", "AbstractReducedFunctional", "ControlSpace", "DepthOperator", "FixedReadout", "Loss",
           "Proximal", "ReducedFunctional", "WrappedFunctional"]
