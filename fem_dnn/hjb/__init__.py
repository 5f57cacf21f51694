"""The HJB value function and optimal feedback of reduced networks (docs/model.md §6).

- :mod:`fem_dnn.hjb.solver`  the reduced model, the monotone P1 scheme on a mesh of
                             state space, closed and open loop
"""

from fem_dnn.hjb.solver import (ClosedLoop, HJBSolver, OpenLoop, ReducedModel, bias_value, box_around,
                                closed_loop, open_loop, quadratic_cost, readout_cost)

__all__ = ["ClosedLoop", "HJBSolver", "OpenLoop", "ReducedModel", "bias_value", "box_around", "closed_loop",
           "open_loop", "quadratic_cost", "readout_cost"]
