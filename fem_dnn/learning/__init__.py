"""The learning problem: controls, losses, the reduced functional, verification.

- :mod:`fem_dnn.learning.controls`    the control blocks (a, b, W, mu) as one PETSc Vec,
                                      their inner products and Riesz map
- :mod:`fem_dnn.learning.losses`      the loss registry (one class per loss)
- :mod:`fem_dnn.learning.functional`  the reduced functional J(m): value, derivative,
                                      gradient, Hessian action; the reduced Hessian
                                      operator; wrappers (fixed readout, proximal term)
- :mod:`fem_dnn.learning.verify`      Taylor tests, space-time residuals
- :mod:`fem_dnn.learning.dwr`         a posteriori dual-weighted residual estimators of
                                      the depth and width error of J (indicators, marking)
- :mod:`fem_dnn.learning.transfer`    refinement of a (depth, node) discretisation and
                                      transfer of controls between two

The names below are loaded on first use (the loss registry is read by the config without
importing DOLFINx).
"""

from fem_dnn._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "BLOCKS": "controls", "ControlSpace": "controls", "DepthOperator": "controls",
    "AbstractReducedFunctional": "functional", "FixedReadout": "functional", "Proximal": "functional",
    "ReducedFunctional": "functional", "ReducedHessian": "functional", "WrappedFunctional": "functional",
    "LOSSES": "losses", "Loss": "losses", "depth_indicators": "dwr", "mark": "dwr",
    "depth_matrix": "transfer", "interpolation_matrix": "transfer", "refine_depth": "transfer",
    "refine_nodes": "transfer", "transfer_controls": "transfer",
})
