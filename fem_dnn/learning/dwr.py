"""Dual-weighted residual (DWR) estimates of the depth and width discretisation error.

The goal is the trained network's cost ``J``; at fixed controls m (constant on each layer,
as the depth mesh defines them) the exact depth-continuous network solves the state
equation on layer k exactly, and the depth scheme takes one step ``f_{k+1} = Phi_k(f_k)``.
The discrete costate ``dual_{k+1} = dJ/df_{k+1}`` (docs/model.md §3) weighs the local
error of each step, estimated by Richardson extrapolation with two half steps of the same
scheme (order p):

    J(f) - J(f_h)  ~  eta = sum_k eta_k,
    eta_k = 2^p / (2^p - 1) < dual_{k+1}, Phi_{k, tau/2}(Phi_{k, tau/2}(f_k)) - f_{k+1} >

(Euclidean pairing: ``dual`` is a dual vector). For the ResNet (Euler, p = 1) this is the
trapezoidal reconstruction ``(tau_k/2) <dual_{k+1}, g_k(f_{k+1}) - g_k(f_k)>`` up to
higher-order terms. The regulariser does not depend on the depth discretisation of
piecewise constant controls, so ``eta`` estimates the error of J as well as that of the
loss. See docs/model.md §4.11 for the derivation; tests/test_estimate.py measures the
effectivity index ``eta / (J_ref - J_h)`` against a fine reference.

:func:`width_indicators` estimates the width error of the trained cost on the uniformly
refined node mesh: the data part and the Gauss-Newton decrease of the enriched problem
(its gradient's residual weighed by the control correction), per node cell (docs/model.md
§4.12). :func:`mark` is the Dörfler marking of either.

The adaptive loop (:func:`fem_dnn.optimize.adaptive.adapt`) sees the two through one
interface, :class:`Estimator` (its indicators at the trained controls and the refinement
of the marked ones): :class:`DepthEstimator` and :class:`WidthEstimator`.
"""

from typing import Protocol

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn.errors import InputError
from fem_dnn.learning.functional import ReducedHessian
from fem_dnn.learning.transfer import interpolation_matrix, refine_depth, refine_nodes, transfer_controls
from fem_dnn.network.schemes import ORDER

__all__ = ["DepthEstimator", "Estimator", "WidthEstimator", "depth_indicators", "width_indicators", "newton_correction", "owned",
           "mark"]


def depth_indicators(J, m) -> np.ndarray:
    """The per-layer indicators ``eta_k`` (``(N,)``, the same on every rank) of the depth
    error of ``J`` at the controls ``m``, for every depth scheme (with node diffusion the
    order is that of the splitting: 1 for Euler, 2 otherwise). Their sum estimates
    ``J(f) - J(f_h)``. Costs two half steps a layer besides the costate.

    Raises:
        InputError: with depth checkpointing (the estimator needs every state level).
    """
    net = J.network
    traj = J.trajectory(m)
    if traj.levels is not None:
        raise InputError("the depth estimator needs every state and costate level (no depth checkpointing)")
    costate = J.costate(m)
    p = ORDER[net.scheme] if net.eps == 0 else min(ORDER[net.scheme], 2)
    factor = 2.0**p / (2.0**p - 1.0)
    c = traj.controls
    eta = np.empty(net.depth.N)
    for k in range(net.depth.N):
        h = 0.5 * net.depth.tau[k]
        half = net.step(k, net.step(k, np.asfortranarray(traj.state(k)), c, tau=h), c, tau=h)
        eta[k] = factor * float(np.sum(costate.dual[k + 1].T * (half - traj.state(k + 1))))
    net.layout.world.Allreduce(MPI.IN_PLACE, eta, op=MPI.SUM)  # node ranks and sample groups
    return eta


def mark(eta, fraction: float) -> np.ndarray:
    """Dörfler (bulk) marking: the fewest layers whose ``|eta_k|`` sum to at least
    ``fraction`` of the total (largest first). Returns their indices, sorted.

    Raises:
        InputError: ``fraction`` outside (0, 1].
    """
    if not (0.0 < fraction <= 1.0):
        raise InputError(f"the marking fraction must be in (0, 1], got {fraction!r}")
    size = np.abs(np.asarray(eta, dtype=float))
    order = np.argsort(-size, kind="stable")
    total = size.sum()
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    count = int(np.searchsorted(np.cumsum(size[order]), fraction * total * (1 - 1e-12))) + 1
    return np.sort(order[:count])


class _Riesz:
    def __init__(self, controls):
        self.controls = controls

    def apply(self, pc, x, out):
        self.controls.riesz(x, out)


def newton_correction(J, m, gauss_newton: bool = True, max_it: int = 100, rtol: float = 1e-8):
    """One (Gauss-)Newton step of ``J`` at ``m``: ``dm`` solving ``H dm = -dJ(m)`` by
    preconditioned CG (PETSc KSP on the shell Mat of
    :class:`~fem_dnn.learning.functional.ReducedHessian`; the preconditioner is the
    controls' Riesz map), stopped at ``rtol`` or ``max_it``, or at the last
    positive-curvature iterate. Returns ``(dJ, dm)`` (dual and primal Vecs); ``-1/2 <dJ, dm>`` is the
    quadratic model's decrease, the estimate of ``J(m) - min J`` near a minimum."""
    g = J.derivative(m).copy()
    A = ReducedHessian(J, m, gauss_newton).create_mat()
    ksp = PETSc.KSP().create(g.comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType("python")
    ksp.getPC().setPythonContext(_Riesz(J.controls))
    ksp.setTolerances(rtol=rtol, max_it=max_it)
    rhs, dm = g.copy(), g.duplicate()
    rhs.scale(-1.0)
    dm.set(0.0)
    ksp.solve(rhs, dm)
    ksp.destroy(), A.destroy(), rhs.destroy()
    return g, dm


def owned(made) -> tuple:
    """``(discretisation, J)`` of what a learning-problem builder ``problem(space, depth)``
    returned: a reduced functional (its own discretisation), or an object that owns one
    as ``.J`` and destroys it with its ``destroy()`` (the application's run, which also
    holds the test data)."""
    return made, getattr(made, "J", made)


def width_indicators(J, m, problem, order: int = 2, gauss_newton: bool = True, max_it: int = 100) -> np.ndarray:
    """Per node cell indicators of the width error of the trained cost, ``(n,)`` in natural
    order on every rank; their sum estimates ``J(m*) - J_h(m_h*)`` in the node variables.

    Two-level (enriched) estimate: ``problem(space, depth)`` builds the learning problem
    on the uniformly refined node mesh (its data resolved there); with the controls
    transferred, ``J_f(P m_h) - J_h(m_h)`` is the data part (localised by the data's
    change on each cell) and one Gauss-Newton step ``dm`` of ``J_f`` the control part
    ``1/2 <dJ_f, dm>`` (localised by the controls' cells: a and the readout's node by their
    cell, b(y, z) half to y's cell and half to z's). Richardson with the width order
    ``order`` (2: DG0 cell averages) extrapolates the two-level difference to the limit:
    ``eta = 2^q/(2^q - 1) (J_f* - J_h*)``. See docs/model.md §4.12.

    Raises:
        InputError: a node space other than DG0 or a kernel without a coefficient per
        pair of node dofs (``Kernel.node_pairs``: the localisation is per cell pair), or a
        mesh that cannot be refined.
    """
    net = J.network
    sp = net.space
    if (sp.family, sp.degree) != ("DG", 0) or not net.kernel.node_pairs:
        raise InputError(f"the width estimator needs DG0 nodes and the dense kernel, not {sp.family}{sp.degree} "
                         f"with the {net.kernel.name} kernel")
    fine = refine_nodes(sp)
    made, Jf = owned(problem(fine, net.depth))
    mf = transfer_controls(J.controls, m, Jf.controls)
    data = Jf(mf) - J(m)
    g, dm = newton_correction(Jf, mf, gauss_newton, max_it)
    parent = np.argmax(interpolation_matrix(sp, fine), axis=1)
    G, D = Jf.controls.natural(g), Jf.controls.natural(dm)
    B = (G["b"] * D["b"]).sum(axis=0)
    WD = G["W"] * D["W"]
    per = (G["a"] * D["a"]).sum(axis=0) + 0.5 * (B.sum(axis=1) + B.sum(axis=0))
    common = 0.0
    if J.kind == "classes":
        per += WD.sum(axis=0)
        common = float((G["mu"] * D["mu"]).sum())
    else:
        per += 0.5 * (WD.sum(axis=1) + WD.sum(axis=0)) + G["mu"] * D["mu"]
    control = 0.5 * (np.bincount(parent, per, sp.n) + common / sp.n)
    # the data part, localised by the change of the data on each cell (inputs, and the
    # targets of a function readout), weighed by the fine cells' measures
    osc = np.zeros(fine.n)
    w = fine.to_natural(fine.weights[: fine.n_local])
    pairs = [(J.inputs_all, Jf.inputs_all)] + ([(J.targets_all, Jf.targets_all)] if J.kind == "function" else [])
    for coarse_data, fine_data in pairs:
        c, f = sp.to_natural(coarse_data, axis=0), fine.to_natural(fine_data, axis=0)
        osc += w * np.abs(f - c[parent]).sum(axis=1)
    osc = np.bincount(parent, osc, sp.n)
    share = osc / osc.sum() if osc.sum() > 0 else np.full(sp.n, 1.0 / sp.n)
    for v in (g, dm, mf):
        v.destroy()
    made.destroy()
    factor = 2.0**order / (2.0**order - 1.0)
    return factor * (data * share + control)


class Estimator(Protocol):
    """An error estimator of the adaptive loop: ``name`` (what it refines: ``"depth"``,
    ``"width"``), :meth:`indicators` of the error of the trained cost and :meth:`refine`,
    the discretisation with the marked indicators' parts refined."""

    name: str

    def indicators(self, J, m) -> np.ndarray:
        """The indicators of J's error at the trained controls m, the same on every rank."""

    def refine(self, space, depth, marked: np.ndarray) -> tuple:
        """The node space and depth mesh ``(space, depth)`` with the parts of the marked
        indicators (indices into :meth:`indicators`) refined."""


class DepthEstimator:
    """The depth error: per layer (:func:`depth_indicators`); a marked layer is split
    (:func:`~fem_dnn.learning.transfer.refine_depth`)."""

    name = "depth"

    def indicators(self, J, m) -> np.ndarray:
        return depth_indicators(J, m)

    def refine(self, space, depth, marked):
        return space, refine_depth(depth, marked)


class WidthEstimator:
    """The width error: per node cell, natural order (:func:`width_indicators` with the
    learning problem ``problem(space, depth)`` and ``max_it`` Gauss-Newton CG
    iterations); a marked cell is refined (:func:`~fem_dnn.learning.transfer.refine_nodes`)."""

    name = "width"

    def __init__(self, problem, max_it: int = 100):
        self.problem, self.max_it = problem, max_it

    def indicators(self, J, m) -> np.ndarray:
        return width_indicators(J, m, self.problem, max_it=self.max_it)

    def refine(self, space, depth, marked):
        return refine_nodes(space, marked), depth
