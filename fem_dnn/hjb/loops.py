"""Closed and open loop of a solved reduced network (docs/model.md §6.5-6.6).

:func:`closed_loop` drives the ResNet step with the optimal feedback of an
:class:`~fem_dnn.hjb.solver.HJBSolver` (docs/model.md §6.5); :func:`open_loop` trains the
same reduced network as a :class:`fem_dnn.network.Network`: n DG0 cells of Y = (0, 1), N
explicit Euler layers, box L-BFGS or MSA on
:class:`fem_dnn.learning.functional.ReducedFunctional` with the readout fixed so that
``O = v(T)`` and the loss is a :func:`~fem_dnn.hjb.model.readout_cost` (docs/model.md §6.6).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.errors import InputError
from fem_dnn.hjb.model import ReducedModel
from fem_dnn.hjb.solver import HJBSolver

__all__ = ["ClosedLoop", "closed_loop", "OpenLoop", "open_loop"]


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
    from fem_dnn.core.depth import Depth
    from fem_dnn.core.meshes import create_node_mesh
    from fem_dnn.core.nodes import NodeSpace
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
