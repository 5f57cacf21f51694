"""The dense kernel family: a coefficient for every pair of node dofs."""

import numpy as np

from fem_dnn.core.kernel.base import Kernel, KernelMemory, _mpi, register
from fem_dnn.errors import InputError

__all__ = ["DenseKernel"]


@register
class DenseKernel(Kernel):
    """Today's kernel: every pair of node dofs has its coefficient (the package doc)."""

    name = "dense"
    summary = "n x n per layer"
    float32 = rows_separate = node_pairs = True

    @classmethod
    def memory(cls, network, node, *, N, n, n_local, cells, gdim):
        """All pairs; a layer's product gathers the whole batch and holds ``b M_w``
        (:meth:`weighted`, two float64 n_local x n arrays)."""
        return KernelMemory(N * n * n, N * n_local * n, gathered=n, work_bytes=2 * 8 * n_local * n, image=n * n)

    def weighted(self, b_local: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``scale b M_w``: the kernel coefficients with the measure folded into the
        columns (diagonal scaling when lumped), so that ``B_b f = (b M_w) f``."""
        return self.space.mass_columns(b_local, scale=scale)

    def apply(self, b_local: np.ndarray, F: np.ndarray) -> np.ndarray:
        """One Allgatherv of f and one GEMM per rank block with ``b M_w`` (:meth:`weighted`,
        n^2 work against the GEMM's n^2 S)."""
        if np.ndim(F) == 1:
            return self.apply(b_local, np.asarray(F)[:, None])[:, 0]
        sp = self.space
        bw = self.weighted(b_local)
        blocks = sp.gather(np.asfortranarray(F))
        out = blocks[0] @ bw[:, sp.offsets[0] : sp.offsets[1]].T
        for r in range(1, len(blocks)):
            out += blocks[r] @ bw[:, sp.offsets[r] : sp.offsets[r + 1]].T
        return out.T  # (n_local, S), Fortran-ordered view

    def apply_transpose(self, b_local: np.ndarray, V: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """One GEMM with :meth:`weighted` b (``scale`` folded in) and one Reduce_scatter."""
        if np.ndim(V) == 1:
            return self.apply_transpose(b_local, np.asarray(V)[:, None], scale)[:, 0]
        sp = self.space
        part = np.ascontiguousarray(V.T) @ self.weighted(b_local, scale)  # (S, n): rank's part of (b M_w)^T v
        S = V.shape[1]
        if sp.comm.size > 1:
            send = np.concatenate(
                [part[:, sp.offsets[r] : sp.offsets[r + 1]].ravel() for r in range(sp.comm.size)]
            )
            recv = np.empty(sp.n_local * S, dtype=send.dtype)
            sp.comm.Reduce_scatter(send, recv, recvcounts=list(sp.counts * S), op=_mpi().SUM)
            part = recv.reshape(S, sp.n_local)
        return part.T  # (n_local, S), Fortran-ordered

    def outer(self, Z: np.ndarray, F: np.ndarray, b=None, scale: float = 1.0) -> np.ndarray:
        """``scale sum_s Z[:, s] (M_w f_s)^T = scale (Z F^T) M_w`` (owned rows, all
        columns): complete on each rank, nothing to reduce."""
        sp = self.space
        blocks = sp.gather(np.asfortranarray(F))
        out = np.empty((Z.shape[0], sp.n))
        for r, blk in enumerate(blocks):
            out[:, sp.offsets[r] : sp.offsets[r + 1]] = Z @ blk
        return sp.mass_columns(out, scale=scale)

    def shape(self) -> tuple:
        return (self.space.n_local, self.space.n)

    def natural_shape(self, N: int) -> tuple:
        return (N, self.space.n, self.space.n)

    def from_natural(self, b_nat: np.ndarray) -> np.ndarray:
        sp = self.space
        return np.asarray(b_nat)[:, sp.nat_owned][:, :, sp.nat_of_global]

    def to_natural(self, block: np.ndarray) -> np.ndarray:
        sp = self.space
        rows = sp.to_natural(block, axis=1)
        out = np.empty_like(rows)
        out[..., sp.nat_of_global] = rows
        return out

    def weigh(self, block, out, depth, inverse):
        """``M (x) M`` in the nodes: an elementwise scaling when lumped with a diagonal
        depth operator (no copies of b), else mass solves/products on rows and columns."""
        sp = self.space
        if sp.mass == "lumped" and depth.is_diagonal:
            w, w_all, dd = sp.weights[: sp.n_local], sp.weights_all, depth.diagonal
            if inverse:
                w, w_all, dd = 1.0 / w, 1.0 / w_all, 1.0 / dd
            np.multiply(block, dd[:, None, None] * w[None, :, None], out=out)
            out *= w_all
            return out
        rows = (lambda X: sp.solve_mass(np.asfortranarray(X))) if inverse else (lambda X: sp.apply_mass(np.asfortranarray(X)))
        across = depth.solve if inverse else depth.apply
        N, nl, n = block.shape
        mb = rows(block.transpose(1, 0, 2).reshape(nl, N * n)).reshape(nl, N, n).transpose(1, 0, 2)
        mb = sp.mass_columns(mb, inverse=inverse)
        out[:] = across(mb.reshape(N, nl * n)).reshape(N, nl, n)
        return out

    def diagonal(self):
        w, w_all = self.space.diagonal_weights()
        return (w[:, None], w_all[None, :])

    def sample(self, b, t):
        sp = self.space
        nl, n = sp.n_local, sp.n
        if callable(b):
            return np.broadcast_to(np.asarray(b(sp.x_owned, sp.x_all, t), dtype=float), (nl, n))
        arr = np.asarray(b, dtype=float)
        if arr.ndim == 0:
            return np.full((nl, n), float(arr))
        if arr.shape != (n, n):
            raise InputError(f"b has shape {arr.shape} per layer; expected ({n}, {n})")
        return arr[sp.nat_owned][:, sp.nat_of_global]

    def layer_fields(self, b):
        sp = self.space
        own = np.arange(sp.n_local)
        return {"b_diagonal": np.stack([bk[own, sp.offset + own] for bk in b]), "b_row_integral": b @ sp.weights_all}

    def image(self, b_nat_layer):
        return b_nat_layer, None, "node z (natural order)", "node y (natural order)"

    def transfer(self, source, b_nat, I):
        """``b_f = I b_c I^T``: the coarse kernel function interpolated in both variables."""
        if source.name != self.name:
            raise InputError(f"cannot transfer {source.name} kernels to {self.name} kernels")
        return np.stack([I @ bk @ I.T for bk in b_nat])
