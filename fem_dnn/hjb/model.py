"""The reduced network of the HJB solver: dynamics, Hamiltonian, costs (docs/model.md §6.1-6.2).

A *reduced network* has a few neurons, ``v in R^n`` (n = 1 to 3), and evolves in depth by
``dv_i/dt = sigma(a_i - sum_j b_ij w_j v_j)`` with controls ``(a, b)`` in a box, a terminal
cost ``Phi`` and an optional running cost ``L(a, b)`` (docs/model.md §6.1).
:class:`ReducedModel` holds the dynamics and the Hamiltonian ``H(v, p) = min_A {p .
sigma(a - B_b v) + L}`` with its argmin, in closed form where there is one (docs/model.md
§6.2); :func:`quadratic_cost` and :func:`readout_cost` are terminal costs,
:func:`box_around` a state box that holds the reachable set (docs/model.md §6.4), and
:func:`bias_value` the exact value the tests compare with (docs/model.md §6.7).
"""

import numpy as np
import ufl

from fem_dnn.core.activation import Activation, get_activation
from fem_dnn.errors import InputError

__all__ = ["ReducedModel", "quadratic_cost", "readout_cost", "box_around", "bias_value"]

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
        numerical search along the KKT curve otherwise (docs/model.md §6.2). ``p_i = 0``
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
