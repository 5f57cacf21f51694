"""A posteriori estimates of the depth discretisation error (dual-weighted residuals).

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
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.errors import InputError

__all__ = ["depth_indicators", "mark", "refine_depth"]


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
    p = net._scheme.order if net.eps == 0 else min(net._scheme.order, 2)
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


def refine_depth(depth, marked):
    """The depth mesh with the ``marked`` layers split at their midpoints (a graded
    :class:`fem_dnn.core.domain.Depth`; controls move onto it with
    :func:`fem_dnn.optimize.transfer.transfer_controls`, each new layer taking its parent's)."""
    from fem_dnn.core.domain import Depth

    return Depth(points=np.sort(np.concatenate([depth.points, depth.mid[np.asarray(marked, dtype=np.int64)]])))
