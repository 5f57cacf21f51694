"""Verification tools: independent checks of the solvers.

- :func:`state_residual_norm`: assembles the space-time residual of the state equation
  (:func:`fem_dnn.core.forms.state_residual`) on the (depth, node) mesh for a computed
  trajectory, tested with ``phi_i(y) chi_k(t)`` (node basis function times layer
  indicator). For a scheme of order p the residual of its trajectory vanishes at order
  ``min(p, 2)`` under depth refinement (the trajectory is represented piecewise linearly
  in depth, which caps the check at 2).
- :func:`costate_residual_norm`: the same for the costate equation
  (:func:`fem_dnn.core.forms.costate_residual`) and a computed discrete costate (the exact
  transpose of the scheme), which is consistent with it at order ``min(p, 2)`` too.
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.fem.petsc  # noqa: F401
import ufl
from dolfinx import fem

from fem_dnn.core import forms
from fem_dnn.core.depth import ProductMesh
from fem_dnn.network import Costate, Network, Trajectory

__all__ = ["TaylorResult", "costate_residual_norm", "state_residual_norm", "taylor_test"]


@dataclass
class TaylorResult:
    """Remainders of a Taylor test and their observed rates.

    ``remainders[0]`` is ``|J(m + e dm) - J(m)|`` (rate 1), ``remainders[1]`` subtracts
    ``e dJ.dm`` (rate 2), ``remainders[2]`` also ``e^2/2 dm.H dm`` (rate 3).
    """

    steps: np.ndarray
    remainders: list
    rates: list

    def min_rate(self, order: int) -> float:
        """Smallest observed rate of remainder ``order`` (0, 1 or 2) over the steps."""
        return float(np.min(self.rates[order]))

    def __str__(self):
        lines = ["step        " + "  ".join(f"remainder{i}  rate" for i in range(len(self.remainders)))]
        for j, e in enumerate(self.steps):
            cols = []
            for rem, rate in zip(self.remainders, self.rates):
                cols.append(f"{rem[j]:.3e} " + (f"{rate[j - 1]:5.2f}" if j else "  -  "))
            lines.append(f"{e:.3e}   " + "  ".join(cols))
        return "\n".join(lines)


def taylor_test(J, m, dm, derivative=None, hessian=None, step: float = 1e-2, n_steps: int = 5) -> TaylorResult:
    """Taylor test of any functional J on PETSc Vecs.

    Args:
        J: callable ``J(x) -> float`` (collective).
        m, dm: the point and the direction (PETSc Vecs).
        derivative: the derivative dJ(m) as a *dual* vector (paired with dm by the
            Euclidean dot product), or None.
        hessian: the Hessian action ``H dm`` as a dual vector, or None.
        step, n_steps: first step e and number of halvings.

    Returns:
        The remainders and observed rates: 1 without derivative, 2 with a correct
        derivative, 3 with a correct Hessian action.
    """
    J0 = J(m)
    dJ = derivative.dot(dm) if derivative is not None else None
    d2J = hessian.dot(dm) if hessian is not None else None
    x = m.duplicate()
    steps = step * 0.5 ** np.arange(n_steps)
    rem = [[] for _ in range(1 + (dJ is not None) + (d2J is not None))]
    for e in steps:
        m.copy(x)
        x.axpy(e, dm)
        d = J(x) - J0
        rem[0].append(abs(d))
        if dJ is not None:
            rem[1].append(abs(d - e * dJ))
            if d2J is not None:
                rem[2].append(abs(d - e * dJ - 0.5 * e * e * d2J))
    x.destroy()
    rem = [np.array(r) for r in rem]
    rates = [np.log2(r[:-1] / np.maximum(r[1:], 1e-300)) for r in rem]
    return TaylorResult(steps, rem, rates)


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
    centres, v = _residual_test_space(pm)
    R = forms.state_residual(f, a, Bf, v, net.sigma, net.eps, centres, degree=max(sp.qdeg, 4), decay=net.decay)
    return _residual_norm(net, pm, R)


def _residual_test_space(pm):
    """Test functions phi_i(y) chi_k(t) on the (depth, node) mesh, and the DG0 cell
    centres of the two-point flux (None for P1)."""
    sp = pm.space
    if sp.family != "DG":
        return None, ufl.TestFunction(pm.layer_space)
    gd = pm.mesh.geometry.dim
    centres = fem.Function(fem.functionspace(pm.mesh, ("DG", 0, (gd,))))
    centres.interpolate(lambda x: x[:gd])
    return centres, ufl.TestFunction(fem.functionspace(pm.mesh, ("DG", 0)))


def _residual_norm(net, pm, R):
    """Assemble a space-time residual form R and return ``sqrt(sum R_ik^2/(omega_i tau_k))``."""
    sp, depth, N = net.space, net.depth, net.depth.N
    Vt = R.arguments()[0].ufl_function_space()
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


def costate_residual_norm(
    net: Network, traj: Trajectory, costate: Costate, sample: int = 0, product: ProductMesh | None = None
) -> float:
    """Discrete L2 norm ``sqrt(sum_ik R_ik^2 / (omega_i tau_k))`` of the space-time residual
    ``R_ik = R(phi_i chi_k)`` of the costate equation (:func:`forms.costate_residual`)
    for one sample's discrete costate ``r = M^{-1} lam`` (from :meth:`Network.costate`).

    The nonlocal term enters as data: on each layer k, at its two depth points
    ``t_{k+j}`` (j = 0, 1), the node values of ``B_{b_k}^T(sigma'(u) r)`` with
    ``u = a_k - B_{b_k} f_{k+j}`` and the layer-k controls are computed with the
    node-space quadrature (``M^{-1} M_w b_k^T Q(sigma'(P u) P r)``) and interpolated
    linearly in depth on the layer. Use a 1D node domain with DG0 or consistent-mass P1.
    """
    sp, depth, c = net.space, net.depth, traj.controls
    pm = product or ProductMesh(sp, depth)
    rr = costate.r()[:, sample, :]
    r = pm.function(rr, "r")
    N = depth.N
    btsr = np.empty((N, 2, sp.n_local))
    for k in range(N):
        for j in (0, 1):
            F = np.asfortranarray(traj.state(k + j)[:, sample : sample + 1])
            U = c.a[k][:, None] - net.kernel.apply(c.b[k], F)
            Rq = sp.quad_values(np.asfortranarray(rr[k + j][:, None]))
            load = sp.quad_load(np.asfortranarray(net.sigma.dsigma(sp.quad_values(U)) * Rq))
            btsr[k, j] = sp.solve_mass(net.kernel.apply_transpose(c.b[k], load))[:, 0]
    BTsr = pm.layer_function(btsr, "BTsr")
    centres, v = _residual_test_space(pm)
    R = forms.costate_residual(r, BTsr, v, net.eps, centres, degree=max(sp.qdeg, 4), decay=net.decay)
    return _residual_norm(net, pm, R)
