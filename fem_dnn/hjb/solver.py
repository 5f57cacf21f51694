"""Optimal feedback: the HJB value function of a reduced network and its feedback law.

docs/model.md §6 (LM §4.3; viscosity solutions in Markowich-Portaro). A *reduced network* has
a few neurons: its state is ``v in R^n`` (n = 1, 2, 3; e.g. n DG0 cells of the node
domain Y with node weights w_j) and it evolves in depth as

    dv_i/dt = sigma(u_i),   u_i = a_i - (B_b v)_i,   (B_b v)_i = sum_j b_ij w_j v_j,

with controls ``c = (a, b)`` in a box ``A = [a-, a+] x [b-, b+]`` (per entry), a
terminal cost ``Phi(v)`` and an optional running cost
``L(a, b) = lambda/2 (sum_i w_i a_i^2 + sum_ij w_i w_j b_ij^2)`` (the L2 regulariser of
docs/model.md §2 on the DG0 node space). The value ``F(v, t) = inf_c {int_t^T L dt + Phi(v(T))}``
is the viscosity solution of the HJB equation

    d/dt F + H(v, D_v F) = 0,   F(v, T) = Phi(v),
    H(v, p) = min_{(a,b) in A} { p . sigma(a - B_b v) + L(a, b) },

and the optimal feedback is the argmin ``c*(v, t)`` of H at ``p = D_v F(v, t)``.

**The Hamiltonian** (:class:`ReducedModel`). sigma is non-decreasing (every activation
of :mod:`fem_dnn.core.activation`), so without running cost the minimum separates per
component: where ``p_i > 0`` the control makes u_i as small as possible (``a_i = a-``,
``b_ij = b+`` where ``v_j > 0``, ``b-`` where ``v_j < 0``), where ``p_i < 0`` as large as
possible; so ``H = sum_i min(p_i sigma(u_i^min(v)), p_i sigma(u_i^max(v)))`` in closed
form (LM 4.11). With running cost and identity sigma each control entry solves a 1-D
quadratic: the clipped closed form ``a_i = clip(-p_i/(lambda w_i))``, ``b_ij =
clip(p_i v_j/(lambda w_i))``. With running cost and another sigma the minimiser lies on
the KKT curve ``nu -> (clip(-nu/(lambda w_i)), clip(nu v_j/(lambda w_i)))`` (``nu = p_i
sigma'(u_i)``), a 1-D search in ``nu`` done numerically (grid plus golden section;
numpy only). Ties (``p_i = 0``) take the control of least running cost, the box point
nearest 0. Supported, then: every activation without running cost (closed form, also
in UFL); running cost with identity sigma (closed form, also in UFL); running cost with
another activation (numerical argmin, numpy). The box A is the same at every depth.

**The scheme** (:class:`HJBSolver`). P1 finite elements with lumped mass on a DOLFINx
mesh of a box ``[v-, v+]^n`` (interval, triangles, tetrahedra), explicit in depth,
backward from t = T. With ``s = T - t`` the equation is ``d_s F = H(v, grad F)``, and one
step is

    F_i <- F_i + dt [ H(x_i, G_i) + 1/m_i sum_j d_ij (F_j - F_i) ],
    G_i = 1/m_i sum_j c_ij F_j,   c_ij = int phi_i grad phi_j dx,   m_i = int phi_i dx,

i.e. the Hamiltonian at the vertices with the lumped L2 projection G of grad F (the
local weak forms ``grad u . e_k v dx`` and ``v dx`` in UFL, assembled once), plus a
Lax-Friedrichs *graph viscosity* ``d_ij = sum_k lambda_ik |c_ij^k|`` (j != i), with
``lambda_ik = max_A |sigma(u_k)|`` at x_i: the Lipschitz constant of H in p_k. It is
the Guermond-Popov first-order viscosity, used here for a Hamilton-Jacobi equation:

- *monotone*: increasing F_j (j != i) changes ``H(x_i, G_i)`` by at least
  ``-sum_k lambda_ik |c_ij^k| dF_j / m_i`` and the viscosity by ``+d_ij dF_j / m_i``;
  increasing F_i changes the update by at least ``1 - dt (sum_j d_ij + lambda_i .
  |c_ii|) / m_i``, non-negative under the CFL condition
  ``dt <= cfl * min_i m_i / (sum_{j!=i} d_ij + sum_k lambda_ik |c_ii^k|)``, cfl <= 1.
  Unlike a ``theta h`` times stiffness-matrix viscosity, this holds on any mesh (the
  stiffness matrix has zero couplings across the diagonals of right triangles, where
  c_ij does not vanish);
- *consistent*: G is a consistent gradient on the (centrally symmetric) structured
  meshes, and the viscosity is ``O(lambda h) Lap F``;
- *stable*: the update is monotone and commutes with adding constants (G and the
  viscosity ignore constants), hence non-expansive in the max norm.

By Barles-Souganidis it converges to the viscosity solution; first order at best,
1/2 guaranteed. The Hamiltonian is a UFL expression of x and G (closed forms above),
interpolated at the vertices with :class:`dolfinx.fem.Expression` every step (compiled,
no Python loop over vertices); the numeric running-cost case uses numpy on the owned
vertices instead.

**Boundary.** No boundary condition is imposed: boundary vertices take the same update
with the one-sided G and the viscosity of their interior neighbours. There the viscosity
is ``O(1)`` times a one-sided first derivative, which amounts to velocities shifted
into the box: the box is made invariant (a state-constraint-type condition). It is
stable and monotone, but it is not the free-space problem: the computed F is meaningful
where the reachable set over the remaining depth stays inside the box, i.e. at distance
``> lambda_max (T - t)`` from the boundary (plus a few cells). Choose the box with that
margin around the states of interest (:func:`box_around`).

**Feedback** (:meth:`HJBSolver.feedback`, :func:`closed_loop`). ``p = G(v, t)`` is
evaluated at any state with :mod:`dolfinx.geometry` (the depth level nearest t; a
collective call: the owning rank evaluates, everyone receives it), the control is
``c*(v, p)``, and the state takes explicit Euler steps ``v + tau sigma(a - B_b v)`` (the
ResNet); the closed-loop cost is ``Phi(v(T)) + sum tau L(c)``.

**Open-loop comparison** (:func:`open_loop`). The same reduced network as a
:class:`fem_dnn.network.Network`: n DG0 cells of Y = (0, 1) (``w_j = 1/n``), explicit
Euler with N layers, trained with box L-BFGS (:class:`fem_dnn.optimize.Optimizer`) on
:class:`fem_dnn.learning.functional.ReducedFunctional` with a fixed readout ``W = diag(1/w)``,
``mu = 0``, so that ``O = v(T)`` and the network's loss is
``Phi(v) = 1/2 sum_i w_i (logistic(v_i) - C_i)^2`` (:func:`readout_cost`).

Parallel: the state-space mesh is partitioned by DOLFINx; the operators are distributed
PETSc matrices, ghosts are updated by DOLFINx scatters. Results agree with the serial
ones to round-off (compare with :meth:`HJBSolver.natural`, in coordinate order).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.fem.petsc
import dolfinx.geometry
import ufl
from dolfinx import fem, mesh as dmesh

from fem_dnn._mpi import all_finite
from fem_dnn.core import forms
from fem_dnn.core.activation import Activation, get_activation
from fem_dnn.core.domain import lexicographic_order, locate_points
from fem_dnn.errors import InputError, NonFiniteError

__all__ = [
    "ReducedModel",
    "quadratic_cost",
    "readout_cost",
    "box_around",
    "HJBSolver",
    "SCHEMES",
    "SemiLagrangian",
    "ClosedLoop",
    "closed_loop",
    "open_loop",
    "OpenLoop",
    "bias_value",
]


# --------------------------------------------------------------------------- the model
def _box(box, shape, name):
    lo, hi = (np.broadcast_to(np.asarray(x, dtype=float), shape).copy() for x in box)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
        raise InputError(f"the box of {name} must be finite with lo <= hi, got {box!r}")
    return lo, hi


class ReducedModel:
    """A reduced network on R^n: ``dv_i/dt = sigma(a_i - sum_j b_ij w_j v_j)``.

    Args:
        n: number of neurons (state dimension), 1 to 3 for the HJB solver.
        activation: sigma (non-decreasing: every activation of the package).
        a: box ``(a-, a+)`` of the bias, scalars or arrays of shape (n,).
        b: box ``(b-, b+)`` of the selection weight, scalars or (n, n); None: b = 0.
        weights: node weights w_j (default ``1/n``: n equal DG0 cells of (0, 1)).
        lam: running-cost weight lambda >= 0,
            ``L = lambda/2 (sum_i w_i a_i^2 + sum_ij w_i w_j b_ij^2)``.
    """

    def __init__(self, n: int, activation="tanh", a=(-1.0, 1.0), b=None, weights=None, lam: float = 0.0):
        if int(n) != n or n < 1:
            raise InputError(f"the reduced network needs n >= 1 neurons, got {n!r}")
        self.n = n = int(n)
        self.sigma: Activation = get_activation(activation)
        self.a_lo, self.a_hi = _box(a, (n,), "a")
        self.b_lo, self.b_hi = _box((0.0, 0.0) if b is None else b, (n, n), "b")
        self.w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float).reshape(n)
        if np.any(self.w <= 0):
            raise InputError(f"node weights must be positive, got {self.w}")
        if not (np.isfinite(lam) and lam >= 0):
            raise InputError(f"running-cost weight lambda must be >= 0, got {lam!r}")
        self.lam = float(lam)

    # ---- dynamics and cost, numpy; v, p of shape (n, P), a (n, P), b (n, n, P)
    def preactivation(self, v, a, b):
        """``u_i = a_i - sum_j b_ij w_j v_j``."""
        return a - np.einsum("ijp,j,jp->ip", b, self.w, v)

    def velocity(self, v, a, b):
        """``sigma(a - B_b v)``."""
        return self.sigma.sigma(self.preactivation(v, a, b))

    def running_cost(self, a, b):
        """``lambda/2 (sum_i w_i a_i^2 + sum_ij w_i w_j b_ij^2)``, shape (P,)."""
        if self.lam == 0.0:
            return np.zeros(np.shape(a)[1:])
        w = self.w
        return 0.5 * self.lam * (np.einsum("i,ip->p", w, a * a) + np.einsum("i,j,ijp->p", w, w, b * b))

    def u_range(self, v):
        """``(u^min, u^max)`` of ``a - B_b v`` over the box, each (n, P)."""
        v = np.asarray(v, dtype=float)
        bv_hi = self.b_hi[:, :, None] * v[None]
        bv_lo = self.b_lo[:, :, None] * v[None]
        wsum = lambda x: np.einsum("j,ijp->ip", self.w, x)  # noqa: E731
        umin = self.a_lo[:, None] - wsum(np.maximum(bv_hi, bv_lo))
        umax = self.a_hi[:, None] - wsum(np.minimum(bv_hi, bv_lo))
        return umin, umax

    def speeds(self, v):
        """``lambda_k(v) = max_A |sigma(u_k)|``: the Lipschitz constant of H in p_k, (n, P)."""
        umin, umax = self.u_range(v)
        s = self.sigma.sigma
        return np.maximum(np.abs(s(umin)), np.abs(s(umax)))

    def _nearest_zero(self):
        return np.clip(0.0, self.a_lo, self.a_hi), np.clip(0.0, self.b_lo, self.b_hi)

    def controls(self, v, p):
        """The argmin ``(a, b)`` of ``p . sigma(a - B_b v) + L(a, b)`` over the box.

        v, p of shape (n, P); returns a (n, P) and b (n, n, P). Bang-bang without
        running cost; clipped closed form with running cost and identity sigma; 1-D
        numerical search along the KKT curve otherwise (see the module doc). ``p_i = 0``
        picks the box point nearest 0 (the least running cost).
        """
        v = np.asarray(v, dtype=float).reshape(self.n, -1)
        p = np.asarray(p, dtype=float).reshape(self.n, -1)
        P = v.shape[1]
        if self.lam == 0.0:
            a0, b0 = self._nearest_zero()
            a = np.where(p > 0, self.a_lo[:, None], np.where(p < 0, self.a_hi[:, None], a0[:, None]))
            # p_i > 0: make sum_j b_ij w_j v_j large; p_i < 0: small
            s = np.sign(p)[:, None, :] * np.sign(v)[None, :, :]
            b = np.where(s > 0, self.b_hi[:, :, None], np.where(s < 0, self.b_lo[:, :, None], b0[:, :, None]))
            return a, np.broadcast_to(b, (self.n, self.n, P)).copy()
        if self.sigma.name == "identity":
            return self._curve(p, v)
        # sigma non-linear: minimise phi(nu) = p_i sigma(u_i(nu)) + L_i(nu) over
        # nu in [min(0, p s'max), max(0, p s'max)] (nu = p_i sigma'(u_i) at a KKT point)
        smax = self.sigma.lipschitz
        lo, hi = np.minimum(0.0, p * smax), np.maximum(0.0, p * smax)
        K = 33
        grid = (lo[..., None] + (hi - lo)[..., None] * np.linspace(0.0, 1.0, K)).reshape(self.n, P * K)
        vals = self._row_cost(grid, np.repeat(v, K, axis=1), np.repeat(p, K, axis=1)).reshape(self.n, P, K)
        k = np.argmin(vals, axis=-1)
        h = (hi - lo) / (K - 1)
        left, right = np.maximum(lo, lo + (k - 1) * h), np.minimum(hi, lo + (k + 1) * h)
        g = 0.5 * (np.sqrt(5.0) - 1.0)
        for _ in range(40):  # golden section in the bracket of the best grid point
            x1, x2 = right - g * (right - left), left + g * (right - left)
            lower = self._row_cost(x1, v, p) <= self._row_cost(x2, v, p)
            right = np.where(lower, x2, right)
            left = np.where(lower, left, x1)
        return self._curve(0.5 * (left + right), v)

    def _curve(self, nu, v):
        """The running cost's minimiser on the box for multiplier nu (n, Q):
        ``a_i = clip(-nu_i/(lambda w_i))``, ``b_ij = clip(nu_i v_j/(lambda w_i))``."""
        lw = self.lam * self.w
        a = np.clip(-nu / lw[:, None], self.a_lo[:, None], self.a_hi[:, None])
        b = np.clip(nu[:, None, :] * v[None, :, :] / lw[:, None, None], self.b_lo[:, :, None], self.b_hi[:, :, None])
        return a, b

    def _row_cost(self, nu, v, p):
        """Row i of the Hamiltonian's objective along the curve: ``p_i sigma(u_i) +
        lambda/2 w_i (a_i^2 + sum_j w_j b_ij^2)``, shape (n, Q)."""
        a, b = self._curve(nu, v)
        cost = 0.5 * self.lam * self.w[:, None] * (a * a + np.einsum("ijq,j->iq", b * b, self.w))
        return p * self.sigma.sigma(self.preactivation(v, a, b)) + cost

    def hamiltonian(self, v, p):
        """``H(v, p) = min_A {p . sigma(a - B_b v) + L(a, b)}``, shape (P,) (numpy)."""
        v = np.asarray(v, dtype=float).reshape(self.n, -1)
        p = np.asarray(p, dtype=float).reshape(self.n, -1)
        if self.lam == 0.0:
            umin, umax = self.u_range(v)
            s = self.sigma.sigma
            return np.sum(np.minimum(p * s(umin), p * s(umax)), axis=0)
        a, b = self.controls(v, p)
        return np.sum(p * self.velocity(v, a, b), axis=0) + self.running_cost(a, b)

    def hamiltonian_ufl(self, x, p):
        """H as a UFL expression of the state coordinates x and a UFL vector p, when it
        has a closed form (no running cost; or running cost with identity sigma);
        None otherwise."""
        n, w = self.n, self.w
        s = self.sigma.ufl
        if self.lam == 0.0:
            H = 0
            for i in range(n):
                umin, umax = float(self.a_lo[i]), float(self.a_hi[i])
                for j in range(n):
                    if self.b_lo[i, j] == 0.0 and self.b_hi[i, j] == 0.0:
                        continue
                    hi_, lo_ = float(self.b_hi[i, j]) * x[j], float(self.b_lo[i, j]) * x[j]
                    umin = umin - w[j] * ufl.max_value(hi_, lo_)
                    umax = umax - w[j] * ufl.min_value(hi_, lo_)
                H = H + ufl.min_value(p[i] * s(umin), p[i] * s(umax))
            return H
        if self.sigma.name != "identity":
            return None
        lam = self.lam
        H = 0

        def clip(z, lo, hi):
            return ufl.min_value(ufl.max_value(z, float(lo)), float(hi))

        for i in range(n):
            lw = lam * w[i]
            a = clip(-p[i] / lw, self.a_lo[i], self.a_hi[i])
            H = H + p[i] * a + 0.5 * lw * a * a
            for j in range(n):
                if self.b_lo[i, j] == 0.0 and self.b_hi[i, j] == 0.0:
                    continue
                b = clip(p[i] * x[j] / lw, self.b_lo[i, j], self.b_hi[i, j])
                H = H - p[i] * w[j] * x[j] * b + 0.5 * lw * w[j] * b * b
        return H


def quadratic_cost(target):
    """``Phi(v) = 1/2 |v - v_target|^2`` as a callable of v with shape (n, P)."""
    t = np.asarray(target, dtype=float).reshape(-1, 1)

    def Phi(v):
        d = np.asarray(v, dtype=float)[: len(t)] - t
        return 0.5 * np.sum(d * d, axis=0)

    Phi.target = t[:, 0]
    return Phi


def readout_cost(C, weights):
    """The network's readout loss with ``O = v(T)`` (W = diag(1/w), mu = 0):
    ``Phi(v) = 1/2 sum_i w_i (logistic(v_i) - C_i)^2`` (docs/model.md §2, function setting)."""
    C = np.asarray(C, dtype=float).reshape(-1, 1)
    w = np.asarray(weights, dtype=float).reshape(-1, 1)
    if np.any(C <= 0) or np.any(C >= 1):
        raise InputError(f"readout targets C must lie in (0, 1) (logistic), got {C[:, 0]}")

    def Phi(v):
        e = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(v, dtype=float)[: len(C)])) - C
        return 0.5 * np.sum(w * e * e, axis=0)

    Phi.C, Phi.weights = C[:, 0], w[:, 0]
    return Phi


def box_around(model: ReducedModel, points, T: float, margin: float = 0.5):
    """A state box ``(lower, upper)`` that holds every state reachable from ``points``
    (shape (n,) or (P, n)) in depth T, plus ``margin``: the velocity is bounded by
    ``sigma`` on the preactivation range, which is bounded on bounded states: a box B
    with ``points +- T max_B |velocity|`` inside B holds every trajectory. Found by
    fixed-point iteration (the speeds grow with |v| when b != 0).

    Raises:
        InputError: when the iteration does not settle (e.g. an unbounded activation
            with large b and T): choose the box by hand then.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=float)).reshape(-1, model.n)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    for _ in range(100):
        corners = np.array(np.meshgrid(*[(l_, h_) for l_, h_ in zip(lo, hi)], indexing="ij")).reshape(model.n, -1)
        speed = model.speeds(corners).max(axis=1)  # |sigma(u)| is largest at a corner
        new_lo, new_hi = pts.min(axis=0) - T * speed, pts.max(axis=0) + T * speed
        if np.all(new_lo >= lo - 1e-12) and np.all(new_hi <= hi + 1e-12):
            return lo - margin, hi + margin
        lo, hi = np.minimum(lo, new_lo), np.maximum(hi, new_hi)
    raise InputError("no bounded box holds the reachable set (the speeds grow too fast); give the state box by hand")


def bias_value(v, t, T, a_lo, a_hi, target, cost: str = "quadratic", activation="identity"):
    """Exact value for n = 1, b = 0, a in [a-, a+] and no running cost: the reachable set
    from v over the depth ``s = T - t`` is the interval ``[v + s sigma(a-), v + s
    sigma(a+)]`` (constant velocities in the box ``sigma([a-, a+])``, sigma non-decreasing),
    so with ``d = dist(v_target, that interval)``

    - ``cost="quadratic"``, ``Phi = 1/2 (v - v_target)^2``: ``F(v, t) = 1/2 d^2``;
    - ``cost="l1"``, ``Phi = |v - v_target|``: ``F(v, t) = d``.

    v of any shape (elementwise); for n neurons with ``Phi = sum_i phi(v_i)`` the value is
    the sum over the coordinates (each moves at its own speed)."""
    if cost not in ("quadratic", "l1"):
        raise InputError(f"bias_value knows the costs 'quadratic' and 'l1', not {cost!r}")
    sig = get_activation(activation).sigma
    s_lo, s_hi = (sig(np.asarray(a, dtype=float)) for a in (a_lo, a_hi))
    v = np.asarray(v, dtype=float)
    s = T - t
    d = np.maximum(0.0, np.maximum(v + s_lo * s - target, target - v - s_hi * s))
    return 0.5 * d * d if cost == "quadratic" else d


# --------------------------------------------------------------------------- the solver
_SHAPES = {1: "interval", 2: "rectangle", 3: "box"}

#: The depth schemes of the HJB solver (:class:`HJBSolver` ``scheme``).
SCHEMES = ("lax_friedrichs", "semi_lagrangian")


class HJBSolver:
    """The value function F(v, t) on a box of state space, by the monotone P1 scheme of
    the module doc, backward in depth from ``F(., T) = Phi``.

    Args:
        model: the reduced network (dynamics, box of controls, running cost).
        terminal: ``Phi``, a callable of v with shape (n, P) returning (P,).
        lower, upper: the state box ``[v-, v+]`` (arrays of length n; see
            :func:`box_around` and the module doc on the boundary).
        cells: cells per direction (int or n ints).
        T: final depth.
        comm: communicator of the state-space mesh.
        cfl: fraction (0, 1] of the monotonicity limit of the depth step.
        min_steps: at least this many stored depth levels after t = 0 (e.g. the network's
            N, or a multiple of it): ``steps = max(own, min_steps)`` with ``own`` the
            scheme's own step count. Lax-Friedrichs marches ``steps`` steps; the
            semi-Lagrangian scheme always marches its own count and computes the levels
            in between (see Attributes and docs/model.md §6.8).
        cell: ``"simplex"`` (interval/triangle/tetrahedron) or ``"tensor"``
            (quadrilateral/hexahedron, n >= 2).
        hamiltonian: ``"auto"`` (UFL closed form when there is one, else numpy),
            ``"ufl"`` or ``"numpy"`` (the Lax-Friedrichs scheme's H).
        keep_levels: keep F at every depth step (needed by the feedback).
        scheme: a name of :data:`SCHEMES`: ``"lax_friedrichs"`` (the monotone P1
            scheme with graph viscosity, the default) or ``"semi_lagrangian"`` (the
            Falcone-Ferretti scheme of :class:`SemiLagrangian`, no CFL limit).
        courant: semi-Lagrangian only: the depth step as ``dt = courant h / speed``
            (how many cells the characteristics cross a step; > 0).

    Attributes:
        steps, dt: the stored depth levels: ``steps + 1`` levels at ``t_k = k dt``,
            ``dt = T / steps``, ``steps = max(own, min_steps)`` (:attr:`levels`,
            :meth:`level_of`, the feedback and the closed loop's default layers).
        march_steps, march_dt: the steps the scheme takes, ``march_dt = T / march_steps``.
            Lax-Friedrichs: ``march_steps = steps`` (more steps than its own are smaller
            CFL steps under the same viscosity; measured on the bias problems, its max
            error over the levels grows by 1-11% at 8x its own count, docs/model.md §6.3).
            Semi-Lagrangian: ``march_steps = own = ceil(T speed / (courant h))`` whatever
            ``min_steps``: every step re-interpolates (Q1) and smears a kink, so more,
            smaller steps would raise the error (measured 2-6x at 2-8x the own count on
            kinked values; docs/model.md §6.8).
        substeps: semi-Lagrangian with ``steps > march_steps``: each march step is split
            into ``substeps = min(ceil(steps / march_steps), MAX_SUBSTEPS)`` equal parts;
            the level at each interior point is one fractional semi-Lagrangian step of
            ``i march_dt / substeps`` (i = 1 .. substeps - 1) from the march level above
            (not chained), and a stored level between two such points is their linear
            interpolation in depth (a convex combination: monotone, exact where the
            points coincide, e.g. for ``min_steps`` a multiple of the own count up to
            ``MAX_SUBSTEPS`` times). 1 otherwise (every stored level is a march level).
        dt_max: the monotonicity limit of the Lax-Friedrichs step (``cfl = 1``).
        h: the largest cell size; speed: the largest speed lambda over the box.
        levels: ``(steps + 1, n_owned)`` owned values of F at ``t_k = k dt`` after
            :meth:`solve`.
        MAX_SUBSTEPS: (class attribute, 4) the most parts of a semi-Lagrangian march step,
            i.e. at most 3 fractional-step matrices besides the march step's. Measured
            (docs/model.md §6.8): 8 parts give the same max errors as 4 on the test
            problems at 2.5 times the matrices' memory in 2-D.
    """

    MAX_SUBSTEPS = 4

    def __init__(
        self,
        model: ReducedModel,
        terminal,
        lower,
        upper,
        cells,
        T: float = 1.0,
        comm: MPI.Comm = MPI.COMM_WORLD,
        cfl: float = 0.9,
        min_steps: int = 1,
        cell: str = "simplex",
        hamiltonian: str = "auto",
        keep_levels: bool = True,
        scheme: str = "lax_friedrichs",
        courant: float = 2.0,
    ):
        n = model.n
        if scheme not in SCHEMES:
            raise InputError(f"unknown HJB scheme {scheme!r}; choose one of {list(SCHEMES)}")
        if scheme == "semi_lagrangian":
            if not (np.isfinite(courant) and courant > 0):
                raise InputError(f"courant (the semi-Lagrangian depth step in cells) must be > 0, got {courant!r}")
            if model.lam != 0.0:
                raise InputError("the semi-Lagrangian scheme takes no running cost (lam = 0); use scheme='lax_friedrichs'")
        if n not in _SHAPES:
            raise InputError(f"the HJB solver works on state spaces of dimension 1 to 3, not {n}")
        if not (0.0 < cfl <= 1.0):
            raise InputError(f"cfl must lie in (0, 1], got {cfl!r}")
        if not (np.isfinite(T) and T > 0):
            raise InputError(f"final depth T must be positive, got {T!r}")
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy()
        if np.any(upper <= lower):
            raise InputError(f"state box needs lower < upper, got {lower}, {upper}")
        nn = [int(cells)] * n if np.isscalar(cells) else [int(c) for c in cells]
        if len(nn) != n or min(nn) < 1:
            raise InputError(f"cells must be {n} positive integers, got {cells!r}")
        if cell not in ("simplex", "tensor"):
            raise InputError(f"cell must be 'simplex' or 'tensor', not {cell!r}")
        if hamiltonian not in ("auto", "ufl", "numpy"):
            raise InputError(f"hamiltonian must be 'auto', 'ufl' or 'numpy', not {hamiltonian!r}")
        self.model, self.Phi, self.T, self.comm = model, terminal, float(T), comm
        self.lower, self.upper, self.cells = lower, upper, nn
        if n == 1:
            msh = dmesh.create_interval(comm, nn[0], [lower[0], upper[0]])
        elif n == 2:
            ct = dmesh.CellType.triangle if cell == "simplex" else dmesh.CellType.quadrilateral
            msh = dmesh.create_rectangle(comm, [list(lower), list(upper)], nn, ct)
        else:
            ct = dmesh.CellType.tetrahedron if cell == "simplex" else dmesh.CellType.hexahedron
            msh = dmesh.create_box(comm, [list(lower), list(upper)], nn, ct)
        self.mesh = msh
        self.V = V = fem.functionspace(msh, ("Lagrange", 1))
        imap = V.dofmap.index_map
        self.n_owned = nl = imap.size_local
        self.x = V.tabulate_dof_coordinates()[:, :n].T.copy()  # (n, owned + ghosts)
        self.h = float(np.max((upper - lower) / np.array(nn)))

        # ---- operators, assembled once from the UFL forms
        u, vt = ufl.TrialFunction(V), ufl.TestFunction(V)
        m = dolfinx.fem.petsc.assemble_vector(fem.form(forms.lumped_mass(vt)))
        m.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.m = m.array[:nl].copy()
        self._minv = m.duplicate()
        self._minv.array[:] = 1.0 / m.array_r
        m.destroy()
        C = []
        for k in range(n):
            e_k = ufl.as_vector([1.0 if j == k else 0.0 for j in range(msh.geometry.dim)])
            A = dolfinx.fem.petsc.assemble_matrix(fem.form(ufl.inner(ufl.grad(u), e_k) * vt * ufl.dx))
            A.assemble()
            C.append(A)
        lam_k = model.speeds(self.x[:, :nl])  # (n, owned)
        self.D, dt_max = self._viscosity(C, lam_k)
        for A in C:
            A.diagonalScale(L=self._minv)  # M^-1 C_k: the lumped projection of d/dv_k
        self.C = C
        self.D.diagonalScale(L=self._minv)
        self.speed = comm.allreduce(float(lam_k.max()) if nl else 0.0, op=MPI.MAX)
        self.scheme = scheme
        if scheme == "semi_lagrangian":  # no monotonicity limit: the step is a number of cells
            own = int(np.ceil(self.T * self.speed / (courant * self.h))) if self.speed > 0 else 1
        else:
            own = int(np.ceil(self.T / (cfl * dt_max))) if np.isfinite(dt_max) else 1
        self.steps = max(own, int(min_steps))
        self.dt = self.T / self.steps
        self.march_steps = own if scheme == "semi_lagrangian" else self.steps
        self.march_dt = self.T / self.march_steps
        self.substeps = 1
        if self.steps > self.march_steps:
            self.substeps = min(-(-self.steps // self.march_steps), self.MAX_SUBSTEPS)
        self.dt_max = dt_max
        self._sl_grid = None  # the global dof of every grid vertex (SemiLagrangian._grid)
        self._sl = SemiLagrangian(self) if scheme == "semi_lagrangian" else None
        self._sl_sub = None  # the fractional steps, built by the first solve that keeps levels

        # ---- the Hamiltonian at the vertices
        self.F = fem.Function(V, name="F")
        self._G = [fem.Function(V, name=f"G{k}") for k in range(n)]
        self._H = fem.Function(V, name="H")
        self._DF = self.F.x.petsc_vec.duplicate()
        expr = None
        if hamiltonian in ("auto", "ufl"):
            Hu = model.hamiltonian_ufl(ufl.SpatialCoordinate(msh), ufl.as_vector([g for g in self._G]))
            if Hu is None and hamiltonian == "ufl":
                raise InputError("this Hamiltonian has no closed form in UFL; use hamiltonian='numpy'")
            if Hu is not None:
                expr = fem.Expression(Hu, V.element.interpolation_points)
        self._expr = expr
        self.keep_levels = keep_levels
        self.levels = None  # (steps + 1, n_owned): F at t_k = k dt
        self._tree = None
        self._grad_level = None

    # ---- construction helpers
    def _viscosity(self, C, lam_k):
        """Graph viscosity ``D = M^-1 (d_ij)`` with ``d_ij = sum_k lambda_ik |c_ij^k|``
        (j != i), ``d_ii = -sum_j d_ij``, and the largest monotone depth step."""
        nl = self.n_owned
        r0 = self.V.dofmap.index_map.local_range[0]
        indptr, cols, _ = C[0].getValuesCSR()
        absc = np.zeros(len(cols))
        rows = np.repeat(np.arange(nl), np.diff(indptr))
        is_diag = cols == rows + r0
        for k, A in enumerate(C):
            ip, cc, vals = A.getValuesCSR()
            if not (np.array_equal(ip, indptr) and np.array_equal(cc, cols)):
                raise RuntimeError("gradient matrices have different sparsity patterns")
            absc += lam_k[k][rows] * np.abs(vals)
        diag_c = np.bincount(rows[is_diag], weights=absc[is_diag], minlength=nl)
        d = np.where(is_diag, 0.0, absc)
        dsum = np.bincount(rows, weights=d, minlength=nl)
        d[is_diag] = -dsum[rows[is_diag]]
        N = self.V.dofmap.index_map.size_global
        D = PETSc.Mat().createAIJ(((nl, N), (nl, N)), csr=(indptr.astype(PETSc.IntType), cols.astype(PETSc.IntType), d), comm=self.comm)
        D.assemble()
        rate = (dsum + diag_c) / self.m
        rmax = self.comm.allreduce(float(rate.max()) if nl else 0.0, op=MPI.MAX)
        return D, (1.0 / rmax if rmax > 0 else np.inf)

    # ---- the scheme
    def _gradient(self, Fvec):
        """G = M^-1 C F (owned and ghost values of the functions ``self._G``)."""
        for A, g in zip(self.C, self._G):
            A.mult(Fvec, g.x.petsc_vec)
            g.x.scatter_forward()

    def _hamiltonian(self):
        nl = self.n_owned
        if self._expr is not None:
            self._H.interpolate(self._expr)
            return self._H.x.array[:nl]
        p = np.array([g.x.array[:nl] for g in self._G])
        return self.model.hamiltonian(self.x[:, :nl], p)

    def _substep_operators(self):
        """The fractional semi-Lagrangian steps ``i march_dt / substeps``, i = 1 ..
        substeps - 1 (collective; built once)."""
        if self._sl_sub is None:
            q = self.substeps
            self._sl_sub = [SemiLagrangian(self, i * self.march_dt / q) for i in range(1, q)]
        return self._sl_sub

    def _store_between(self, j, top, subs, bottom):
        """Store the levels k with ``t_j <= t_k < t_{j+1}`` (march levels j, j + 1) from the
        march step's sub-levels: ``top`` at t_{j+1}, ``subs[i-1]`` at ``t_{j+1} - i
        march_dt / q``, ``bottom`` at t_j; linear in depth between neighbouring ones.
        Integer arithmetic: a level on a sub-level is copied, not interpolated."""
        S, M, q = self.march_steps, self.steps, self.substeps

        def sub(b):  # the sub-level b march_dt / q above t_j
            return bottom if b == 0 else (top if b == q else subs[q - b - 1])

        for k in range(-(-j * M // S), ((j + 1) * M - 1) // S + 1):
            b, r = divmod((k * S - j * M) * q, M)  # t_k = t_j + (b + r / M) march_dt / q
            self.levels[k] = sub(b) if r == 0 else (1.0 - r / M) * sub(b) + (r / M) * sub(b + 1)

    def solve(self, monitor=False):
        """March backward from ``F(T) = Phi`` to t = 0; returns F(., 0) (owned values).

        With ``keep_levels`` F is kept at every stored level t_k = k dt (:attr:`levels`;
        the semi-Lagrangian levels between its march levels as described under
        ``substeps`` in the class doc)."""
        nl, dt = self.n_owned, self.march_dt
        S = self.march_steps
        F = self.F
        F.interpolate(lambda x: self.Phi(x[: self.model.n]))
        Fa = F.x.array
        keep = self.keep_levels
        between = keep and self.steps != S  # semi-Lagrangian levels between the march levels
        if keep:
            self.levels = np.empty((self.steps + 1, nl))
            self.levels[self.steps] = Fa[:nl]
        subs = self._substep_operators() if between else []
        Fvec = F.x.petsc_vec
        for j in range(S - 1, -1, -1):
            if between:
                top = Fa[:nl].copy()
                fractions = [op.step(Fvec) for op in subs]
            if self._sl is not None:
                Fa[:nl] = self._sl.step(Fvec)
            else:
                self._gradient(Fvec)
                H = self._hamiltonian()
                self.D.mult(Fvec, self._DF)
                Fa[:nl] += dt * (H + self._DF.array_r)
            F.x.scatter_forward()
            if between:
                self._store_between(j, top, fractions, Fa[:nl])
            elif keep:
                self.levels[j] = Fa[:nl]
            if monitor and self.comm.rank == 0 and j % max(S // 10, 1) == 0:
                print(f"hjb step t = {j * dt:.4f}", flush=True)
        if not all_finite(self.comm, Fa[:nl]):
            raise NonFiniteError("the HJB value function is not finite", 0)
        self._grad_level = None
        return Fa[:nl].copy()

    # ---- evaluation
    def level_of(self, t: float) -> int:
        """Index of the stored depth level nearest t."""
        if not (-1e-12 <= t <= self.T + 1e-12):
            raise InputError(f"depth t={t} is outside [0, {self.T}]")
        return int(min(max(round(t / self.dt), 0), self.steps))

    def _set_level(self, k):
        if self.levels is None:
            raise InputError("solve() with keep_levels=True first")
        self.F.x.array[: self.n_owned] = self.levels[k]
        self.F.x.scatter_forward()

    def function(self, k: int) -> fem.Function:
        """F_h at depth level k as a DOLFINx function (e.g. for XDMF output). It is the
        solver's own work function: the next evaluation overwrites it."""
        self._set_level(k)
        self._grad_level = None
        return self.F

    def _locate(self, pts):
        """Owned cell of each point on the rank that evaluates it (lowest rank owning a
        cell that contains it), -1 elsewhere. Collective."""
        msh = self.mesh
        tdim = msh.topology.dim
        if self._tree is None:
            self._tree = dolfinx.geometry.bb_tree(msh, tdim, padding=1e-10)
        found, bad = locate_points(msh, self._tree, pts)
        if bad is not None:
            raise InputError(
                f"state {pts[bad, : self.model.n]} is outside the HJB box [{self.lower}, {self.upper}]; enlarge the box"
            )
        return found

    def _eval(self, fns, v):
        pts = np.zeros((1, 3))
        pts[0, : self.model.n] = np.asarray(v, dtype=float).reshape(self.model.n)
        cells = self._locate(pts)
        out = np.zeros(len(fns))
        if cells[0] >= 0:
            for i, fn in enumerate(fns):
                out[i] = fn.eval(pts, cells).ravel()[0]
        self.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out

    def value(self, v, t: float = 0.0) -> float:
        """F_h(v, t) at any state in the box (collective; level nearest t)."""
        self._set_level(self.level_of(t))
        self._grad_level = None
        return float(self._eval([self.F], v)[0])

    def gradient(self, v, t: float = 0.0) -> np.ndarray:
        """``p = G_h(v, t)``: the lumped L2 projection of D_v F, the gradient the scheme
        uses, evaluated at v (collective)."""
        k = self.level_of(t)
        if self._grad_level != k:
            self._set_level(k)
            self._gradient(self.F.x.petsc_vec)
            self._grad_level = k
        return self._eval(self._G, v)

    def feedback(self, v, t: float):
        """The optimal feedback ``c*(v, t) = argmin_A {G_h(v,t) . sigma(a - B_b v) + L}``:
        returns (a (n,), b (n, n), p (n,))."""
        p = self.gradient(v, t)
        a, b = self.model.controls(np.asarray(v, dtype=float)[:, None], p[:, None])
        return a[:, 0], b[:, :, 0], p

    def natural(self, k: int = 0, gradient: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(coordinates (n, V), values)`` of depth level k on every rank, sorted by
        coordinate (x first): the same arrays on any number of ranks. Values are F_h
        (V,) or, with ``gradient=True``, the projected gradient G_h (n, V)."""
        if self.levels is None:
            raise InputError("solve() with keep_levels=True first")
        if gradient:
            self._set_level(k)
            self._gradient(self.F.x.petsc_vec)
            self._grad_level = k
            vals = np.array([g.x.array[: self.n_owned] for g in self._G]).T
        else:
            vals = self.levels[k]
        x = np.concatenate(self.comm.allgather(self.x[:, : self.n_owned].T), axis=0).T
        f = np.concatenate(self.comm.allgather(vals), axis=0)
        order = lexicographic_order(x)
        return x[:, order], (f[order].T if gradient else f[order])

    def errors(self, exact, t: float = 0.0, inner=None) -> dict:
        """Max and lumped-L1/L2 errors of F_h(., t) against a callable ``exact(v)``
        ((n, P) -> (P,)) on the vertices inside the box ``inner = (lo, hi)``."""
        k = self.level_of(t)
        nl = self.n_owned
        x = self.x[:, :nl]
        e = np.abs(self.levels[k] - exact(x))
        sel = np.ones(nl, dtype=bool)
        if inner is not None:
            lo, hi = (np.asarray(z, dtype=float).reshape(-1, 1) for z in inner)
            sel = np.all((x >= lo - 1e-12) & (x <= hi + 1e-12), axis=0)
        emax = self.comm.allreduce(float(e[sel].max()) if sel.any() else 0.0, op=MPI.MAX)
        l1 = self.comm.allreduce(float(np.sum(self.m[sel] * e[sel])))
        l2 = np.sqrt(self.comm.allreduce(float(np.sum(self.m[sel] * e[sel] ** 2))))
        return {"max": emax, "l1": l1, "l2": l2}

    def destroy(self):
        """Destroy the PETSc objects (collective)."""
        for obj in (*self.C, self.D, self._minv, self._DF):
            obj.destroy()
        if self._sl is not None:
            self._sl.destroy()
        for op in self._sl_sub or ():
            op.destroy()


class SemiLagrangian:
    """The semi-Lagrangian (Falcone-Ferretti) step of :class:`HJBSolver`, without running
    cost (docs/model.md §6.8):

        F^k(x_i) = min_{c in A} I[F^{k+1}](x_i + dt sigma(a - B_b x_i)),

    one explicit Euler step of the characteristics from each vertex, ``I`` the
    multilinear (Q1) interpolant on the box's grid of vertices (the DOLFINx P1 dofs of
    either cell type), points beyond the box moved onto it. The velocities of the
    control box form the box ``prod_i [sigma(u_i^min(x)), sigma(u_i^max(x))]`` (each
    row's u_i ranges independently; sigma is non-decreasing), so the minimum is over an
    axis-aligned box of arrival points; on each grid cell I is multilinear, and a
    multilinear function on an axis-aligned box takes its minimum at a vertex, so the
    minimum over the arrival box is the minimum over the finite set whose coordinates
    are the box's ends and the grid lines between them: **exact**, with no control
    sampling. The scheme is monotone (I is a convex combination, the minimum of
    monotone maps is monotone), commutes with constants and has no CFL limit; the
    solver's march step is ``dt = T / march_steps`` (at most ``courant h / speed``), and
    its fractional steps (``substeps``) are the same operator with a shorter dt.

    The arrival points do not move between steps (the dynamics and the box do not
    depend on t), so the interpolation is one sparse PETSc matrix (rows: each owned
    vertex's candidate points; columns: global dofs, any rank's), assembled once; a step
    is one MatMult and a segmented minimum.

    Args:
        solver: the :class:`HJBSolver` (its mesh, model and box).
        dt: the depth step of this operator (default the solver's ``march_dt``).
    """

    def __init__(self, solver: "HJBSolver", dt: float | None = None):
        self.solver = sv = solver
        self.dt = dt = sv.march_dt if dt is None else float(dt)
        n, nl, comm = sv.model.n, sv.n_owned, sv.comm
        lower, cells = sv.lower, np.asarray(sv.cells)
        hd = (sv.upper - lower) / cells
        imap = sv.V.dofmap.index_map
        grid = self._grid(sv, hd)
        # the arrival box of each owned vertex and its candidate coordinates per direction
        x = sv.x[:, :nl]
        umin, umax = sv.model.u_range(x)
        s = sv.model.sigma.sigma
        lo = np.clip(x + dt * s(umin), lower[:, None], sv.upper[:, None])
        hi = np.clip(x + dt * s(umax), lower[:, None], sv.upper[:, None])
        axes = []
        for d in range(n):
            g_lo, g_hi = (lo[d] - lower[d]) / hd[d], (hi[d] - lower[d]) / hd[d]
            first = np.floor(g_lo).astype(np.int64) + 1  # grid lines strictly inside (g_lo, g_hi)
            inside = np.maximum(np.ceil(g_hi).astype(np.int64) - first, 0)
            K = int(comm.allreduce(int(inside.max()) if nl else 0, op=MPI.MAX)) + 2
            c = np.empty((nl, K))
            c[:, 0], c[:, -1] = lo[d], hi[d]
            for j in range(K - 2):  # padding repeats hi: duplicates do not change a minimum
                c[:, j + 1] = np.where(j < inside, lower[d] + (first + j) * hd[d], hi[d])
            axes.append(c)
        K = [a.shape[1] for a in axes]
        self.per_vertex = int(np.prod(K))
        # every combination of the directions' candidates: (n, nl * prod K) arrival points
        mesh = np.meshgrid(*[np.arange(k) for k in K], indexing="ij")
        pts = np.stack([axes[d][:, mesh[d].ravel()] for d in range(n)]).reshape(n, -1)
        cols, vals = self._weights(pts, lower, hd, cells, grid)
        R = pts.shape[1]
        N = imap.size_global
        indptr = np.arange(0, len(cols) + 1, 2**n, dtype=PETSc.IntType)  # 2^n non-zeros a row
        self.I = PETSc.Mat().createAIJ(((R, PETSc.DETERMINE), (nl, N)), csr=(indptr, cols.astype(PETSc.IntType), vals),
                                       comm=comm)
        self.I.assemble()
        self._Y = self.I.createVecLeft()

    @staticmethod
    def _grid(sv, hd):
        """The global dof of every grid vertex (the P1 dofs are the vertices of the box
        mesh), lexicographic in the grid's indices; computed once per solver (collective)."""
        grid = getattr(sv, "_sl_grid", None)
        if grid is not None:
            return grid
        nl, comm, cells = sv.n_owned, sv.comm, np.asarray(sv.cells)
        imap = sv.V.dofmap.index_map
        owned = np.arange(imap.local_range[0], imap.local_range[1])
        ijk = np.rint((sv.x[:, :nl] - sv.lower[:, None]) / hd[:, None]).astype(np.int64)
        flat = np.ravel_multi_index(tuple(ijk), tuple(cells + 1))
        grid = np.full(int(np.prod(cells + 1)), -1, dtype=np.int64)
        for f_r, g_r in zip(comm.allgather(flat), comm.allgather(owned)):
            grid[f_r] = g_r
        if np.any(grid < 0):
            raise RuntimeError("the state mesh's vertices are not the box's grid")
        sv._sl_grid = grid
        return grid

    @staticmethod
    def _weights(pts, lower, hd, cells, grid):
        """Q1 weights of points on the grid: 2^n (global dof, weight) per point, point by point."""
        n, P = pts.shape
        g = (pts - lower[:, None]) / hd[:, None]
        i0 = np.clip(np.floor(g).astype(np.int64), 0, cells[:, None] - 1)
        t = np.clip(g - i0, 0.0, 1.0)
        corners = np.array(np.meshgrid(*[[0, 1]] * n, indexing="ij")).reshape(n, -1)  # (n, 2^n)
        idx = i0[:, :, None] + corners[:, None, :]  # (n, P, 2^n)
        w = np.prod(np.where(corners[:, None, :] == 1, t[:, :, None], 1.0 - t[:, :, None]), axis=0)  # (P, 2^n)
        flat = np.ravel_multi_index(tuple(idx), tuple(cells + 1))
        return grid[flat].ravel(), w.ravel()

    def step(self, Fvec) -> np.ndarray:
        """One backward step: the owned values of F^k from the vector of F^{k+1}."""
        self.I.mult(Fvec, self._Y)
        return self._Y.array_r.reshape(-1, self.per_vertex).min(axis=1)

    def destroy(self):
        self.I.destroy()
        self._Y.destroy()


# --------------------------------------------------------------------------- closed loop
@dataclass
class ClosedLoop:
    """A closed-loop trajectory: states at the depth points, the controls of each step,
    and the cost ``Phi(v(T)) + sum tau L``."""

    t: np.ndarray  # (M+1,)
    v: np.ndarray  # (M+1, n)
    a: np.ndarray  # (M, n)
    b: np.ndarray  # (M, n, n)
    p: np.ndarray  # (M, n): the gradient that chose each control
    terminal: float
    running: float

    @property
    def cost(self) -> float:
        return self.terminal + self.running


def closed_loop(solver: HJBSolver, v0, steps: int | None = None) -> ClosedLoop:
    """The closed-loop trajectory from v0 at t = 0 with the optimal feedback of the
    solved value function: ``v_{m+1} = v_m + tau sigma(a_m - B_{b_m} v_m)`` (explicit
    Euler, the ResNet) with ``(a_m, b_m) = c*(v_m, t_m)``; ``steps`` layers (default the
    HJB depth steps). Collective; every rank gets the same trajectory."""
    model = solver.model
    M = solver.steps if steps is None else int(steps)
    if M < 1:
        raise InputError(f"closed loop needs at least one step, got {steps!r}")
    tau = solver.T / M
    n = model.n
    t = np.linspace(0.0, solver.T, M + 1)
    V = np.empty((M + 1, n))
    A, B, Ps = np.empty((M, n)), np.empty((M, n, n)), np.empty((M, n))
    V[0] = np.asarray(v0, dtype=float).reshape(n)
    running = 0.0
    for k in range(M):
        a, b, p = solver.feedback(V[k], t[k])
        A[k], B[k], Ps[k] = a, b, p
        V[k + 1] = V[k] + tau * model.velocity(V[k][:, None], a[:, None], b[:, :, None])[:, 0]
        running += tau * float(model.running_cost(a[:, None], b[:, :, None])[0])
    terminal = float(solver.Phi(V[-1][:, None])[0])
    return ClosedLoop(t, V, A, B, Ps, terminal, running)


# --------------------------------------------------------------------------- open loop
@dataclass
class OpenLoop:
    """The open-loop optimum of the same reduced network: controls per layer (natural
    order), the trajectory and the cost of the best start."""

    J: float
    a: np.ndarray  # (N, n)
    b: np.ndarray  # (N, n, n)
    v: np.ndarray  # (N+1, n)
    iterations: int
    starts: list  # the final J from every start (zero controls first)
    initial: list  # J at every start: the cost of the given controls in the network


def open_loop(model: ReducedModel, terminal, v0, N: int, T: float = 1.0, starts=(), method: str = "lbfgs",
              gttol: float = 1e-10, gatol: float = 1e-11, max_it: int = 200) -> OpenLoop:
    """The open-loop optimum of the reduced network with N Euler layers (the ResNet),
    ``min_{(a^k, b^k) in A} Phi(v_N) + sum_k tau L(a^k, b^k)``, by box L-BFGS
    (``method="lbfgs"``, :class:`~fem_dnn.optimize.Optimizer`) or by the paper's method
    of successive approximations (``method="msa"``, :func:`~fem_dnn.optimize.msa`: the
    PMP, bang-bang for lambda = 0) on the package's
    :class:`~fem_dnn.learning.functional.ReducedFunctional`.

    The network is n DG0 cells of Y = (0, 1) (``w = 1/n``; the model must have these
    weights and uniform scalar boxes), the terminal cost must be a :func:`readout_cost`
    (the readout is fixed to ``W = diag(1/w)``, ``mu = 0`` so that ``O = v(T)``; the
    constant ``lambda/2 ||W||^2 = lambda n/2`` the regulariser adds is subtracted). The
    problem is non-convex: it is solved from zero controls and from every start in
    ``starts`` (pairs ``(a (N, n), b (N, n, n))``, e.g. the closed-loop controls) and
    the best result is returned. The n-neuron problem is tiny, so it is solved
    redundantly on every rank (COMM_SELF): the same result on any number of ranks.
    """
    from fem_dnn.core.domain import Depth, NodeSpace, create_node_mesh
    from fem_dnn.learning.functional import ReducedFunctional
    from fem_dnn.network import Network
    from fem_dnn.learning import FixedReadout
    from fem_dnn.optimize import Optimizer, msa

    if method not in ("lbfgs", "msa"):
        raise InputError(f"open-loop method must be 'lbfgs' or 'msa', not {method!r}")
    n = model.n
    if not hasattr(terminal, "C"):
        raise InputError("open_loop needs the network's readout loss as terminal cost (readout_cost)")
    if not np.allclose(model.w, 1.0 / n):
        raise InputError("open_loop needs node weights 1/n (n equal DG0 cells of (0, 1))")
    box = {}
    for key, lo, hi in (("a", model.a_lo, model.a_hi), ("b", model.b_lo, model.b_hi)):
        if not (np.all(lo == lo.flat[0]) and np.all(hi == hi.flat[0]) and lo.flat[0] < hi.flat[0]):
            raise InputError(f"open_loop needs a uniform, non-degenerate box on {key}")
        box[key] = (float(lo.flat[0]), float(hi.flat[0]))
    space = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", n), "DG", 0, "lumped")
    net = Network(space, Depth(T=T, N=N), model.sigma, "euler")
    v0 = np.asarray(v0, dtype=float).reshape(1, n)
    J = ReducedFunctional(net, v0, np.asarray(terminal.C).reshape(1, n), "function", lam=model.lam)
    cs = J.controls
    W = np.diag(1.0 / model.w)
    const = 0.5 * model.lam * n
    best, tried, initial = None, [], []
    for a0, b0 in [(np.zeros((N, n)), np.zeros((N, n, n)))] + list(starts):
        m0 = cs.from_natural(np.clip(a0, *box["a"]), np.clip(b0, *box["b"]), W, np.zeros(n))
        initial.append(J(m0) - const)
        if method == "msa":
            res = msa(J, m0, box, max_it=max_it, monitor=False)
        else:
            # gatol: a start near the optimum (the closed loop) has a small initial
            # gradient, which a relative tolerance alone would chase to round-off
            opt = Optimizer(FixedReadout(J), "lbfgs", bounds=box, gttol=gttol, gatol=gatol, max_it=max_it,
                            monitor=False, petsc_options_prefix="fem_dnn_hjb_open_")
            res = opt.solve(m0)
            opt.destroy()
        val = res.J - const
        tried.append(val)
        if best is None or val < best[0]:
            nat = cs.natural(res.m)
            traj = J.trajectory(res.m)
            vs = np.array([traj.natural(k)[0] for k in range(N + 1)])
            best = (val, nat["a"], nat["b"], vs, res.iterations)
        m0.destroy(), res.m.destroy()
    J.destroy(), net.destroy(), space.destroy()
    return OpenLoop(best[0], best[1], best[2], best[3], best[4], tried, initial)
