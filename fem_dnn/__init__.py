"""fem_dnn: PDE models of deep residual networks, solved with DOLFINx and PETSc.

A residual network ``x^{k+1} = x^k + tau*sigma(a^k - B^k x^k)`` is, in the limit of
infinite width and depth, the partial differential-integral equation of Liu and
Markowich (J. Differential Equations 269, 2020)

    d/dt f(y,t) = sigma(a(y,t) - int_Y b(y,z,t) f(z,t) dz) + eps Lap_y f,  f(y,0) = f_I(y)

on the (depth, node) domain [0,T] x Y. The modules follow the data flow:

- :mod:`fem_dnn.core.activation`  sigma and its derivatives, in numpy and UFL
- :mod:`fem_dnn.core.layout`      rank layouts (node partition, sample groups)
- :mod:`fem_dnn.core.batch`       the batch arrays' memory order, blocked copies between orders
- :mod:`fem_dnn.core.meshes`      node meshes: built-in, gmsh/XDMF files, points on a mesh
- :mod:`fem_dnn.core.nodes`       the node space: node weights, mass operators, natural order
- :mod:`fem_dnn.core.depth`       depth mesh, (depth, node) mesh
- :mod:`fem_dnn.core.forms`       every local weak form, in UFL
- :mod:`fem_dnn.core.kernel`      the nonlocal operator B_b: kernel families (dense, local, lowrank)
- :mod:`fem_dnn.network`     controls, depth schemes, the forward, tangent, costate and
                              second-order costate solves, the readout
- :mod:`fem_dnn.learning.functional`  the reduced functional J(m), gradient, Hessian action
- :mod:`fem_dnn.learning.verify`      Taylor tests, space-time residuals
- :mod:`fem_dnn.hjb`         the HJB value function and optimal feedback of reduced
                              networks (a few neurons), closed and open loop
- :mod:`fem_dnn.app.output`          XDMF/VTX output over the (depth, node) mesh, figures
"""

from fem_dnn import _dolfinx  # noqa: F401  (must come before mpi4py/dolfinx imports)
from fem_dnn.errors import FemDnnError, InputError, NonFiniteError

__version__ = "0.1.0"

__all__ = ["FemDnnError", "InputError", "NonFiniteError", "__version__"]
