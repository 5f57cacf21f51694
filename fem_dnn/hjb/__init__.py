"""The HJB value function and optimal feedback of reduced networks (docs/model.md §6).

- :mod:`fem_dnn.hjb.model`    the reduced model: dynamics, Hamiltonian, terminal costs,
                              the state box, the exact value of the tests
- :mod:`fem_dnn.hjb.schemes`  the monotone depth schemes behind one step interface
                              (Lax-Friedrichs P1, semi-Lagrangian), ``HJB_SCHEMES``
- :mod:`fem_dnn.hjb.solver`   the value-function solver on a mesh of state space: march,
                              stored levels, value, gradient, feedback
- :mod:`fem_dnn.hjb.loops`    closed loop with the feedback, open-loop comparison
"""

from fem_dnn.hjb.loops import ClosedLoop, OpenLoop, closed_loop, open_loop
from fem_dnn.hjb.model import ReducedModel, bias_value, box_around, quadratic_cost, readout_cost
from fem_dnn.hjb.schemes import HJB_SCHEMES, HJBScheme, LaxFriedrichs, SemiLagrangian, graph_viscosity
from fem_dnn.hjb.solver import HJBSolver

__all__ = ["HJB_SCHEMES", "ClosedLoop", "HJBScheme", "HJBSolver", "LaxFriedrichs", "OpenLoop", "ReducedModel",
           "SemiLagrangian", "bias_value", "box_around", "closed_loop", "graph_viscosity", "open_loop",
           "quadratic_cost", "readout_cost"]
