"""The nonlocal operator B_b of the state equation and its transpose.

On layer k the selection weight is ``b_h(y,z) = sum_ij b^k_ij phi_i(y) phi_j(z)`` (the
tensor product V_h (x) V_h), so

    (B_b f)_i = sum_j b^k_ij (M_w f)_j,     M_w = diag(omega) (lumped) or M (consistent),

a dense n x n matrix per layer (docs/model.md §4). Rows of b^k live on the rank that owns the
node dof (``b_local`` has shape ``(n_local, n)``, columns in the global dof order), and a
whole batch (n_local x S) is applied with one Allgatherv and one GEMM per rank block.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.core.domain import NodeSpace

__all__ = ["Kernel"]


class Kernel:
    """``B_b`` and ``B_b^T`` on batches for kernel coefficients ``b_local``.

    Args:
        space: the node space (its mass option decides M_w).
    """

    def __init__(self, space: NodeSpace):
        self.space = space

    def weighted(self, b_local: np.ndarray) -> np.ndarray:
        """``b M_w``: the kernel coefficients with the measure folded into the columns
        (diagonal scaling when lumped), so that ``B_b f = (b M_w) f``."""
        return self.space.mass_columns(b_local)

    def apply(self, b_local: np.ndarray, F: np.ndarray) -> np.ndarray:
        """``(B_b f)`` for a Fortran ``(n_local, S)`` batch (or one ``(n_local,)``
        function); returns the same layout (a fresh array the caller may overwrite). One
        Allgatherv of f and one GEMM per rank block with ``b M_w`` (:meth:`weighted`, n^2
        work against the GEMM's n^2 S)."""
        if np.ndim(F) == 1:
            return self.apply(b_local, np.asarray(F)[:, None])[:, 0]
        sp = self.space
        bw = self.weighted(b_local)
        blocks = sp.gather(np.asfortranarray(F))
        out = blocks[0] @ bw[:, sp.offsets[0] : sp.offsets[1]].T
        for r in range(1, len(blocks)):
            out += blocks[r] @ bw[:, sp.offsets[r] : sp.offsets[r + 1]].T
        return out.T  # (n_local, S), Fortran-ordered view

    def apply_transpose(self, b_local: np.ndarray, V: np.ndarray) -> np.ndarray:
        """``(B_b^T v)_j = ((b M_w)^T v)_j``: the adjoint of :meth:`apply` in the Euclidean
        pairing of coefficient vectors (one GEMM with :meth:`weighted` b, one
        Reduce_scatter); returns a fresh array. ``V``: ``(n_local, S)`` or ``(n_local,)``."""
        if np.ndim(V) == 1:
            return self.apply_transpose(b_local, np.asarray(V)[:, None])[:, 0]
        sp = self.space
        part = np.ascontiguousarray(V.T) @ self.weighted(b_local)  # (S, n): rank's part of (b M_w)^T v
        S = V.shape[1]
        if sp.comm.size > 1:
            send = np.concatenate(
                [part[:, sp.offsets[r] : sp.offsets[r + 1]].ravel() for r in range(sp.comm.size)]
            )
            recv = np.empty(sp.n_local * S)
            sp.comm.Reduce_scatter(send, recv, recvcounts=list(sp.counts * S), op=MPI.SUM)
            part = recv.reshape(S, sp.n_local)
        return part.T  # (n_local, S), Fortran-ordered

    def outer(self, Z: np.ndarray, F: np.ndarray) -> np.ndarray:
        """``sum_s Z[:, s] (M_w f_s)^T = (Z F^T) M_w``: the derivative of ``<Z, B_b f>``
        with respect to the kernel coefficients b (owned rows, all columns)."""
        sp = self.space
        blocks = sp.gather(np.asfortranarray(F))
        out = np.empty((Z.shape[0], sp.n))
        for r, blk in enumerate(blocks):
            out[:, sp.offsets[r] : sp.offsets[r + 1]] = Z @ blk
        return sp.mass_columns(out)
