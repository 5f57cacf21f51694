"""Evaluation of a trajectory between the layers and between the nodes: the state at
any depth (the scheme's own continuous extension) and its values at points of the node
domain (:class:`PointEvaluation`, a base of :class:`fem_dnn.network.Network`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import dolfinx.geometry

from fem_dnn.core.meshes import locate_points
from fem_dnn.errors import InputError

if TYPE_CHECKING:
    from fem_dnn.network.continuum import Trajectory

__all__ = ["PointEvaluation"]


class PointEvaluation:
    """A trajectory's state at any depth and at any point of the node domain (for a
    network with ``space``, ``depth`` and ``step``)."""

    def state_at(self, traj: Trajectory, t: float) -> np.ndarray:
        """State at any depth t: one sub-step of the scheme from the last depth point
        (the scheme's own continuous extension, of its order)."""
        k = self.depth.layer_of(t)
        dt = t - self.depth.points[k]
        if dt == 0.0:
            return traj.state(k).copy(order="F")
        if abs(dt - self.depth.tau[k]) <= 1e-14 * self.depth.T:
            return traj.state(k + 1).copy(order="F")
        return self.step(k, np.asfortranarray(traj.state(k)), traj.controls, tau=dt)

    def evaluate(self, traj: Trajectory, points, t: float | None = None) -> np.ndarray:
        """Values ``f(y_p, t)`` at arbitrary points y_p of Y, shape ``(S_local, p)``.

        ``points`` has shape (p, gdim) or (p, 3). Every rank gets every value.
        """
        F = traj.final if t is None else self.state_at(traj, t)
        sp = self.space
        pts = np.zeros((len(points), 3))
        P = np.asarray(points, dtype=float).reshape(len(points), -1)
        pts[:, : P.shape[1]] = P
        msh = sp.mesh
        tdim = msh.topology.dim
        found, bad = locate_points(msh, dolfinx.geometry.bb_tree(msh, tdim, padding=1e-12), pts)
        if bad is not None:
            raise InputError(f"point {pts[bad, :tdim]} is outside the node domain")
        comm = sp.comm
        sel = np.flatnonzero(found >= 0)
        out = np.zeros((F.shape[1], len(pts)))
        fn = sp.function()
        for s in range(F.shape[1]):
            fn.x.array[: sp.n_local] = F[:, s]
            fn.x.scatter_forward()
            if len(sel):
                out[s, sel] = fn.eval(pts[sel], found[sel]).ravel()
        comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out
