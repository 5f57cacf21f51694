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

**Another goal.** Both estimate the error of the trained *cost* unless given a goal
functional G: the mean loss of a functional on other data (held-out validation
samples), on the same network. Its error ``G(m*) - G_h(m_h*)`` at the optima of the
*training* cost has two parts (docs/model.md §4.15): the discretisation's at fixed
controls (G's own costate weighs the depth steps; the width's data part is G's) and
the move of the optimum, first order for a goal that is not the trained cost. On the
enriched discretisation (every layer split, or every node cell refined) with the
controls transferred, ``m_f* - m_f ~ -H_f^{-1} g_f`` (``g_f = dJ_f(m_f)``, the fine
optimality system's residual), so the second part is ``-<z, g_f>``, ``z`` solving the
dual problem ``H_f z = (dG_f(m_f) + dG_f(m_f + dm))/2`` (:func:`goal_dual`; ``dm`` the
Newton step, the trapezoidal rule along it): the residual weighed by the dual solution,
localised per layer or node cell. Every Newton step of the estimators passes a
trust-region ratio test (:func:`trusted_step`), damped where the quadratic model fails.

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

__all__ = ["DepthEstimator", "Estimator", "TRUST_RATIO", "TRUST_TRIES", "WidthEstimator", "depth_indicators", "goal_dual",
           "hessian_solve", "trusted_step", "width_indicators", "newton_correction", "owned", "mark"]


def depth_indicators(J, m, G=None, problem=None, goal=None, gauss_newton: bool = True,
                     max_it: int = 100) -> np.ndarray:
    """The per-layer indicators ``eta_k`` (``(N,)``, the same on every rank) of the depth
    error of ``J`` at the controls ``m``, for every depth scheme (with node diffusion the
    order is that of the splitting: 1 for Euler, 2 otherwise). Their sum estimates
    ``J(f) - J(f_h)``. Costs two half steps a layer besides the costate.

    With a goal functional ``G`` (on J's network, e.g. the validation loss) they estimate
    ``G(m*) - G_h(m_h*)`` at the trained controls instead (docs/model.md §4.15): G's
    depth error at ``m`` (its own costate) plus the move of the optimum, ``-<z, g_f>`` on
    every layer split (``problem(space, depth)`` builds it, ``goal(made)`` is its G;
    ``z`` from :func:`goal_dual` with ``max_it`` CG iterations), both extrapolated by
    Richardson's factor.

    Raises:
        InputError: with depth checkpointing (the estimator needs every state level).
    """
    if G is None:
        return _depth_steps(J, m)
    net = J.network
    state = _depth_steps(G, m)
    depth = net.depth
    made, Jf = owned(problem(net.space, refine_depth(depth, np.arange(depth.N))))
    Gf = goal(made)
    mf = transfer_controls(J.controls, m, Jf.controls)
    z, g = goal_dual(Jf, mf, Gf, gauss_newton, max_it)
    Gr, Z = Jf.controls.natural(g), Jf.controls.natural(z)
    per_fine = sum((Gr[x] * Z[x]).reshape(Z[x].shape[0], -1).sum(axis=1) for x in ("a", "b"))
    per = per_fine[0::2] + per_fine[1::2]  # fine layers 2k, 2k + 1 split coarse layer k
    common = sum(float((Gr[x] * Z[x]).sum()) for x in ("W", "mu"))  # the readout: by the layers' lengths
    control = -(per + common * depth.tau / depth.T)
    for v in (g, z, mf):
        v.destroy()
    made.destroy()
    return state + _richardson(net) * control


def _richardson(net) -> float:
    """Richardson's factor ``2^p / (2^p - 1)`` of the network's depth scheme (with node
    diffusion the order of the splitting: 1 for Euler, 2 otherwise)."""
    p = ORDER[net.scheme] if net.eps == 0 else min(ORDER[net.scheme], 2)
    return 2.0**p / (2.0**p - 1.0)


def _depth_steps(J, m) -> np.ndarray:
    """Richardson's local errors of J's depth steps weighed by J's costate (the depth
    indicators of J at fixed controls)."""
    net = J.network
    traj = J.trajectory(m)
    if traj.levels is not None:
        raise InputError("the depth estimator needs every state and costate level (no depth checkpointing)")
    costate = J.costate(m)
    factor = _richardson(net)
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


#: The estimators' Newton steps are trusted when the cost realises at least this fraction
#: of the quadratic model's decrease (the trust-region ratio test), else damped
TRUST_RATIO = 0.25
#: damped steps tried at most (each a quarter of the previous one's length, to leading order)
TRUST_TRIES = 10


class _Damped(ReducedHessian):
    """``H + mu M`` (M the controls' inner product: Levenberg-Marquardt damping in the
    metric the Riesz map preconditions)."""

    def __init__(self, J, m, gauss_newton, mu):
        super().__init__(J, m, gauss_newton)
        self.mu = mu

    def mult(self, mat, v, out):
        self.apply(v, out)
        if self.mu:
            Mv = self.J.controls.mass(v)
            out.axpy(self.mu, Mv)
            Mv.destroy()


def hessian_solve(J, m, rhs, gauss_newton: bool = True, max_it: int = 100, rtol: float = 1e-8, damping: float = 0.0):
    """``x`` solving ``(H + damping M) x = rhs`` (``rhs`` a dual vector, ``x`` primal) with H
    the (Gauss-Newton) Hessian of ``J`` at ``m`` and M the controls' inner product, by
    preconditioned CG (PETSc KSP on a shell Mat of
    :class:`~fem_dnn.learning.functional.ReducedHessian`; the preconditioner is the
    controls' Riesz map), stopped at ``rtol`` or ``max_it``, or at the last
    positive-curvature iterate."""
    A = _Damped(J, m, gauss_newton, damping).create_mat()
    ksp = PETSc.KSP().create(rhs.comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType("python")
    ksp.getPC().setPythonContext(_Riesz(J.controls))
    ksp.setTolerances(rtol=rtol, max_it=max_it)
    x = rhs.duplicate()
    x.set(0.0)
    ksp.solve(rhs, x)
    ksp.destroy(), A.destroy()
    return x


def trusted_step(J, m, gauss_newton: bool = True, max_it: int = 100, rtol: float = 1e-8) -> tuple:
    """The estimators' Newton step of ``J`` at ``m``, with the trust-region ratio test:
    ``dm`` solving ``(H + mu M) dm = -g`` (``g = dJ(m)``, :func:`hessian_solve`), first with
    ``mu = 0``; while the cost realises less than :data:`TRUST_RATIO` of the model's
    decrease ``q = <g, dm> + <dm, H dm>/2`` (the step left the region where the quadratic
    model holds: the flat directions of a network trained with a small regulariser), mu
    becomes ``4 |g|_* / |dm|`` (then 4 times the last mu), which shortens the step by
    about 4, at most :data:`TRUST_TRIES` times. Returns ``(g, dm, mu, q, ratio)``: at a
    minimiser with a quadratic model that holds, ``mu = 0`` and ``q = <g, dm>/2``."""
    g = J.derivative(m)
    rhs = g.copy()
    rhs.scale(-1.0)
    J0, mu = J(m), 0.0
    Rg = J.controls.riesz(g)
    dual_norm = float(np.sqrt(max(g.dot(Rg), 0.0)))
    Rg.destroy()
    for attempt in range(TRUST_TRIES + 1):
        dm = hessian_solve(J, m, rhs, gauss_newton, max_it, rtol, damping=mu)
        Hd = J.hessian(m, dm, gauss_newton=gauss_newton)
        q = g.dot(dm) + 0.5 * dm.dot(Hd)
        Hd.destroy()
        x = m.copy()
        x.axpy(1.0, dm)
        actual = J(x) - J0
        x.destroy()
        ratio = actual / q if q < 0 else -np.inf
        if ratio >= TRUST_RATIO or attempt == TRUST_TRIES or dual_norm == 0:
            break
        length = J.controls.norm(dm)
        mu = max(4.0 * mu, 4.0 * dual_norm / length) if length > 0 else max(4.0 * mu, 1.0)
        dm.destroy()
    rhs.destroy()
    return g, dm, mu, q, ratio


def newton_correction(J, m, gauss_newton: bool = True, max_it: int = 100, rtol: float = 1e-8):
    """One (Gauss-)Newton step of ``J`` at ``m`` (:func:`trusted_step`: ``H dm = -dJ(m)``,
    damped where the quadratic model does not hold). Returns ``(dJ, dm)`` (dual and primal
    Vecs); ``-1/2 <dJ, dm>`` is the undamped model's decrease, the estimate of
    ``J(m) - min J`` near a minimum."""
    g, dm, *_ = trusted_step(J, m, gauss_newton, max_it, rtol)
    return g, dm


def goal_dual(J, m, G, gauss_newton: bool = True, max_it: int = 100, rtol: float = 1e-8):
    """The dual solution of the goal-oriented estimate and J's derivative, ``(z, g)``:
    ``g = dJ(m)`` and ``z`` solving ``(H + mu M) z = (dG(m) + dG(m + dm)) / 2``, H the
    (Gauss-Newton) Hessian of the training cost ``J`` at ``m``, ``dm = -(H + mu M)^{-1}
    g`` its trusted Newton step (:func:`trusted_step`: mu = 0 where the quadratic model
    holds) and ``dG`` the derivative of the goal's mean loss (``G.loss_derivative``, no
    regulariser). The optimum moves by ``dm`` to J's model, and the goal by ``int_0^1
    <dG(m + s dm), dm> ds``; the trapezoidal rule makes it ``-<z, g>`` (exact for a goal
    quadratic along the step; with ``dG(m)`` alone it would be the linearisation, which
    the goal's curvature along the large steps of a trained network's flat directions
    spoils: docs/model.md §4.15)."""
    g, dm, mu, *_ = trusted_step(J, m, gauss_newton, max_it, rtol)
    step = m.copy()
    step.axpy(1.0, dm)
    rhs = G.loss_derivative(step)
    here = G.loss_derivative(m)
    rhs.axpy(1.0, here)
    rhs.scale(0.5)
    z = hessian_solve(J, m, rhs, gauss_newton, max_it, rtol, damping=mu)
    for v in (dm, step, rhs, here):
        v.destroy()
    return z, g


def owned(made) -> tuple:
    """``(discretisation, J)`` of what a learning-problem builder ``problem(space, depth)``
    returned: a reduced functional (its own discretisation), or an object that owns one
    as ``.J`` and destroys it with its ``destroy()`` (the application's run, which also
    holds the test data)."""
    return made, getattr(made, "J", made)


def width_indicators(J, m, problem, order: int = 2, gauss_newton: bool = True, max_it: int = 100, G=None,
                     goal=None) -> np.ndarray:
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

    With a goal functional ``G`` (on J's network; ``goal(made)`` is its counterpart on
    what ``problem`` made) they estimate ``G(m*) - G_h(m_h*)`` at the trained controls
    (docs/model.md §4.15): the data part is G's, ``G_f(P m_h) - G_h(m_h)`` (localised by
    the change of G's data), and the control part ``-<z, dJ_f>`` with ``z`` from
    :func:`goal_dual` (localised by the controls' cells as above).

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
    if G is None:  # the cost: its change and the model's decrease q along the trusted step (1/2 <g, dm> undamped)
        g, dm, _, q, _ = trusted_step(Jf, mf, gauss_newton, max_it)
        data, gd = Jf(mf) - J(m), g.dot(dm)
        weight = q / gd if gd else 0.5
    else:  # the goal: its change and the move of the optimum, -<g, z>
        Gf = goal(made)
        data, weight = Gf.loss_value(mf) - G.loss_value(m), -1.0
        dm, g = goal_dual(Jf, mf, Gf, gauss_newton, max_it)
    parent = np.argmax(interpolation_matrix(sp, fine), axis=1)
    Gr, D = Jf.controls.natural(g), Jf.controls.natural(dm)
    B = (Gr["b"] * D["b"]).sum(axis=0)
    WD = Gr["W"] * D["W"]
    per = (Gr["a"] * D["a"]).sum(axis=0) + 0.5 * (B.sum(axis=1) + B.sum(axis=0))
    common = 0.0
    if J.kind == "classes":
        per += WD.sum(axis=0)
        common = float((Gr["mu"] * D["mu"]).sum())
    else:
        per += 0.5 * (WD.sum(axis=1) + WD.sum(axis=0)) + Gr["mu"] * D["mu"]
    control = weight * (np.bincount(parent, per, sp.n) + common / sp.n)
    # the data part, localised by the change of the data on each cell (inputs, and the
    # targets of a function readout), weighed by the fine cells' measures
    osc = np.zeros(fine.n)
    w = fine.to_natural(fine.weights[: fine.n_local])
    coarse, enriched = (J, Jf) if G is None else (G, Gf)
    pairs = [(coarse.inputs_all, enriched.inputs_all)] + (
        [(coarse.targets_all, enriched.targets_all)] if J.kind == "function" else [])
    for coarse_data, fine_data in pairs:
        c, f = sp.to_natural(coarse_data, axis=0), fine.to_natural(fine_data, axis=0)
        osc += w * np.abs(f - c[parent]).sum(axis=1)
    osc = np.bincount(parent, osc, sp.n)
    share = osc / osc.sum() if osc.sum() > 0 else np.full(sp.n, 1.0 / sp.n)
    for v in (g, dm, mf):
        v.destroy()
    made.destroy()
    fine.destroy()
    factor = 2.0**order / (2.0**order - 1.0)
    return factor * (data * share + control)


class Estimator(Protocol):
    """An error estimator of the adaptive loop: ``name`` (what it refines: ``"depth"``,
    ``"width"``), :meth:`indicators` of the error of the goal (the trained cost, or
    another goal functional) and :meth:`refine`, the discretisation with the marked
    indicators' parts refined."""

    name: str

    def indicators(self, made, m) -> np.ndarray:
        """The indicators of the goal's error at the trained controls m, the same on
        every rank; ``made`` is the discretisation (a reduced functional, or an object
        that owns one: :func:`owned`)."""

    def refine(self, space, depth, marked: np.ndarray) -> tuple:
        """The node space and depth mesh ``(space, depth)`` with the parts of the marked
        indicators (indices into :meth:`indicators`) refined."""


class DepthEstimator:
    """The depth error: per layer (:func:`depth_indicators`); a marked layer is split
    (:func:`~fem_dnn.learning.transfer.refine_depth`). With a goal (``goal(made)`` the
    goal functional of a discretisation) the estimate is the goal's, which needs the
    learning problem ``problem(space, depth)`` and ``max_it`` CG iterations of the dual
    problem."""

    name = "depth"

    def __init__(self, problem=None, goal=None, max_it: int = 100):
        if goal is not None and problem is None:
            raise InputError("a goal-oriented depth estimate needs the learning problem (to split every layer)")
        self.problem, self.goal, self.max_it = problem, goal, max_it

    def indicators(self, made, m) -> np.ndarray:
        _, J = owned(made)
        if self.goal is None:
            return depth_indicators(J, m)
        return depth_indicators(J, m, self.goal(made), self.problem, self.goal, max_it=self.max_it)

    def refine(self, space, depth, marked):
        return space, refine_depth(depth, marked)


class WidthEstimator:
    """The width error: per node cell, natural order (:func:`width_indicators` with the
    learning problem ``problem(space, depth)`` and ``max_it`` Gauss-Newton CG
    iterations; with ``goal``, the goal's); a marked cell is refined
    (:func:`~fem_dnn.learning.transfer.refine_nodes`)."""

    name = "width"

    def __init__(self, problem, max_it: int = 100, goal=None):
        self.problem, self.max_it, self.goal = problem, max_it, goal

    def indicators(self, made, m) -> np.ndarray:
        _, J = owned(made)
        G = None if self.goal is None else self.goal(made)
        return width_indicators(J, m, self.problem, max_it=self.max_it, G=G, goal=self.goal)

    def refine(self, space, depth, marked):
        return refine_nodes(space, marked), depth
