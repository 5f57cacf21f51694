"""The low-rank kernel family: separable kernels of rank R."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.core.kernel.base import POSITIVE, Kernel, KernelMemory, _mpi, register
from fem_dnn.errors import InputError

if TYPE_CHECKING:
    from fem_dnn.core.nodes import NodeSpace

__all__ = ["LowRankKernel"]


@register
class LowRankKernel(Kernel):
    """Separable kernels ``b(y, z, t) = sum_{r <= R} psi_r(y, t) phi_r(z, t)`` with psi_r,
    phi_r in the node space: ``B_b f = Psi (Phi^T M_w f)``, O(n R S) a layer and one
    Allreduce of an R x S array, no state exchanged.

    One layer's coefficients are ``(2, n_local, R)``: ``[0]`` Psi, ``[1]`` Phi (owned
    rows). B is *bilinear* in (Psi, Phi), so its tangent, transposed tangent and the second
    derivative of the outer product are their own (:meth:`tangent`,
    :meth:`transpose_tangent`, :meth:`outer_tangent`); at b = 0 the derivative in b
    vanishes (a saddle: start training from random controls). Inner product: L2 of psi
    and phi in the node variable (M), times the depth operator.

    Args:
        space: the node space.
        rank: R, 1 <= R <= n.
    """

    name = "lowrank"
    summary = "sum of kernel_rank products psi_r(y) phi_r(z); needs training.init_scale > 0"
    float32 = True
    needs_random_start = "at zero controls psi = phi = 0 its derivative in b vanishes and b would never move"
    config = {"kernel_rank": (8, int, POSITIVE, "lowrank kernel: the rank R (1 <= R <= neurons)")}

    @classmethod
    def memory(cls, network, node, *, N, n, n_local, cells, gdim):
        """psi and phi: 2 n R a layer, no state gathered; the figure shows psi phi^T."""
        R = int(network["kernel_rank"])
        return KernelMemory(2 * N * n * R, 2 * N * n_local * R, gathered=n_local, image=n * n)

    def __init__(self, space: NodeSpace, rank: int = 8):
        super().__init__(space)
        R = int(rank)
        if not 1 <= R <= space.n:
            raise InputError(f"the low-rank kernel's rank {rank!r} must be between 1 and the number of neurons {space.n}")
        self.rank = R

    def _sum(self, X):
        """Sum an (R, S) array over the node ranks (in place)."""
        comm = self.space.comm
        if comm.size > 1:
            comm.Allreduce(_mpi().IN_PLACE, X, op=_mpi().SUM)
        return X

    def _mass(self, F):
        """``M_w F`` in F's precision (a float32 batch stays float32)."""
        F = np.asfortranarray(F)
        if F.dtype == np.float32 and self.space.mass == "lumped":
            return self.space.weights[:, None].astype(np.float32) * F
        return self.space.apply_mass(F)

    def _G(self, Phi, F):  # Phi^T M_w F, (R, S) on every rank
        return self._sum(np.ascontiguousarray(Phi.T @ self._mass(F)))

    def _H(self, Psi, V):  # Psi^T V, (R, S) on every rank
        return self._sum(np.ascontiguousarray(Psi.T @ V))

    def apply(self, b, F):
        if np.ndim(F) == 1:
            return self.apply(b, np.asarray(F)[:, None])[:, 0]
        return np.asfortranarray(b[0] @ self._G(b[1], F))

    def apply_transpose(self, b, V, scale=1.0):
        if np.ndim(V) == 1:
            return self.apply_transpose(b, np.asarray(V)[:, None], scale)[:, 0]
        H = self._H(b[0], V)
        if scale != 1.0:
            H *= scale  # (R, S)
        return np.asfortranarray(self._mass(b[1] @ H))

    def tangent(self, b, db, F):
        if np.ndim(F) == 1:
            return self.tangent(b, db, np.asarray(F)[:, None])[:, 0]
        MF = self._mass(F)
        G = self._sum(np.ascontiguousarray(np.concatenate([b[1].T @ MF, db[1].T @ MF])))
        R = self.rank
        return np.asfortranarray(db[0] @ G[:R] + b[0] @ G[R:])

    def transpose_tangent(self, b, db, V):
        if np.ndim(V) == 1:
            return self.transpose_tangent(b, db, np.asarray(V)[:, None])[:, 0]
        H = self._sum(np.ascontiguousarray(np.concatenate([b[0].T @ V, db[0].T @ V])))
        R = self.rank
        return np.asfortranarray(self._mass(db[1] @ H[:R] + b[1] @ H[R:]))

    def outer(self, Z, F, b=None, scale=1.0):
        """``d/dPsi = Z G^T``, ``d/dPhi = (M_w F) H^T`` with ``G = Phi^T M_w F``, ``H =
        Psi^T Z``: complete on each rank (the R x S sums are reduced inside)."""
        MF = self._mass(F)
        GH = self._sum(np.ascontiguousarray(np.concatenate([b[1].T @ MF, b[0].T @ Z])))
        if scale != 1.0:
            GH *= scale  # (2R, S)
        R = self.rank
        return np.stack([Z @ GH[:R].T, MF @ GH[R:].T])

    def outer_tangent(self, Z, F, b, db):
        MF = self._mass(F)
        GH = self._sum(np.ascontiguousarray(np.concatenate([db[1].T @ MF, db[0].T @ Z])))
        R = self.rank
        return np.stack([Z @ GH[:R].T, MF @ GH[R:].T])

    def shape(self):
        return (2, self.space.n_local, self.rank)

    def natural_shape(self, N):
        return (N, 2, self.space.n, self.rank)

    def from_natural(self, b_nat):
        return np.asarray(b_nat, dtype=float)[:, :, self.space.nat_owned, :]

    def to_natural(self, block):
        return self.space.to_natural(block, axis=2)

    def weigh(self, block, out, depth, inverse):
        sp = self.space
        N, two, nl, R = block.shape
        if sp.mass == "lumped" and depth.is_diagonal:
            w, dd = sp.weights[: sp.n_local], depth.diagonal
            if inverse:
                w, dd = 1.0 / w, 1.0 / dd
            np.multiply(block, dd[:, None, None, None] * w[None, None, :, None], out=out)
            return out
        rows = sp.solve_mass if inverse else sp.apply_mass
        across = depth.solve if inverse else depth.apply
        mb = rows(np.asfortranarray(block.transpose(2, 0, 1, 3).reshape(nl, -1)))
        out[:] = across(np.ascontiguousarray(mb.reshape(nl, N, two, R).transpose(1, 2, 0, 3)).reshape(N, -1)).reshape(block.shape)
        return out

    def diagonal(self):
        return (self.space.diagonal_weights()[0][None, :, None],)  # the node weights on the rows of psi and phi

    def sample(self, b, t):
        """A scalar or an array ``(2, n, R)`` (psi and phi in natural order)."""
        sp, R = self.space, self.rank
        if callable(b):
            raise InputError("a low-rank kernel takes psi and phi as an array (2, n, R) or a scalar, not a callable")
        arr = np.asarray(b, dtype=float)
        if arr.ndim == 0:
            return np.full((2, sp.n_local, R), float(arr))
        if arr.shape != (2, sp.n, R):
            raise InputError(f"a low-rank kernel's b has shape {arr.shape} per layer; expected (2, {sp.n}, {R})")
        return arr[:, sp.nat_owned, :]

    def describe(self):
        return {"kernel": self.name, "kernel_rank": self.rank}

    def image(self, b_nat_layer):
        return b_nat_layer[0] @ b_nat_layer[1].T, None, "node z (natural order)", "node y (natural order)"

    def transfer(self, source, b_nat, I):
        """``psi_f = I psi_c``, ``phi_f = I phi_c`` (so ``b_f = I b_c I^T``)."""
        if source.name != self.name or source.rank != self.rank:
            raise InputError(f"cannot transfer {source.name} kernels{f' of rank {source.rank}' if source.name == self.name else ''} "
                             f"to {self.name} kernels of rank {self.rank}")
        return np.einsum("fc,kpcr->kpfr", I, np.asarray(b_nat))
