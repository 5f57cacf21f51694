"""The HJB value function and optimal feedback of reduced networks (docs/model.md §6).

- :mod:`fem_dnn.hjb.solver`  the reduced model, the monotone schemes on a mesh of state
                             space (Lax-Friedrichs P1, semi-Lagrangian), closed and open loop
"""

from fem_dnn.hjb.solver import (SCHEMES, ClosedLoop, HJBSolver, OpenLoop, ReducedModel, SemiLagrangian, bias_value,
                                box_around, closed_loop, open_loop, quadratic_cost, readout_cost)

__all__ = ["SCHEMES", "ClosedLoop", "HJBSolver", "OpenLoop", "ReducedModel", "SemiLagrangian", "bias_value",
           "box_around", "closed_loop", "open_loop", "quadratic_cost", "readout_cost"]
