"""The nonlocal operator B_b of the state equation, its transpose, and its control block.

On layer k the selection weight b^k(y, z) enters the state equation through

    (B_b f)(y) = int_Y b^k(y, z) f(z) dz,

and a kernel family says how b^k is discretised, i.e. what the controls of the ``b`` block
are (docs/model.md §4, docs/kernels.md). Every family is linear in its coefficients, so
the tangent and the second-order terms of the optimality system are :meth:`Kernel.apply`,
:meth:`Kernel.apply_transpose` and :meth:`Kernel.outer` again.

- :class:`DenseKernel` (``"dense"``): ``b_h(y,z) = sum_ij b_ij phi_i(y) phi_j(z)`` in
  V_h (x) V_h, so ``B_b f = b M_w f`` (``M_w = diag(omega)`` lumped or M consistent): a
  dense n x n matrix per layer. Rows live on the rank that owns the node dof (``(n_local,
  n)``, columns in global dof order); a batch is applied with one Allgatherv and one GEMM
  per rank block.
- :class:`LocalKernel` (``"local"``): translation-invariant kernels of compact support,
  ``b(y, z, t) = kappa(y - z, t)`` for ``|y - z|_inf <= rho``, with kappa a Q1 function on
  the offset box ``[-rho, rho]^d`` (``cells`` cells a side). Its controls are kappa's
  ``(cells+1)^d`` nodal values per layer, whatever the node mesh; B is a sparse matrix
  over the pairs of node dofs in the support (found once by a k-d tree), applied with a
  halo exchange of the ghost columns only.

A family owns the layout of its block in the control Vec: :meth:`Kernel.block_shape`,
natural order (:meth:`Kernel.from_natural`, :meth:`Kernel.to_natural`), the inner product
(:meth:`Kernel.weigh`, :meth:`Kernel.diagonal`), how the ranks share and reduce it
(:meth:`Kernel.share`, :meth:`Kernel.reduce`) and what a checkpoint records
(:meth:`Kernel.describe`). A new family is one class here and one entry of :data:`KERNELS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.errors import InputError

if TYPE_CHECKING:  # the registry is read by the config without importing MPI or DOLFINx
    from mpi4py import MPI

    from fem_dnn.core.domain import NodeSpace


def _mpi():
    from fem_dnn import _dolfinx  # noqa: F401
    from mpi4py import MPI

    return MPI

__all__ = ["KERNELS", "DenseKernel", "Halo", "Kernel", "LocalKernel", "LowRankKernel", "PixelGrid", "box_basis", "box_widths", "make_kernel"]


class Kernel:
    """The interface of a kernel family (see the module doc). ``b`` below is one layer's
    coefficients as the network uses them (``Controls.b[k]``); a *block* is all layers'
    coefficients as this rank holds them in the control Vec.

    Args:
        space: the node space.
    """

    name = "?"

    def __init__(self, space: NodeSpace):
        self.space = space

    # ---- the operator on batches (Fortran (n_local, S), or one (n_local,) function)
    def apply(self, b, F: np.ndarray) -> np.ndarray:
        """``B_b f`` (a fresh Fortran array the caller may overwrite)."""
        raise NotImplementedError

    def apply_transpose(self, b, V: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``scale B_b^T v``: the adjoint of :meth:`apply` in the Euclidean pairing of
        coefficient vectors (a fresh Fortran array). The costate step passes its scalar
        factors (the step size, the sign) as ``scale`` so that a family can fold them into
        its coefficients instead of a pass over the batch."""
        raise NotImplementedError

    def outer(self, Z: np.ndarray, F: np.ndarray, b=None, scale: float = 1.0) -> np.ndarray:
        """``scale`` times the derivative of ``<Z, B_b F>`` with respect to b (at ``b``; a
        family linear in b does not need it), in b's layout: this rank's part (summed over
        the node ranks by :meth:`reduce`)."""
        raise NotImplementedError

    # ---- derivatives in b: for a family linear in b they are the three above
    def tangent(self, b, db, F: np.ndarray) -> np.ndarray:
        """``(dB_b[db]) f``, the derivative of :meth:`apply` in b along db."""
        return self.apply(db, F)

    def transpose_tangent(self, b, db, V: np.ndarray) -> np.ndarray:
        """``(dB_b[db])^T v``."""
        return self.apply_transpose(db, V)

    def outer_tangent(self, Z: np.ndarray, F: np.ndarray, b, db) -> np.ndarray | None:
        """The derivative of :meth:`outer` in b along db (None: zero, b enters linearly)."""
        return None

    # ---- the control block
    def shape(self) -> tuple:
        """One layer's coefficients as the network uses them (every rank)."""
        raise NotImplementedError

    def block_shape(self, N: int) -> tuple:
        """This rank's part of the b block of the control Vec (N layers)."""
        return (N,) + self.shape()

    def natural_shape(self, N: int) -> tuple:
        """The b block in natural order (the same on any number of ranks)."""
        raise NotImplementedError

    def zeros(self, N: int) -> np.ndarray:
        return np.zeros((N,) + self.shape())

    def from_natural(self, b_nat: np.ndarray) -> np.ndarray:
        """This rank's block from the natural-order array ``(N, ...)``."""
        raise NotImplementedError

    def to_natural(self, block: np.ndarray) -> np.ndarray:
        """The natural-order array from every rank's block (collective; on every rank)."""
        raise NotImplementedError

    def share(self, block: np.ndarray) -> np.ndarray:
        """The coefficients every rank needs (``(N,) + shape()``) from its block (collective)."""
        return block

    def reduce(self, g: np.ndarray) -> np.ndarray:
        """Sum the ranks' parts of a derivative (from :meth:`outer`) in place (collective)."""
        return g

    def weigh(self, block: np.ndarray, out: np.ndarray, depth, inverse: bool) -> np.ndarray:
        """``out = (depth (x) M_b) block`` (or the inverse): the inner product of the b
        block, ``depth`` a :class:`~fem_dnn.learning.controls.DepthOperator` across layers."""
        raise NotImplementedError

    def diagonal(self) -> tuple:
        """Factors whose product (broadcast against one layer's block) is a positive
        diagonal spectrally equivalent to ``M_b``: the scaling of TAO's coordinates."""
        raise NotImplementedError

    def sample(self, b, t: float) -> np.ndarray:
        """One layer's coefficients (network layout) from a scalar, a callable or an
        array in natural order (see :meth:`fem_dnn.network.Network.make_controls`)."""
        raise NotImplementedError

    def random(self, rng: np.random.Generator, N: int) -> np.ndarray:
        """A standard normal natural-order b block."""
        return rng.standard_normal(self.natural_shape(N))

    def describe(self) -> dict:
        """What a checkpoint records and must match: the family and its parameters."""
        return {"kernel": self.name}

    def layer_fields(self, b: np.ndarray) -> dict:
        """Node fields ``(N, n_local)`` that show the layers' kernels in the field files:
        the row integral ``int b(y, z) dz`` (``B_b 1``) for every family."""
        ones = np.ones((self.space.n_local, 1), order="F")
        return {"b_row_integral": np.stack([self.apply(bk, ones)[:, 0] for bk in b])}

    def image(self, b_nat_layer: np.ndarray) -> tuple:
        """``(2-d array, extent or None, x label, y label)`` showing one layer's natural b."""
        raise NotImplementedError

    def transfer(self, source: Kernel, b_nat: np.ndarray, I: np.ndarray) -> np.ndarray:
        """Natural-order b of this kernel from a natural-order b of ``source`` (another
        discretisation's kernel), I the node interpolation matrix (fine x coarse)."""
        raise NotImplementedError


class DenseKernel(Kernel):
    """Today's kernel: every pair of node dofs has its coefficient (module doc)."""

    name = "dense"

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


class Halo:
    """Values of owned rows that other ranks need, exchanged with one Alltoallv.

    Args:
        comm: the node communicator.
        offsets: ``(size + 1,)`` global index ranges of the ranks' owned rows.
        ghosts: sorted unique global indices this rank needs but does not own.
    """

    def __init__(self, comm: MPI.Comm, offsets: np.ndarray, ghosts: np.ndarray):
        self.comm = comm
        self.ghosts = np.asarray(ghosts, dtype=np.int64)
        owners = np.searchsorted(offsets, self.ghosts, side="right") - 1
        self.recv_counts = np.bincount(owners, minlength=comm.size).astype(np.int64)
        self.send_counts = np.array(comm.alltoall(self.recv_counts.tolist()), dtype=np.int64)
        wanted = np.empty(int(self.send_counts.sum()), dtype=np.int64)
        comm.Alltoallv([self.ghosts, self.recv_counts], [wanted, self.send_counts])
        #: owned rows (local indices) to send, in the order of the receivers
        self.send_rows = wanted - offsets[comm.rank]

    def forward(self, X: np.ndarray, out: np.ndarray):
        """``out[g] = X[ghost g]`` for a ``(rows, S)`` array X of owned rows; ``out`` is
        C-ordered ``(len(ghosts), S)``."""
        S = out.shape[1]
        send = np.ascontiguousarray(X[self.send_rows])
        self.comm.Alltoallv([send, self.send_counts * S], [out, self.recv_counts * S])

    def reverse(self, G: np.ndarray, out: np.ndarray):
        """``out[owned row] += G[g]`` summed over the ranks that hold the row as ghost g;
        ``G`` C-ordered ``(len(ghosts), S)``."""
        S = G.shape[1]
        recv = np.empty((self.send_rows.size, S), dtype=G.dtype)
        self.comm.Alltoallv([np.ascontiguousarray(G), self.recv_counts * S], [recv, self.send_counts * S])
        np.add.at(out, self.send_rows, recv)


class LocalKernel(Kernel):
    """Translation-invariant kernels of compact support (module doc).

    The layer operator is ``(B f)_i = sum_j B_ij f_j`` with, for DG0 on axis-aligned box
    cells (``quadrature="exact"``), the Galerkin entry ``B_ij = omega_j avg_{K_i x K_j}
    kappa(y - z)`` (exact: per axis the integral of a hat times the tent of two cells, a
    piecewise quadratic, by 2-point Gauss-Legendre between its breakpoints; the pairs with
    ``|y_i - y_j|_a < rho + h_a``), else (``"nodal"``) the node quadrature ``B_ij =
    kappa(y_i - y_j) omega_j`` over the pairs with ``|y_i - y_j|_inf <= rho`` (the node
    weights omega, whatever the mass option). Either way ``B = sum_m kappa_m A_m`` with
    fixed sparse matrices A_m (kappa's Q1 basis functions averaged over, or sampled at,
    the pairs' offsets, times omega_j). kappa's coefficients
    are replicated: every rank holds all of them and the control Vec stores them on node
    rank 0.

    Args:
        space: the node space.
        radius: rho, the support's half-width (at least the largest cell's extent, at
            most the node domain's extent).
        cells: kappa's Q1 cells a side of the offset box (``(cells+1)^d`` coefficients).
        channels: C > 1 for a node domain Y = image x C channels: the node mesh's last
            axis holds C layers of DG0 cells, kappa is translation-invariant in the image
            axes and dense across channels (one kappa per pair: ``C^2 (cells+1)^d``
            coefficients a layer; the continuum form of a convolution with C channels).
        method: how B is applied: ``"grid"`` dense GEMMs over channels and samples on
            the pixel grid (:class:`PixelGrid`; the node mesh must be a structured DG0
            image grid), ``"csr"`` SciPy sparse products on the pairs (any node mesh),
            ``"auto"`` (default) the grid path where this rank's block allows it. Both
            are the same operator (to round-off).
        quadrature: how the entries integrate kappa: ``"exact"`` the Galerkin entry
            ``B_ij = (1/omega_i) int_{K_i} int_{K_j} kappa(y - z) dz dy`` (times the channel
            weight; DG0 on axis-aligned box cells: intervals, quadrilaterals, hexahedra),
            ``"nodal"`` the node quadrature ``kappa(y_i - y_j) omega_j``, ``"auto"``
            (default) exact where it applies, else nodal. With the exact rule B_h =
            Pi_h B Pi_h is consistent on nested meshes (docs/kernels.md).
    """

    name = "local"

    def __init__(self, space: NodeSpace, radius: float, cells: int = 4, channels: int = 1, method: str = "auto",
                 quadrature: str = "auto"):
        super().__init__(space)
        from scipy import sparse
        from scipy.spatial import cKDTree

        sp, comm = space, space.comm
        if sp.degree == 2:
            raise InputError("the local kernel integrates with the node weights, and P2 has no positive ones; "
                             "use node.space = 'DG0' or 'P1'")
        self.gdim = int(sp.mesh.geometry.dim)
        self.channels = C = int(channels)
        if C < 1:
            raise InputError(f"the local kernel needs at least one channel, got {channels!r}")
        d = self.gdim - (1 if C > 1 else 0)  # the translation-invariant (spatial) axes
        self.sdim = d
        radius, cells = float(radius), int(cells)
        x = sp.mesh.geometry.x
        lo = np.min(comm.allgather(x[:, : self.gdim].min(axis=0, initial=np.inf)), axis=0)
        hi = np.max(comm.allgather(x[:, : self.gdim].max(axis=0, initial=-np.inf)), axis=0)
        extent, h = float(np.max(hi[:d] - lo[:d])), cell_extent(sp, d)
        if not (np.isfinite(radius) and radius >= h * (1 - 1e-9)):
            raise InputError(f"the local kernel's radius {radius!r} is smaller than a node cell ({h:.4g}): "
                             f"its support would hold no neighbour")
        if radius > extent * (1 + 1e-9):
            where = "image" if C > 1 else "node domain"
            raise InputError(f"the local kernel's radius {radius!r} is larger than the {where} ({extent:.4g}); "
                             f"use the dense kernel")
        if cells < 1:
            raise InputError(f"the local kernel needs at least one cell a side, got {cells!r}")
        self.radius, self.cells = radius, cells
        self.Ms = (cells + 1) ** d  # kappa's nodes on the offset box
        self.M = C * C * self.Ms  # and one kappa per pair of channels
        # the channel of each dof (the last axis of an image x channels mesh: C layers of DG0 cells)
        if C > 1:
            if sp.family != "DG":
                raise InputError("channels need a DG0 node space (a cell of a channel layer is a neuron)")
            z = (sp.x_all[self.gdim - 1] - lo[-1]) / (hi[-1] - lo[-1]) * C
            chan = np.clip(np.floor(z), 0, C - 1).astype(np.int64)
            if not np.allclose(z, chan + 0.5, atol=1e-6) or np.any(np.bincount(chan, minlength=C) != sp.n // C):
                raise InputError(f"the node mesh is not an image x {C} channels mesh: its last axis must have {C} "
                                 f"cells of equal size, the same image mesh in each")
        else:
            chan = np.zeros(sp.n, dtype=np.int64)
        # kappa's nodes and lumped Q1 weights (trapezoid per axis) on the offset box; the
        # channel pairs weigh (1/C)^2 (the channel axis is [0, 1])
        hk = 2 * radius / cells
        w1 = np.full(cells + 1, hk)
        w1[[0, -1]] *= 0.5
        ws = np.ones(1)
        for _ in range(d):
            ws = np.multiply.outer(ws, w1)
        self.kappa_weights = np.tile(ws.reshape(-1), C * C) / C**2
        axis = np.linspace(-radius, radius, cells + 1)
        self.kappa_points = np.stack([g.reshape(-1) for g in np.meshgrid(*[axis] * d, indexing="ij")])  # (d, Ms)

        if quadrature not in ("auto", "exact", "nodal"):
            raise InputError(f"unknown local kernel quadrature {quadrature!r}; choose 'auto', 'exact' or 'nodal'")
        widths = None if quadrature == "nodal" else box_widths(sp)  # (gdim, n) or None
        if quadrature == "exact" and widths is None:
            raise InputError("the local kernel's exact quadrature needs a DG0 node space on axis-aligned box cells "
                             "(intervals, quadrilaterals, hexahedra); use quadrature='nodal'")
        #: the rule of the entries: "exact" (Galerkin, box cells) or "nodal" (node quadrature)
        self.quadrature = "nodal" if widths is None else "exact"
        # the pairs: owned rows i, columns j within the support (every dof's coordinates
        # are known on every rank, sp.x_all)
        X = np.ascontiguousarray(sp.x_all[:d].T)  # spatial coordinates (every channel at a pixel: one point)
        tree = cKDTree(X)
        reach = radius + (h if widths is not None else 0.0)
        nbrs = tree.query_ball_point(np.ascontiguousarray(sp.x_owned[:d].T), r=reach * (1 + 1e-9), p=np.inf)
        counts = np.array([len(c) for c in nbrs], dtype=np.int64)
        rows = np.repeat(np.arange(sp.n_local), counts)
        cols = np.concatenate([np.sort(np.asarray(c, dtype=np.int64)) for c in nbrs]) if len(nbrs) else np.zeros(0, np.int64)
        offs = X[sp.offset + rows] - X[cols]  # (nnz, d) offsets y_i - y_j
        if widths is not None:  # the exact entry is nonzero for |o_a| < rho + (h_i,a + h_j,a)/2
            wi, wj = widths[:d, sp.offset + rows].T, widths[:d, cols].T
            keep = np.all(np.abs(offs) < radius + 0.5 * (wi + wj) - 1e-9 * h, axis=1)
            rows, cols, offs, wi, wj = rows[keep], cols[keep], offs[keep], wi[keep], wj[keep]
        owned = (cols >= sp.offset) & (cols < sp.offset + sp.n_local)
        self.halo = Halo(comm, sp.offsets, np.unique(cols[~owned]))
        lcol = np.where(owned, cols - sp.offset, sp.n_local + np.searchsorted(self.halo.ghosts, cols))
        self.n_ext = sp.n_local + self.halo.ghosts.size
        self.nnz = rows.size
        # Q1 basis values at the offsets: 2^d nonzeros per pair (exact zeros dropped), in
        # the block of the pair's channels (c_i, c_j)
        pr, pc, pv = q1_basis(offs, radius, cells) if widths is None else box_basis(offs, wi, wj, radius, cells)
        pc = pc + (chan[sp.offset + rows[pr]] * C + chan[cols[pr]]) * self.Ms
        w_col = np.concatenate([sp.weights[: sp.n_local], np.zeros(self.halo.ghosts.size)])
        w_col[sp.n_local :] = sp.weights_all[self.halo.ghosts]
        pv = pv * w_col[lcol[pr]]
        #: (nnz x M): the values of B are ``P kappa`` on the pattern (rows, lcol), in its CSR order
        self.P = sparse.csr_array((pv, (pr, pc)), shape=(self.nnz, self.M))
        self._pattern = sparse.csr_array((np.ones(self.nnz), (rows, lcol)), shape=(sp.n_local, self.n_ext))
        self._pattern.sort_indices()
        # the pattern's CSR order is (row, local column): reorder P's rows to match it
        order = np.lexsort((lcol, rows))
        self.P = self.P[order]
        self._indices, self._indptr = self._pattern.indices, self._pattern.indptr
        self._tiles = self._tile_pairs(lo[:d], radius, 64 * C)
        if method not in ("auto", "grid", "csr"):
            raise InputError(f"unknown local kernel method {method!r}; choose 'auto', 'grid' or 'csr'")
        #: the pixel-grid layout of the fast path (None: the CSR path)
        self.grid = None if method == "csr" else PixelGrid.detect(self, chan, strict=method == "grid")
        self.method = "csr" if self.grid is None else "grid"

    def _tile_pairs(self, lo, radius, rows_per_tile=64):
        """The owned rows grouped into boxes of about ``rows_per_tile`` rows (at least the
        support wide), with each box's columns and the positions of its pairs in the box's
        dense rows x columns block: the outer product's sampled products come from one
        GEMM a box (:meth:`outer`)."""
        sp, d = self.space, self.sdim
        nl = sp.n_local
        if nl == 0:
            return []
        xo = sp.x_owned[:d].T
        span = np.maximum(xo.max(axis=0) - xo.min(axis=0), 1e-300)
        side = max(2 * radius, float(np.prod(span) * rows_per_tile / nl) ** (1.0 / d))
        cell = np.floor((xo - lo) / side).astype(np.int64)
        tid = np.ravel_multi_index(tuple((cell - cell.min(axis=0)).T), tuple(cell.max(axis=0) - cell.min(axis=0) + 1))
        order = np.argsort(tid, kind="stable")
        bounds = np.flatnonzero(np.diff(tid[order])) + 1
        counts = np.diff(self._indptr)
        tiles = []
        for R in np.split(order, bounds):
            q = np.concatenate([np.arange(self._indptr[i], self._indptr[i + 1]) for i in R])
            C, colpos = np.unique(self._indices[q], return_inverse=True)
            rowpos = np.repeat(np.arange(R.size), counts[R])
            tiles.append((R, C, q, rowpos * C.size + colpos))
        return tiles

    # ---- the operator
    def matrix(self, kappa: np.ndarray):
        """B for one layer's coefficients kappa ``(M,)``: a SciPy CSR ``(n_local, n_ext)``
        matrix over the owned rows and the owned-then-ghost columns."""
        from scipy import sparse

        return sparse.csr_array((self.P @ np.asarray(kappa, dtype=float), self._indices, self._indptr),
                                shape=(self.space.n_local, self.n_ext))

    def _extended(self, F: np.ndarray) -> np.ndarray:
        """F's owned rows and the ghost rows, C-ordered ``(n_ext, S)`` in F's precision."""
        nl = self.space.n_local
        dt = F.dtype if F.dtype == np.float32 else np.float64
        X = np.empty((self.n_ext, F.shape[1]), dtype=dt)
        X[:nl] = F
        if self.space.comm.size > 1:
            self.halo.forward(F, X[nl:])
        return X

    def apply(self, kappa, F):
        if np.ndim(F) == 1:
            return self.apply(kappa, np.asarray(F)[:, None])[:, 0]
        if self.grid is not None:
            return self.grid.apply(kappa, F)
        if F.dtype == np.float32:
            return np.asfortranarray(self.matrix(kappa).astype(np.float32) @ self._extended(F))
        return np.asfortranarray(self.matrix(kappa) @ self._extended(F))

    def apply_transpose(self, kappa, V, scale=1.0):
        if np.ndim(V) == 1:
            return self.apply_transpose(kappa, np.asarray(V)[:, None], scale)[:, 0]
        if self.grid is not None:  # the ghosts' v forward (every rank is on the grid path)
            return self.grid.apply_transpose(kappa, V, scale)
        nl = self.space.n_local
        if V.dtype == np.float32:
            Y = self.matrix(scale * np.asarray(kappa, dtype=float)).astype(np.float32).T @ np.ascontiguousarray(V)
            out = np.array(Y[:nl], order="F")
            if self.space.comm.size > 1:
                self.halo.reverse(Y[nl:], out)
            return out
        Y = self.matrix(kappa).T @ np.ascontiguousarray(V)  # (n_ext, S)
        out = np.array(Y[:nl], order="F")
        if self.space.comm.size > 1:
            self.halo.reverse(Y[nl:], out)
        if scale != 1.0:
            out *= scale
        return out

    def outer(self, Z, F, b=None, scale=1.0):
        """``g = P^T G`` with the sampled products ``G_p = sum_s Z[i_p, s] F[j_p, s]`` on
        the support's pairs, one dense product ``Z[R] F[C]^T`` per box of rows R and their
        columns C (the rank's part; :meth:`reduce` sums over the node ranks). On the grid
        path: :meth:`PixelGrid.outer`."""
        if self.grid is not None:
            return self.grid.outer(Z, F, scale)
        X = self._extended(np.asfortranarray(F))
        Zc = np.ascontiguousarray(Z)
        G = np.empty(self.nnz)
        for R, C, q, flat in self._tiles:
            G[q] = (Zc[R] @ X[C].T).ravel()[flat]
        return scale * (self.P.T @ G)

    # ---- the control block: kappa on node rank 0, replicated in the network
    def shape(self):
        return (self.M,)

    def block_shape(self, N):
        return (N, self.M if self.space.comm.rank == 0 else 0)

    def natural_shape(self, N):
        return (N, self.M)

    def from_natural(self, b_nat):
        b_nat = np.asarray(b_nat, dtype=float)
        return b_nat if self.space.comm.rank == 0 else b_nat[:, :0]

    def to_natural(self, block):
        return self.share(block)

    def share(self, block):
        comm = self.space.comm
        N = block.shape[0]
        out = np.array(block) if comm.rank == 0 else np.empty((N, self.M))
        comm.Bcast(out, root=0)
        return out

    def reduce(self, g):
        if self.space.comm.size > 1:
            self.space.comm.Allreduce(_mpi().IN_PLACE, g, op=_mpi().SUM)
        return g

    def weigh(self, block, out, depth, inverse):
        """``tau_k`` (or the depth operator) times kappa's lumped Q1 mass on the offset box."""
        if block.size == 0:
            return out
        w = 1.0 / self.kappa_weights if inverse else self.kappa_weights
        out[:] = depth.solve(block * w) if inverse else depth.apply(block * w)
        return out

    def diagonal(self):
        return (self.kappa_weights if self.space.comm.rank == 0 else self.kappa_weights[:0],)

    def sample(self, b, t):
        """A scalar, a callable ``kappa(d, t)`` of the offsets d ``(gdim, M)`` (kappa's
        nodes), or an array ``(M,)``."""
        if callable(b):  # the same kappa for every pair of channels
            return np.tile(np.broadcast_to(np.asarray(b(self.kappa_points, t), dtype=float), (self.Ms,)), self.channels**2)
        arr = np.asarray(b, dtype=float)
        if arr.ndim == 0:
            return np.full(self.M, float(arr))
        if arr.shape != (self.M,):
            raise InputError(f"a local kernel's b has shape {arr.shape} per layer; expected ({self.M},) "
                             f"(kappa's nodal values on a {self.cells}-cell offset box"
                             f"{f', for {self.channels}^2 pairs of channels' if self.channels > 1 else ''})")
        return arr

    def describe(self):
        return {"kernel": self.name, "kernel_radius": self.radius, "kernel_cells": self.cells,
                "kernel_channels": self.channels, "kernel_quadrature": self.quadrature}

    def transfer(self, source, b_nat, I):
        """kappa does not depend on the node mesh: the same coefficients, or kappa
        interpolated onto this kernel's offset box (zero outside the source's support)."""
        if source.name != self.name:
            raise InputError(f"cannot transfer {source.name} kernels to {self.name} kernels")
        if (source.sdim, source.channels) != (self.sdim, self.channels):
            raise InputError(f"cannot transfer a local kernel on {source.sdim}-d images with {source.channels} "
                             f"channel(s) to one on {self.sdim}-d images with {self.channels}")
        if (source.radius, source.cells) == (self.radius, self.cells):
            return np.array(b_nat, dtype=float)
        pts = self.kappa_points.T
        inside = np.all(np.abs(pts) <= source.radius * (1 + 1e-12), axis=1)
        r, c, v = q1_basis(pts[inside], source.radius, source.cells)
        E = np.zeros((self.Ms, source.Ms))
        np.add.at(E, (np.nonzero(inside)[0][r], c), v)
        N, P = np.shape(b_nat)[0], self.channels**2
        return (np.asarray(b_nat).reshape(N, P, source.Ms) @ E.T).reshape(N, P * self.Ms)

    def image(self, b_nat_layer):
        """kappa on the offset box; with channels a C x C mosaic of them (row: the
        receiving channel, column: the sending one)."""
        r, m, C, d = self.radius, self.cells + 1, self.channels, self.sdim
        blocks = np.asarray(b_nat_layer).reshape(C, C, *((m,) * d))
        if d == 1:
            img = blocks.transpose(0, 2, 1, 3).reshape(C, C * m) if C > 1 else blocks.reshape(1, m)
            return img, (-r, (2 * C - 1) * r, -0.5, C - 0.5), "offset y - z (per sending channel)", "channel"
        if d == 3:
            blocks = blocks[..., m // 2]
        img = blocks.transpose(0, 3, 1, 2).reshape(C * m, C * m)  # [c_i, y2, c_j, y1]
        img = img[::-1] if C > 1 else img  # receiving channel 0 on top
        span = (2 * C - 1) * r
        return img, (-r, span, -r, span), "offset y1 - z1 (per sending channel)", "offset y2 - z2 (per receiving channel)"


class PixelGrid:
    """The local kernel on a structured image grid: dense GEMMs over channels and samples.

    When the node dofs are the DG0 cells of a regular pixel grid (C layers along the last
    axis), every pair's offset ``y_i - y_j`` is an integer multiple ``o`` of the pixel
    size and B is a convolution: ``(B f)(p, c) = sum_o sum_c' K_o[c, c'] f(p - o, c')``
    with one C x C matrix a support offset, ``K_o[c, c'] = omega kappa_{c c'}(o h)``
    (kappa's Q1 interpolant at the offset times the cell weight omega): the same operator
    as the CSR path's ``P kappa`` to round-off.

    This rank's owned pixels are laid out in their bounding box padded by the support
    (R_a pixels a side, the halo), C-ordered ``(pixels..., C, S)``: samples innermost.
    For an output pixel, the inputs at the last axis' 2 R + 1 offsets and all channels
    are one contiguous ``((2 R + 1) C, S)`` block, so ``B f`` is, per offset of the other
    axes, one batched GEMM ``(C x (2R+1) C) @ ((2R+1) C x S)`` over the box's pixels
    through a strided view (no im2col copy), with K = (2R+1) C and N = S (docs/kernels.md
    has the measurements against im2col, row-block GEMMs and the CSR path). B^T and the
    outer product are the same GEMMs transposed. Pixels of the box the rank neither owns
    nor holds as ghosts are zero: an owned row never reads them (its support holds only
    owned and ghost pixels), so a partition whose block is not a rectangle is still
    exact, only wasteful (refused when the box holds more than 8 times the rank's rows).

    Args:
        kern: the local kernel (its pairs, halo and channels).
        chan: every global dof's channel.
        geometry: ``(k, n, h, R)``: every global dof's integer pixel index per axis
            ``(d, n_dofs)``, the pixels per axis, the pixel size per axis and the
            support's half-width in pixels per axis.
    """

    def __init__(self, kern: LocalKernel, chan: np.ndarray, geometry: tuple):
        sp, C = kern.space, kern.channels
        k, n, h, R = geometry
        d = len(n)
        nl, off = sp.n_local, sp.offset
        self.C, self.R = C, R
        ko = k[:, off : off + nl]
        blo = ko.min(axis=1) if nl else np.zeros(d, np.int64)
        self.box = tuple(int(v) for v in (ko.max(axis=1) + 1 - blo)) if nl else (1,) * d
        box = np.array(self.box)
        self.pad1 = tuple(box + 2 * R)  # padded by R: the inputs

        def flat(rel, shape):  # flat index in a box of ``shape`` (-1 outside)
            shape = np.asarray(shape)
            inside = np.all((rel >= 0) & (rel < shape[:, None]), axis=0)
            st = np.ones(d, dtype=np.int64)
            for a in range(d - 2, -1, -1):
                st[a] = st[a + 1] * shape[a + 1]
            return np.where(inside, (np.where(inside, rel, 0).T @ st), -1)

        rel = k - blo[:, None]  # box coordinates of every global dof
        in_box = flat(rel, box)
        in_pad1 = flat(rel + R[:, None], self.pad1)
        owned = slice(off, off + nl)
        #: rows of the box's (pixel, channel) of the owned dofs
        self.own_box = in_box[owned] * C + chan[owned]
        #: rows of the padded box's (pixel, channel) of the owned dofs and of the ghosts
        self.own_pad = in_pad1[owned] * C + chan[owned]
        gh = kern.halo.ghosts
        self.ghosts_inside = bool(np.all(in_pad1[gh] >= 0))
        self.ghost_pad = np.where(in_pad1[gh] >= 0, in_pad1[gh] * C + chan[gh], 0)
        self.halo = kern.halo
        self.n_pad = int(np.prod(self.pad1)) * C
        # per slab of the box's first axis: its owned rows (within the slab) and their local rows
        self.space_n = nl
        slabs = box[0] if d > 1 else 1  # 1-D: the whole box is one slab
        per = int(np.prod(box)) * C // slabs
        order = np.argsort(self.own_box, kind="stable")
        cuts = np.searchsorted(self.own_box[order], per * np.arange(slabs + 1))
        self.slab_dst = [order[cuts[i] : cuts[i + 1]] for i in range(slabs)]
        self.slab_src = [self.own_box[o] - i * per for i, o in enumerate(self.slab_dst)]
        #: every pixel of the box is owned (one rank, or a rectangular block): the box's
        #: rows are a permutation of the owned ones, ``box_row``
        self.full_box = sp.comm.size == 1 or nl == int(np.prod(box)) * C
        self.box_row = np.empty(nl if self.full_box else 0, dtype=np.int64)
        if self.full_box:
            self.box_row[self.own_box] = np.arange(nl)
        self._buffers = {}
        self.n_box = int(np.prod(box))
        # the support's offsets: the last axis' are the GEMM's K blocks, the others a loop
        self.rest = [tuple(o) for o in np.ndindex(*(2 * R[:-1] + 1))]  # o_rest + R_rest
        offs = np.array([[*(np.array(r) - R[:-1]), j - R[-1]] for r in self.rest for j in range(2 * R[-1] + 1)],
                        dtype=np.int64).reshape(-1, d)
        #: (n_rest, 2 R_d + 1, Ms): kappa's Q1 basis at the offsets times the (uniform) cell weight
        if kern.quadrature == "exact":  # the cells' average of kappa's basis (every cell h wide)
            hh = np.broadcast_to(np.asarray(h, dtype=float), offs.shape)
            rr, cc, vv = box_basis(offs * h, hh, hh, kern.radius, kern.cells)
        else:
            rr, cc, vv = q1_basis(offs * h, kern.radius, kern.cells)
        Q = np.zeros((offs.shape[0], kern.Ms))
        np.add.at(Q, (rr, cc), vv)
        self.Q = (Q * float(np.mean(sp.weights_all))).reshape(len(self.rest), 2 * R[-1] + 1, kern.Ms)

    @classmethod
    def detect(cls, kern: LocalKernel, chan: np.ndarray, strict: bool = False) -> PixelGrid | None:
        """The grid layout if the node mesh is a structured image grid and every rank's
        block suits it, else None (``strict``: raise instead). Collective."""
        sp, C, d = kern.space, kern.channels, kern.sdim

        def no(why):
            if strict:
                raise InputError(f"the local kernel's grid path needs {why}")
            return None

        if sp.family != "DG" or sp.degree != 0:
            return no("a DG0 node space")
        X = sp.x_all[:d]
        k, n, h = np.zeros((d, sp.n), dtype=np.int64), np.ones(d, dtype=np.int64), np.ones(d)
        for a in range(d):
            u = np.unique(X[a])
            span = u[-1] - u[0]
            u = u[np.concatenate([[True], np.diff(u) > 1e-9 * max(span, 1e-300)])]
            n[a] = u.size
            if u.size > 1:
                h[a] = span / (u.size - 1)
            k[a] = np.rint((X[a] - u[0]) / h[a]).astype(np.int64)
            if np.abs(X[a] - (u[0] + k[a] * h[a])).max() > 1e-9 * h[a]:
                return no("a regular pixel grid (the cell centres are not equally spaced)")
        key = np.ravel_multi_index(tuple(k), tuple(n)) * C + chan
        if sp.n != C * int(np.prod(n)) or np.unique(key).size != sp.n:
            return no("a full pixel grid in every channel")
        w = sp.weights_all
        if w.size and np.ptp(w) > 1e-12 * np.abs(w).max():
            return no("equal cell weights")
        if kern.quadrature == "exact":  # |k h| < rho + h
            R = np.where(n > 1, np.ceil(kern.radius / h + 1 - 1e-9) - 1, 0).astype(np.int64)
        else:  # |k h| <= rho
            R = np.where(n > 1, np.floor(kern.radius * (1 + 1e-9) / h + 1e-9), 0).astype(np.int64)
        # the same pairs as the CSR pattern (their count, from the in-domain offsets per axis)
        ko = k[:, sp.offset : sp.offset + sp.n_local]
        per_axis = [np.minimum(ko[a] + R[a], n[a] - 1) - np.maximum(ko[a] - R[a], 0) + 1 for a in range(d)]
        same = int(C * np.prod(per_axis, axis=0).sum()) == kern.nnz
        grid = cls(kern, chan, (k, n, h, R))
        fits = grid.C * int(np.prod(grid.pad1)) <= 8 * max(sp.n_local, 1) and grid.ghosts_inside
        # B^T exchanges v's ghosts forward on the grid path, backward on the CSR one: every
        # rank takes the same path
        if not sp.comm.allreduce(same, op=_mpi().LAND):
            return no("the support's pixels to be the CSR pattern's pairs")
        if not sp.comm.allreduce(fits, op=_mpi().LAND):
            return no("every rank's pixels to fill at least 1/8 of their padded bounding box")
        return grid

    # ---- the offset weights and the strided views
    def _K(self, kappa, dtype, transpose=False, scale=1.0):
        """Per view r of :meth:`_views` (a multi-index of the leading axes), the GEMM's left
        factor ``(n_rest, C, (2R+1) C)``: ``[r, c, (j, c')] = K_(R - r, R - j)[c, c']``
        (B: the view at r reads the input at the offset o = R - r), or
        ``K_(r - R, j - R)[c', c]`` (B^T, ``transpose``: it reads at p + o)."""
        C = self.C
        kap = scale * np.asarray(kappa, dtype=float).reshape(C, C, -1)
        K = np.einsum("ijm,rom->rioj", kap, self.Q)  # [r, c_i, o_last + R, c_j]
        if transpose:  # B^T: the mirrored offset -o, and c_i <-> c_j
            return np.ascontiguousarray(K.transpose(0, 3, 2, 1)).reshape(len(self.rest), C, -1).astype(dtype)
        return np.ascontiguousarray(K[::-1, :, ::-1, :]).reshape(len(self.rest), C, -1).astype(dtype)

    def _views(self, buf, shape, out_shape, S):
        """For each offset of the leading axes, the ``(*out_shape, (2R+1) C, S)`` strided
        view of ``buf`` (C-ordered ``(*shape, C, S)``) at that offset."""
        C, it, d = self.C, buf.itemsize, len(shape)
        st = np.ones(d, dtype=np.int64)
        for a in range(d - 2, -1, -1):
            st[a] = st[a + 1] * shape[a + 1]
        strides = tuple(int(v) * C * S * it for v in st) + (S * it, it)
        K = (2 * int(self.R[-1]) + 1) * C
        for r in self.rest:
            start = int(np.dot(r, st[:-1])) * C * S if d > 1 else 0
            yield np.lib.stride_tricks.as_strided(buf[start:], shape=tuple(out_shape) + (K, S), strides=strides,
                                                  writeable=False)

    def _conv(self, Kmat, buf, S):
        """``out[p] = sum_r Kmat[r] @ view_r[p]`` on the owned pixels: a fresh Fortran
        ``(n_local, S)``. One slab of the box's first axis at a time: the slab's sum stays
        in the caches and its owned rows go to the output from there (the transposing
        copy to the network's layout costs half as much as a pass afterwards, measured)."""
        res = np.empty((self.space_n, S), dtype=buf.dtype, order="F")
        views = list(self._views(buf, self.pad1, self.box, S))
        if len(self.box) == 1:
            out = np.matmul(Kmat[0], views[0]).reshape(-1, S)
            res[self.slab_dst[0]] = out[self.slab_src[0]]
            return res
        slab = np.empty(self.box[1:] + (self.C, S), dtype=buf.dtype)
        tmp = np.empty_like(slab)
        for i in range(self.box[0]):
            np.matmul(Kmat[0], views[0][i], out=slab)
            for r in range(1, len(views)):
                np.matmul(Kmat[r], views[r][i], out=tmp)
                slab += tmp
            res[self.slab_dst[i]] = slab.reshape(-1, S)[self.slab_src[i]]
        return res

    def _padded(self, F):
        """F's owned rows (``(n_local, S)``, any memory order) and their ghosts written into
        the R-padded box, C-ordered ``(padded pixels x C, S)`` in F's precision. The
        buffer is kept per (S, dtype): its rows that no call writes (the padding, and the
        box's pixels this rank neither owns nor holds as ghosts) stay zero, so a call
        costs one pass over F (measured: the extended rows and then a gather took two)."""
        S = F.shape[1]
        dt = np.dtype(np.float32 if F.dtype == np.float32 else np.float64)
        buf = self._buffers.get((S, dt))
        if buf is None:
            if len(self._buffers) >= 4:  # minibatches: a few batch sizes at a time
                self._buffers.clear()
            buf = self._buffers[(S, dt)] = np.zeros((self.n_pad, S), dtype=dt)
        buf[self.own_pad] = F
        if self.halo.comm.size > 1:
            ghosts = np.empty((self.ghost_pad.size, S), dtype=dt)
            self.halo.forward(F, ghosts)
            buf[self.ghost_pad] = ghosts
        return buf

    def apply(self, kappa, F):
        """``B f`` for this rank's rows F ``(n_local, S)``: a fresh Fortran ``(n_local, S)``."""
        buf = self._padded(F)
        return self._conv(self._K(kappa, buf.dtype), buf.reshape(-1), F.shape[1])

    def apply_transpose(self, kappa, V, scale=1.0):
        """``scale B^T v`` (a fresh Fortran ``(n_local, S)``): ``(B^T v)(q) = sum_o K_o^T
        v(q + o)`` reads v at the owned rows' support, owned or ghost (the support is
        symmetric), so B^T takes a forward exchange of v's ghost rows instead of the CSR
        path's reverse one."""
        buf = self._padded(V)
        return self._conv(self._K(kappa, buf.dtype, True, scale), buf.reshape(-1), V.shape[1])

    def outer(self, Z, F, scale=1.0):
        """``scale d<Z, B F>/d kappa``: ``G_o = sum_(p, s) Z[p, :, s] F[p - o, :, s]^T``, one
        batched GEMM per offset of the leading axes, then kappa's part ``Q^T G`` (this
        rank's). Z enters per pixel as a contiguous ``(S, C)`` block (its box pixels the
        rank does not own: zero): 1.6 times the GEMM rate of a transposed view at C = 16
        in float32 (measured), for one copy of Z."""
        S, C = F.shape[1], self.C
        buf = self._padded(F).reshape(-1)
        d = len(self.box)
        if self.full_box:  # Z^T's columns in box order, then per pixel (S, C)
            Zs = np.asarray(Z, dtype=buf.dtype).T[:, self.box_row].reshape(S, *self.box, C)
            ZT = np.ascontiguousarray(Zs.transpose(*range(1, d + 1), 0, d + 1))  # (box..., S, C)
        else:  # the box's pixels this rank does not own stay zero
            ZT = np.zeros((self.n_box, S, C), dtype=buf.dtype)
            ZT[self.own_box // C, :, self.own_box % C] = Z
            ZT = ZT.reshape(*self.box, S, C)
        G = np.zeros((len(self.rest), (2 * int(self.R[-1]) + 1) * C, C))
        views = list(self._views(buf, self.pad1, self.box, S))
        slabs = [(Ellipsis,)] if len(self.box) == 1 else [(i,) for i in range(self.box[0])]
        axes = tuple(range(len(self.box) - (len(self.box) > 1)))
        for i in slabs:  # per pixel ((2R+1) C x S) @ (S x C), summed over a slab of the first axis
            for r, v in enumerate(views):
                G[r] += np.matmul(v[i], ZT[i]).sum(axis=axes)
        G = G.reshape(len(self.rest), -1, C, C)[::-1, ::-1].transpose(0, 3, 1, 2)  # [o_rest + R, c_i, o_last + R, c_j]
        return scale * np.einsum("rioj,rom->ijm", G, self.Q).reshape(-1)


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


def q1_basis(points: np.ndarray, radius: float, cells: int):
    """The Q1 basis of the offset box ``[-radius, radius]^d`` (``cells`` cells a side,
    nodes numbered with the last axis fastest) at ``points`` ``(p, d)`` inside the box:
    ``(point, node, value)`` triplets, 2^d per point, exact zeros dropped."""
    p, d = points.shape
    hk = 2 * radius / cells
    s = np.clip((points + radius) / hk, 0.0, cells)
    cell = np.minimum(np.floor(s), cells - 1).astype(np.int64)
    frac = s - cell
    rows, cols, vals = [], [], []
    for corner in range(2**d):
        bits = [(corner >> a) & 1 for a in range(d)]
        val = np.ones(p)
        idx = np.zeros(p, dtype=np.int64)
        for a in range(d):
            val *= frac[:, a] if bits[a] else 1.0 - frac[:, a]
            idx = idx * (cells + 1) + cell[:, a] + bits[a]
        keep = val > 1e-14
        rows.append(np.nonzero(keep)[0]), cols.append(idx[keep]), vals.append(val[keep])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _tent_factors(o, hi, hj, radius, cells):
    """``(p, cells+1)``: per pair the 1-D factor ``(1/(h_i h_j)) int phi_m(o + s) g(s) ds``
    of kappa's hat functions phi_m, with g(s) the overlap of two cells of widths h_i, h_j
    at the lag s (a tent, or a trapezoid for unequal widths): the average of phi_m(y - z)
    over the pair of cells. The integrand is piecewise quadratic between the breakpoints
    (kappa's grid lines, the kinks of g): 2-point Gauss-Legendre on each piece is exact."""
    hk = 2 * radius / cells
    grid = -radius + hk * np.arange(cells + 1)
    lo, hi_ = o - 0.5 * (hi + hj), o + 0.5 * (hi + hj)
    kinks = np.stack([lo, o - 0.5 * (hi - hj), o + 0.5 * (hi - hj), hi_], axis=1)
    bp = np.sort(np.clip(np.concatenate([np.broadcast_to(grid, (o.size, cells + 1)), kinks], axis=1),
                         lo[:, None], hi_[:, None]), axis=1)
    mid, half = 0.5 * (bp[:, 1:] + bp[:, :-1]), 0.5 * (bp[:, 1:] - bp[:, :-1])
    out = np.zeros((o.size, cells + 1))
    for x in (-1 / np.sqrt(3.0), 1 / np.sqrt(3.0)):
        t = mid + half * x  # (p, pieces) offsets y - z
        s = t - o[:, None]
        g = np.clip(np.minimum(0.5 * hi[:, None], s + 0.5 * hj[:, None]) - np.maximum(-0.5 * hi[:, None], s - 0.5 * hj[:, None]),
                    0.0, None)
        phi = np.clip(1 - np.abs(t[..., None] - grid) / hk, 0.0, None) * (np.abs(t) <= radius)[..., None]
        out += np.einsum("pk,pkm->pm", half * g, phi)
    return out / (hi * hj)[:, None]


def box_basis(offsets: np.ndarray, wi: np.ndarray, wj: np.ndarray, radius: float, cells: int, chunk: int = 4096):
    """The average of kappa's Q1 basis functions ``phi_m(y - z)`` over pairs of axis-aligned
    box cells (centre offsets ``(p, d)``, widths ``wi``, ``wj`` ``(p, d)``), exact: a product
    of 1-D factors (:func:`_tent_factors`, computed once per distinct offset and widths).
    ``(pair, node, value)`` triplets as :func:`q1_basis`, exact zeros dropped."""
    p, d = offsets.shape
    m = cells + 1
    F = []
    for a in range(d):
        key = np.stack([offsets[:, a], wi[:, a], wj[:, a]], axis=1)
        scale = max(float(np.abs(key).max(initial=0.0)), 1e-300)
        _, first, inv = np.unique(np.round(key / scale, 11), axis=0, return_index=True, return_inverse=True)
        F.append(_tent_factors(key[first, 0], key[first, 1], key[first, 2], radius, cells)[inv.reshape(-1)])
    rows, cols, vals = [], [], []
    for c0 in range(0, p, chunk):
        T = np.ones((min(chunk, p - c0), 1))
        for a in range(d):
            T = (T[:, :, None] * F[a][c0 : c0 + chunk, None, :]).reshape(T.shape[0], -1)
        r, c = np.nonzero(np.abs(T) > 1e-300)
        rows.append(r + c0), cols.append(c), vals.append(T[r, c])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    assert m**d == T.shape[1]
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def box_widths(space: NodeSpace) -> np.ndarray | None:
    """Every global dof's cell widths per geometric axis ``(gdim, n)`` when the node space
    is DG0 on axis-aligned box cells (intervals, quadrilaterals, hexahedra) on every rank,
    else None. Collective."""
    msh = space.mesh
    tdim, gdim = msh.topology.dim, int(msh.geometry.dim)
    ok = space.family == "DG" and space.degree == 0 and tdim == gdim
    ok = ok and msh.topology.cell_name() in ("interval", "quadrilateral", "hexahedron")
    nc = msh.topology.index_map(tdim).size_local
    w = np.zeros((space.n_local, gdim))
    if ok and nc:
        x = msh.geometry.x[:, :gdim][msh.geometry.dofmaps[0][:nc]]  # (cells, vertices, gdim)
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        tol = 1e-10 * (hi - lo).max()
        at_lo, at_hi = np.abs(x - lo) <= tol, np.abs(x - hi) <= tol
        code = np.sort((at_hi * (2 ** np.arange(gdim))).sum(axis=2), axis=1)
        ok = (x.shape[1] == 2**gdim and bool(np.all(at_lo | at_hi))
              and bool(np.all(code == np.arange(2**gdim))))  # the 2^d corners of a box
        dof = np.asarray(space.V.dofmap.list)[:nc, 0]
        if ok and np.all(dof < space.n_local):
            w[dof] = (hi - lo)[:, 0, :]
        else:
            ok = False
    if not space.comm.allreduce(bool(ok), op=_mpi().LAND):
        return None
    return np.concatenate(space.comm.allgather(w), axis=0).T


def cell_extent(space: NodeSpace, d: int | None = None) -> float:
    """The largest extent (max-norm over the first ``d`` axes, default all) of a node
    cell, over all ranks."""
    msh = space.mesh
    tdim = msh.topology.dim
    d = int(msh.geometry.dim) if d is None else d
    nc = msh.topology.index_map(tdim).size_local
    x = msh.geometry.x[:, :d][msh.geometry.dofmaps[0][:nc]]  # (cells, vertices, d)
    local = float(np.max(x.max(axis=1) - x.min(axis=1))) if nc else 0.0
    return space.comm.allreduce(local, op=_mpi().MAX)


#: The kernel families by name (``[network] kernel``).
KERNELS = {"dense": DenseKernel, "local": LocalKernel, "lowrank": LowRankKernel}


def make_kernel(space: NodeSpace, name: str = "dense", **params) -> Kernel:
    """A kernel family by name with its parameters (dense: none; local: radius, cells,
    channels; lowrank: rank)."""
    if name not in KERNELS:
        raise InputError(f"unknown kernel {name!r}; choose one of {list(KERNELS)}")
    return KERNELS[name](space, **params)
