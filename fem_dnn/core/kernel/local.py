"""The local kernel family: translation-invariant kernels of compact support."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.core.batch import fortran
from fem_dnn.core.kernel.base import POSITIVE, Kernel, KernelMemory, _mpi, one_of, register
from fem_dnn.core.kernel.basis import box_basis, box_widths, cell_extent, q1_basis, trapezoid_factors
from fem_dnn.core.kernel.grid import PixelGrid
from fem_dnn.core.kernel.halo import Halo
from fem_dnn.errors import InputError

if TYPE_CHECKING:
    from fem_dnn.core.nodes import NodeSpace

__all__ = ["LocalKernel"]


@register
class LocalKernel(Kernel):
    """Translation-invariant kernels of compact support (the package doc).

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
            ``"nodal"`` the node quadrature ``kappa(y_i - y_j) omega_j``,
            ``"trapezoid"`` the node quadrature with half weights on the support box's
            faces (the composite trapezoid rule: the same kappa gives the same operator
            on every mesh to second order; :func:`trapezoid_factors`), ``"auto"``
            (default) exact where it applies, else nodal. With the exact rule B_h =
            Pi_h B Pi_h is consistent on nested meshes (docs/kernels.md).
    """

    name = "local"
    summary = "translation-invariant kappa(y - z) of support |y - z| <= kernel_radius"
    float32 = takes_channels = True
    config = {
        "kernel_radius": (0.15, float, POSITIVE, "local kernel: half-width rho of the support box (at least a node cell, "
                          "at most the node domain)"),
        "kernel_cells": (4, int, POSITIVE, "local kernel: Q1 cells a side of kappa's offset box ((cells+1)^d controls a layer)"),
        "kernel_quadrature": ("auto", str, one_of("auto", "exact", "nodal", "trapezoid"),
                              "local kernel: how the entries integrate kappa: exact (Galerkin double integral over "
                              "the cells; DG0 on axis-aligned box cells), nodal (node quadrature), trapezoid (node "
                              "quadrature with half weights on the support's faces: consistent across resolutions), "
                              "auto (exact where it applies)"),
    }
    #: a checkpoint without the rule was trained with the node quadrature, the only rule before it
    checkpoint_defaults = {"kernel_quadrature": "nodal"}
    #: bytes per pair of the support: the pattern, the basis values P (2^d a pair in 2-D:
    #: 4) and the per-coefficient matrices A_m (indices, values), plus the layer's
    #: assembled values
    BYTES_PER_PAIR = 12 + 4 * 12 + 4 * 16 + 2 * 8

    @classmethod
    def memory(cls, network, node, *, N, n, n_local, cells, gdim):
        """kappa: ``C^2 (cells+1)^d`` a layer (on node rank 0), the sparse pattern and the
        halo (the support's pairs and ghost rows on the unit interval or square)."""
        C = int(node["channels"])
        ds = gdim - (1 if C > 1 else 0)  # the image axes
        b = N * C * C * (network["kernel_cells"] + 1) ** ds
        k = (cells / C) ** (1.0 / ds)  # node cells a side
        # dofs a side within the support (the exact rule's pairs reach one cell further a side)
        band = 2 * network["kernel_radius"] * k + 1 + (0 if network.get("kernel_quadrature") in ("nodal", "trapezoid") else 2)
        nnz_l = int(min(n_local * band**ds * C, n_local * n))
        gathered = int(min(n, n_local + 2 * ds * band * k ** (ds - 1) * C))  # owned and ghost rows of a batch
        return KernelMemory(b, b, gathered, operator={"support pattern, basis values": cls.BYTES_PER_PAIR * nnz_l},
                            image=b // N)

    def __init__(self, space: NodeSpace, radius: float, cells: int = 4, channels: int = 1, method: str = "auto",
                 quadrature: str = "auto"):
        super().__init__(space)
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

        if quadrature not in ("auto", "exact", "nodal", "trapezoid"):
            raise InputError(f"unknown local kernel quadrature {quadrature!r}; choose 'auto', 'exact', 'nodal' or "
                             "'trapezoid'")
        widths = None if quadrature in ("nodal", "trapezoid") else box_widths(sp)  # (gdim, n) or None
        if quadrature == "exact" and widths is None:
            raise InputError("the local kernel's exact quadrature needs a DG0 node space on axis-aligned box cells "
                             "(intervals, quadrilaterals, hexahedra); use quadrature='nodal'")
        #: the rule of the entries: "exact" (Galerkin, box cells), "nodal" (node quadrature)
        #: or "trapezoid" (node quadrature, half weights on the support's faces)
        self.quadrature = "exact" if widths is not None else ("trapezoid" if quadrature == "trapezoid" else "nodal")
        self._where = (d, lo[:d], h, widths, chan)  # what the pairs are found from (_pairs)
        if method not in ("auto", "grid", "csr"):
            raise InputError(f"unknown local kernel method {method!r}; choose 'auto', 'grid' or 'csr'")
        # the pattern's size and ghosts: from the pixels when there are channels and the
        # grid path may take it (C times fewer points; the pairs themselves only if the CSR
        # path needs them), else from the pairs
        pairs = None if (C > 1 and method != "csr") else self._pairs()
        self.nnz, ghosts, self._fan_in = self._pattern(pairs)  # _fan_in: the pairs of a row, at most
        self.halo = Halo(comm, sp.offsets, ghosts)
        self.n_ext = sp.n_local + self.halo.ghosts.size
        #: the pixel-grid layout of the fast path (None: the CSR path)
        self.grid = None if method == "csr" else PixelGrid.detect(self, chan, strict=method == "grid")
        self.method = "csr" if self.grid is None else "grid"
        # the CSR path's matrices (P: pairs x kappa nodes, the pattern, the outer product's
        # tiles): built now for the CSR path, on first use on the grid path (which never
        # needs them in a solve; at 28x28 x 16 channels they are 5 million pairs, 2-3 s
        # and about 240 MB)
        self._csr = None
        if self.grid is None:
            self._build_csr(*(pairs if pairs is not None else self._pairs()))

    def _pattern(self, pairs=None):
        """``(nnz, ghosts, fan_in)``: the pairs' number, the columns other ranks own (sorted)
        and the most pairs of a row. From ``pairs`` (:meth:`_pairs`) if given; else from
        the pixels: every channel of a pixel has the pixel's spatial point and width, so
        the pairs of a dof are its pixel's neighbour pixels times the C channels (the same
        numbers and ghosts, from C times fewer points)."""
        sp = self.space
        if pairs is not None:
            rows, cols = pairs[0], pairs[1]
            owned = (cols >= sp.offset) & (cols < sp.offset + sp.n_local)
            return rows.size, np.unique(cols[~owned]), int(np.bincount(rows, minlength=1).max()) if rows.size else 0
        from scipy.spatial import cKDTree

        d, lo, h, widths, chan = self._where
        X = sp.x_all[:d].T
        first = np.flatnonzero(chan == 0)  # one dof a pixel: the pixels
        dist, pix = cKDTree(X[first]).query(X, p=np.inf)  # every dof's pixel
        if dist.size and dist.max() > 1e-9 * h:
            raise InputError("the node mesh is not an image x channels mesh: a channel's cells are not the image's")
        mine = pix[sp.offset : sp.offset + sp.n_local]
        own_pix = np.unique(mine)
        prow, pcol = self._neighbours(X[first], own_pix, None if widths is None else widths[:, first])[:2]
        per_pixel = np.bincount(own_pix[prow], minlength=first.size)  # neighbour pixels of each (owned) pixel
        C = self.channels
        nnz = int(C * per_pixel[mine].sum())
        fan_in = int(C * per_pixel[mine].max()) if mine.size else 0
        # the dofs of the neighbour pixels (every channel) that other ranks own
        near = np.zeros(first.size, dtype=bool)
        near[pcol] = True
        dofs = np.flatnonzero(near[pix])
        ghosts = dofs[(dofs < sp.offset) | (dofs >= sp.offset + sp.n_local)]
        return nnz, ghosts, fan_in

    def _pairs(self):
        """The pairs: owned rows i and columns j within the support (every dof's
        coordinates are known on every rank, ``sp.x_all``), their offsets ``y_i - y_j``
        and, for the exact rule, the two cells' widths."""
        sp = self.space
        d, lo, h, widths, chan = self._where
        return self._neighbours(sp.x_all[:d].T, sp.offset + np.arange(sp.n_local), widths)

    def _neighbours(self, X, owned, widths):
        """The points of ``X`` (``(n, d)``) within the support of each point ``X[owned]``:
        ``(rows, cols, offs, wi, wj)``, rows the positions in ``owned``, cols the points
        (ascending a row), offs ``X[owned[row]] - X[col]`` and, with ``widths`` (``(>= d,
        n)``, the exact rule: the entry is nonzero for ``|o_a| < rho + (h_i,a + h_j,a)/2``),
        the two cells' widths; else None."""
        from scipy.spatial import cKDTree

        d, lo, h = self._where[:3]
        radius = self.radius
        X = np.ascontiguousarray(X)
        reach = radius + (h if widths is not None else 0.0)
        nbrs = cKDTree(X).query_ball_point(X[owned], r=reach * (1 + 1e-9), p=np.inf)
        counts = np.array([len(c) for c in nbrs], dtype=np.int64)
        rows = np.repeat(np.arange(len(owned)), counts)
        cols = np.concatenate([np.sort(np.asarray(c, dtype=np.int64)) for c in nbrs]) if len(nbrs) else np.zeros(0, np.int64)
        offs = X[owned[rows]] - X[cols]  # (nnz, d) offsets y_i - y_j
        wi = wj = None
        if widths is not None:
            wi, wj = widths[:d, owned[rows]].T, widths[:d, cols].T
            keep = np.all(np.abs(offs) < radius + 0.5 * (wi + wj) - 1e-9 * h, axis=1)
            rows, cols, offs, wi, wj = rows[keep], cols[keep], offs[keep], wi[keep], wj[keep]
        return rows, cols, offs, wi, wj

    def _build_csr(self, rows, cols, offs, wi, wj):
        """P (the values of B are ``P kappa`` on the pattern), the pattern and the tiles."""
        from scipy import sparse

        sp, C = self.space, self.channels
        d, lo, h, widths, chan = self._where
        owned = (cols >= sp.offset) & (cols < sp.offset + sp.n_local)
        lcol = np.where(owned, cols - sp.offset, sp.n_local + np.searchsorted(self.halo.ghosts, cols))
        # Q1 basis values at the offsets: 2^d nonzeros per pair (exact zeros dropped), in
        # the block of the pair's channels (c_i, c_j)
        pr, pc, pv = q1_basis(offs, self.radius, self.cells) if widths is None else box_basis(offs, wi, wj, self.radius,
                                                                                              self.cells)
        if self.quadrature == "trapezoid":
            pv = pv * trapezoid_factors(offs, self.radius)[pr]
        pc = pc + (chan[sp.offset + rows[pr]] * C + chan[cols[pr]]) * self.Ms
        w_col = np.concatenate([sp.weights[: sp.n_local], np.zeros(self.halo.ghosts.size)])
        w_col[sp.n_local :] = sp.weights_all[self.halo.ghosts]
        pv = pv * w_col[lcol[pr]]
        #: (nnz x M): the values of B are ``P kappa`` on the pattern (rows, lcol), in its CSR order
        P = sparse.csr_array((pv, (pr, pc)), shape=(self.nnz, self.M))
        pattern = sparse.csr_array((np.ones(self.nnz), (rows, lcol)), shape=(sp.n_local, self.n_ext))
        pattern.sort_indices()
        # the pattern's CSR order is (row, local column): reorder P's rows to match it
        order = np.lexsort((lcol, rows))
        self._csr = {"P": P[order], "indices": pattern.indices, "indptr": pattern.indptr}
        self._csr["tiles"] = self._tile_pairs(lo, self.radius, 64 * C)

    def _csr_part(self, key):
        if self._csr is None:  # the grid path asked for a CSR matrix (matrix(), a test): built now
            self._build_csr(*self._pairs())
        return self._csr[key]

    P = property(lambda self: self._csr_part("P"), doc="(nnz x M): the values of B are ``P kappa`` on the pattern")
    _indices = property(lambda self: self._csr_part("indices"))
    _indptr = property(lambda self: self._csr_part("indptr"))
    _tiles = property(lambda self: self._csr_part("tiles"))

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
            return fortran(self.matrix(kappa).astype(np.float32) @ self._extended(F))
        return fortran(self.matrix(kappa) @ self._extended(F))

    def apply_grouped(self, kappa, F, groups, keep=False):
        """On the grid path, the GEMMs of the groups' summed kernel (:meth:`PixelGrid.apply`)."""
        if self.grid is None or groups == 1 or np.ndim(F) == 1:
            return self.apply(kappa, F)
        return self.grid.apply(kappa, F, groups, keep)

    def outer_grouped(self, Z, F, b, groups, scale=1.0):
        if self.grid is None or groups == 1:
            return self.outer(Z, F, b, scale)
        return self.grid.outer(Z, F, scale, groups)

    def apply_transpose_grouped(self, kappa, V, groups, scale=1.0):
        """On the grid path, the group sums alone (:meth:`PixelGrid.apply_transpose`)."""
        if self.grid is None or groups == 1 or np.ndim(V) == 1:
            return self.apply_transpose(kappa, V, scale)
        return self.grid.apply_transpose(kappa, V, scale, groups)

    def apply_transpose(self, kappa, V, scale=1.0):
        if np.ndim(V) == 1:
            return self.apply_transpose(kappa, np.asarray(V)[:, None], scale)[:, 0]
        if self.grid is not None:  # the ghosts' v forward (every rank is on the grid path)
            return self.grid.apply_transpose(kappa, V, scale)
        nl = self.space.n_local
        if V.dtype == np.float32:
            Y = self.matrix(scale * np.asarray(kappa, dtype=float)).astype(np.float32).T @ np.ascontiguousarray(V)
            out = fortran(Y[:nl])
            if self.space.comm.size > 1:
                self.halo.reverse(Y[nl:], out)
            return out
        Y = self.matrix(kappa).T @ np.ascontiguousarray(V)  # (n_ext, S)
        out = fortran(Y[:nl])
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

    def unit_gain(self, rng, N):
        """kappa uniform on ``+-1 / (omega sqrt(fan_in))``, fan_in the nodes a row of B
        reads (every channel's pixels in the support): B's entries ``omega kappa`` are
        then those of PyTorch's default ``Conv2d`` initialisation, U(+-1/sqrt(fan_in)),
        so ``B f`` starts with about the size of ``f`` (docs/model.md §4.14)."""
        fan_in = self.space.comm.allreduce(self._fan_in, op=_mpi().MAX)
        omega = float(np.mean(self.space.weights_all))
        return rng.uniform(-1.0, 1.0, self.natural_shape(N)) / (omega * np.sqrt(fan_in))

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
