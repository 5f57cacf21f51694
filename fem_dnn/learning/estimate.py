"""A posteriori estimates of the depth discretisation error (dual-weighted residuals).

The goal is the trained network's cost ``J``; at fixed controls m (constant on each layer,
as the depth mesh defines them) the exact depth-continuous network solves ``f' = g_k(f)``
on layer k, and the ResNet (explicit Euler) takes one step ``f_{k+1} = f_k + tau_k
g_k(f_k)``. The discrete costate ``dual_{k+1} = dJ/df_{k+1}`` (docs/model.md §3) weighs the
local error of each step, and the local error of the Euler step is the difference between
the trapezoidal rule (a second-order reconstruction of ``int g_k(f) dt``) and the left
rectangle:

    J(f) - J(f_h)  ~  eta = sum_k eta_k,
    eta_k = (tau_k / 2) < dual_{k+1}, g_k(f_{k+1}) - g_k(f_k) >

(Euclidean pairing: ``dual`` is a dual vector, ``g`` the node values of the stage
function). The regulariser does not depend on the depth discretisation of piecewise
constant controls, so ``eta`` estimates the error of J as well as that of the loss.
See docs/model.md §4.11 for the derivation; tests/test_estimate.py measures the
effectivity index ``eta / (J_ref - J_h)`` against a fine reference.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.errors import InputError

__all__ = ["depth_indicators", "mark", "refine_depth"]


def depth_indicators(J, m) -> np.ndarray:
    """The per-layer indicators ``eta_k`` (``(N,)``, the same on every rank) of the depth
    error of ``J`` at the controls ``m``, for the explicit Euler scheme (the ResNet)
    without node diffusion. Their sum estimates ``J(f) - J(f_h)``.

    Raises:
        InputError: another scheme, or diffusion (eps > 0), or depth checkpointing.
    """
    net = J.network
    if net.scheme != "euler" or net.eps != 0:
        raise InputError(f"the depth estimator is derived for the ResNet scheme (euler, eps = 0), not "
                         f"{net.scheme!r} with eps = {net.eps}")
    traj, costate = J.trajectory(m), J.costate(m)
    if costate.levels is not None:
        raise InputError("the depth estimator needs the whole costate (no depth checkpointing)")
    c = traj.controls
    eta = np.empty(net.depth.N)
    for k in range(net.depth.N):
        g0 = net.rhs(k, np.asfortranarray(traj.state(k)), c)
        g1 = net.rhs(k, np.asfortranarray(traj.state(k + 1)), c)
        eta[k] = 0.5 * net.depth.tau[k] * float(np.sum(costate.dual[k + 1].T * (g1 - g0)))
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
