"""Verification tools: independent checks of the solvers.

- :func:`state_residual_norm`: assembles the space-time residual of the state equation
  (:func:`fem_dnn.forms.state_residual`) on the (depth, node) mesh for a computed
  trajectory, tested with ``phi_i(y) chi_k(t)`` (node basis function times layer
  indicator). For a scheme of order p the residual of its trajectory vanishes at order
  ``min(p, 2)`` under depth refinement (the trajectory is represented piecewise linearly
  in depth, which caps the check at 2).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.fem.petsc  # noqa: F401
import ufl
from dolfinx import fem

from fem_dnn import forms
from fem_dnn.domain import ProductMesh
from fem_dnn.network import Network, Trajectory

__all__ = ["state_residual_norm"]


def state_residual_norm(net: Network, traj: Trajectory, sample: int = 0, product: ProductMesh | None = None) -> float:
    """Discrete L2 norm ``sqrt(sum_ik R_ik^2 / (omega_i tau_k))`` of the space-time residual
    ``R_ik = R(phi_i chi_k)`` of one sample's trajectory.

    The nonlocal term enters as data: ``B_b f`` is computed at the depth points by the
    kernel and interpolated linearly in depth on each layer. Use a 1D node domain with
    DG0 or consistent-mass P1 (the sigma quadrature in y then matches the scheme's).
    """
    sp, depth, c = net.space, net.depth, traj.controls
    pm = product or ProductMesh(sp, depth)
    f = pm.function(traj.states[:, sample, :], "f")
    N = depth.N
    bf = np.empty((N, 2, sp.n_local))
    for k in range(N):
        for j in (0, 1):
            bf[k, j] = net.kernel.apply(c.b[k], np.asfortranarray(traj.state(k + j)[:, sample : sample + 1]))[:, 0]
    Bf = pm.layer_function(bf, "Bf")
    a = pm.layer_function(c.a, "a")
    centres = None
    if sp.family == "DG":
        Vt = fem.functionspace(pm.mesh, ("DG", 0))
        gd = pm.mesh.geometry.dim
        centres = fem.Function(fem.functionspace(pm.mesh, ("DG", 0, (gd,))))
        centres.interpolate(lambda x: x[:gd])
    else:
        Vt = pm.layer_space
    v = ufl.TestFunction(Vt)
    R = forms.state_residual(f, a, Bf, v, net.sigma, net.eps, centres, degree=max(sp.qdeg, 4))
    vec = dolfinx.fem.petsc.assemble_vector(fem.form(R))
    vec.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    vals = vec.array.copy()
    vec.destroy()
    if sp.family == "DG":
        ncell = len(pm.layer)
        Rk = np.zeros((N, sp.n_local))
        cell_dof = sp.V.dofmap.list[pm.node_cell, 0]
        Rk[pm.layer, cell_dof] = vals[Vt.dofmap.list[:ncell, 0]]
    else:
        full = np.zeros(Vt.dofmap.index_map.size_local + Vt.dofmap.index_map.num_ghosts)
        full[: vals.size] = vals
        Rk = pm.layer_sums(full)
    s = float(np.sum(Rk**2 / (sp.weights[None, :] * depth.tau[:, None])))
    return float(np.sqrt(sp.comm.allreduce(s, op=MPI.SUM)))
