"""The local kernel on a structured image grid: its fast path (:class:`PixelGrid`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.core.batch import ArrayMemo, fortran
from fem_dnn.core.kernel.base import _mpi
from fem_dnn.core.kernel.basis import box_basis, q1_basis, trapezoid_factors
from fem_dnn.errors import InputError

if TYPE_CHECKING:
    from fem_dnn.core.kernel.local import LocalKernel

__all__ = ["PixelGrid"]


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
        self.n_local = nl
        #: every pixel of the box is owned (one rank, or a rectangular block): the box's
        #: rows are a permutation of the owned ones
        self.full_box = sp.comm.size == 1 or nl == int(np.prod(box)) * C
        self._buffers = {}
        # which state each buffer holds: (S, dtype, m) -> times written; per state (ArrayMemo,
        # dropped with the state) the buffer and count of its write, and the im2col that a
        # product a gradient follows keeps for its outer product
        self._writes, self._written, self._im2cols = {}, ArrayMemo(4), ArrayMemo(4)
        # index arrays made once: m -> the rows of inputs constant on groups of m channels
        # (_group_rows), ("out", m) -> the rows of the group sums (_group_out), "box" -> the
        # owned rows' (pixel, channel) in the box (_box_order)
        self._index_cache = {}
        self._view_cache = {}  # the strided views of the padded buffers (_views)
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
            if kern.quadrature == "trapezoid":
                vv = vv * trapezoid_factors(offs * h, kern.radius)[rr]
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
    def _K(self, kappa, dtype, transpose=False, scale=1.0, groups=1):
        """Per view r of :meth:`_views` (a multi-index of the leading axes), the GEMM's left
        factor ``(n_rest, C, (2R+1) C)``: ``[r, c, (j, c')] = K_(R - r, R - j)[c, c']``
        (B: the view at r reads the input at the offset o = R - r), or
        ``K_(r - R, j - R)[c', c]`` (B^T, ``transpose``: it reads at p + o). With
        ``groups`` = m, B's input channels of each group of m are summed: for B
        ``(n_rest, C, (2R+1) C/m)``, the factor of an input constant on the groups; for
        B^T ``(n_rest, C/m, (2R+1) C)``, the group sums of B^T's output."""
        C = self.C
        kap = scale * np.asarray(kappa, dtype=float).reshape(C, C, -1)
        nr, no, Ms = self.Q.shape  # one GEMM (einsum's loops took 0.3 ms at C = 32)
        K = (kap.reshape(C * C, Ms) @ self.Q.reshape(nr * no, Ms).T).reshape(C, C, nr, no).transpose(2, 0, 3, 1)
        # K: [r, c_i, o_last + R, c_j]
        if groups > 1:
            K = K.reshape(*K.shape[:3], C // groups, groups).sum(axis=-1)
        if transpose:  # B^T: the mirrored offset -o, and c_i <-> c_j
            return np.ascontiguousarray(K.transpose(0, 3, 2, 1)).reshape(len(self.rest), C // groups, -1).astype(dtype)
        return np.ascontiguousarray(K[::-1, :, ::-1, :]).reshape(len(self.rest), C, -1).astype(dtype)

    def _views(self, buf, shape, out_shape, S, C=None):
        """For each offset of the leading axes, the ``(*out_shape, (2R+1) C, S)`` strided
        view of ``buf`` (C-ordered ``(*shape, C, S)``, C the kernel's channels unless
        given) at that offset: a list, kept with the buffer (the padded buffers are kept
        per batch size, so their views are made once, not 30 times a training step)."""
        key = (buf.__array_interface__["data"][0], buf.size, buf.dtype.str, tuple(shape), tuple(out_shape), S, C or self.C)
        # the address is the buffer's: the cached views hold that memory, so no other array has it
        views = self._view_cache.get(key)
        if views is None:
            if len(self._view_cache) >= 16:  # a few batch sizes at a time
                self._view_cache.clear()
            views = self._view_cache[key] = list(self._make_views(buf, shape, out_shape, S, C))
        return views

    def _make_views(self, buf, shape, out_shape, S, C=None):
        C, it, d = C or self.C, buf.itemsize, len(shape)
        st = np.ones(d, dtype=np.int64)
        for a in range(d - 2, -1, -1):
            st[a] = st[a + 1] * shape[a + 1]
        strides = tuple(int(v) * C * S * it for v in st) + (S * it, it)
        K = (2 * int(self.R[-1]) + 1) * C
        for r in self.rest:
            start = int(np.dot(r, st[:-1])) * C * S if d > 1 else 0
            yield np.lib.stride_tricks.as_strided(buf[start:], shape=tuple(out_shape) + (K, S), strides=strides,
                                                  writeable=False)

    def _conv(self, Kmat, buf, S, C_in=None, groups_out=1):
        """``out[p] = sum_r Kmat[r] @ view_r[p]`` on the owned pixels: a fresh Fortran
        ``(n_local, S)``. The sums go to a C-ordered ``(box pixels x C, S)`` buffer, one
        slab of the box's first axis at a time, then the owned rows to the network's
        layout in one gather and one blocked copy (:func:`fem_dnn.core.batch.fortran`:
        measured 0.5 ms against 0.9 ms for a gather per slab into the Fortran array, on
        14x14 x 32, S = 32, float32, two products). With ``groups_out`` = m the GEMMs give
        C/m channels (group sums, :meth:`_K`): each goes to its group's first channel, the
        others are zero."""
        views = list(self._views(buf, self.pad1, self.box, S, C_in))
        if len(self.box) == 1:
            out = np.matmul(Kmat[0], views[0])
        else:
            out = np.empty(self.box + (Kmat.shape[1], S), dtype=buf.dtype)
            tmp = np.empty(out.shape[1:], dtype=buf.dtype)
            for i in range(self.box[0]):
                np.matmul(Kmat[0], views[0][i], out=out[i])
                for r in range(1, len(views)):
                    np.matmul(Kmat[r], views[r][i], out=tmp)
                    out[i] += tmp
        out = out.reshape(-1, S)
        if groups_out == 1:
            return fortran(np.take(out, self.own_box, axis=0))
        dst, src = self._group_out(groups_out)
        res = np.zeros((self.n_local, S), dtype=buf.dtype)
        res[dst] = out[src]
        return fortran(res)

    #: the largest GEMM depth (support offsets x input channels) taken by one im2col GEMM
    #: instead of the per-pixel GEMMs: a slab's first stage on the input's one channel
    IM2COL_DEPTH = 64

    def _im2col(self, buf, S, C_in, F=None, keep=False):
        """``(n_rest (2R+1) C_in, n_box S)``: the input at every support offset of every
        box pixel (``[(r, j, c'), (p, s)]``), one copy of each strided view of the padded
        buffer (which holds the state F). With ``keep`` it is kept for F (ArrayMemo:
        dropped with F), and a later call for F takes it (a stage's product and its outer
        product read the same state)."""
        hit = None if F is None else self._im2cols.get(F)
        if hit is not None and hit[0] == C_in:
            return hit[1]
        views = list(self._views(buf, self.pad1, self.box, S, C_in))
        K = views[0].shape[-2]
        V = np.empty((len(views), K) + tuple(self.box) + (S,), dtype=buf.dtype)
        for r, v in enumerate(views):
            V[r] = np.moveaxis(v, -2, 0)
        V = V.reshape(len(views) * K, -1)
        if keep and F is not None:
            self._im2cols.put(F, (C_in, V))
        return V

    def _box_order(self):
        """The owned rows' (pixel, channel) in the box: ``(pixels, channels)`` index arrays."""
        if "box" not in self._index_cache:
            self._index_cache["box"] = (self.own_box // self.C, self.own_box % self.C)
        return self._index_cache["box"]

    def _box_index(self, major):
        """The owned rows' rows in a box array: (pixel, channel) order (``major="pixel"``:
        ``own_box``) or (channel, pixel) order (``"channel"``, made once)."""
        if major == "pixel":
            return self.own_box
        if "channel rows" not in self._index_cache:
            pix, ch = self._box_order()
            self._index_cache["channel rows"] = ch * self.n_box + pix
        return self._index_cache["channel rows"]

    def _box_rows(self, Z, major, dtype):
        """Z's owned rows (``(n_local, S)``, any order) in ``dtype`` as a C-ordered box array: ``(n_box x
        C, S)`` in (pixel, channel) order (``major="pixel"``) or ``(C x n_box, S)`` in
        (channel, pixel) order (``"channel"``); the box's pixels this rank does not own are
        zero. On a full box one gather of C-ordered rows (numpy's Fortran-to-C copy runs
        at full speed, :mod:`fem_dnn.core.batch`)."""
        rows = self._box_index(major)
        if self.full_box:
            key = ("inverse", major)
            if key not in self._index_cache:
                inv = np.empty(self.n_local, dtype=np.int64)
                inv[rows] = np.arange(self.n_local)
                self._index_cache[key] = inv
            return np.take(np.ascontiguousarray(Z, dtype=dtype), self._index_cache[key], axis=0)
        out = np.zeros((self.n_box * self.C, Z.shape[1]), dtype=dtype)
        out[rows] = Z
        return out

    def _group_out(self, m):
        """The owned rows of each group's first channel and their rows in the box of C/m
        channels (:meth:`_conv`'s group sums)."""
        key = ("out", m)
        if key not in self._index_cache:
            C, Cq = self.C, self.C // m
            pix, ch = self.own_box // C, self.own_box % C
            keep = np.flatnonzero(ch % m == 0)
            self._index_cache[key] = (keep, pix[keep] * Cq + ch[keep] // m)
        return self._index_cache[key]

    def _im2col_conv(self, Kmat, buf, S, C_in, F, keep):
        """:meth:`_conv` as one GEMM ``(C x n_rest (2R+1) C_in) @ im2col`` (of the state F,
        kept with ``keep``), for a shallow depth (the input's one channel: 25 against 5 a
        per-pixel GEMM; measured 1.0 ms against 1.5 ms at 28x28 x 16, S = 32, float32),
        then the owned rows gathered into the network's layout."""
        Kall = np.ascontiguousarray(Kmat.transpose(1, 0, 2)).reshape(self.C, -1)  # [c, (r, j, c')]
        out = (Kall @ self._im2col(buf, S, C_in, F, keep)).reshape(self.C * self.n_box, S)  # [(c, p), s]
        return fortran(np.take(out, self._box_index("channel"), axis=0))

    def _group_rows(self, m):
        """The owned rows and the ghost rows :meth:`_padded` writes, and their rows in the
        R-padded box of C/m channels: every row for m = 1; for inputs constant on
        consecutive groups of m channels each group's first channel (made once per m)."""
        if m == 1:
            return (slice(None), self.own_pad), (slice(None), self.ghost_pad)
        rows = self._index_cache.get(m)
        if rows is None:
            C, Cq = self.C, self.C // m

            def firsts(pad):
                pix, ch = pad // C, pad % C
                keep = np.flatnonzero(ch % m == 0)
                return keep, pix[keep] * Cq + ch[keep] // m

            rows = self._index_cache[m] = (firsts(self.own_pad), firsts(self.ghost_pad))
        return rows

    def _padded(self, F, groups=1, reuse=False):
        """F's owned rows (``(n_local, S)``, any memory order) and their ghosts written into
        the R-padded box, C-ordered ``(padded pixels x C, S)`` in F's precision; with
        ``groups`` = m (F constant on consecutive groups of m channels) one channel of
        each group, ``(padded pixels x C/m, S)``, a pass over 1/m of F. The buffer is kept
        per (S, dtype, m): its rows that no call writes (the padding, and the box's
        pixels this rank neither owns nor holds as ghosts) stay zero, so a call costs one
        pass over F (measured: the extended rows and then a gather took two). With
        ``reuse`` the buffer is not written again if F is the state it already holds
        (:meth:`outer` on the forward's state: F unchanged since, ArrayMemo's rule; on
        one rank of the node partition only, where no halo exchange would be skipped)."""
        S = F.shape[1]
        dt = np.dtype(np.float32 if F.dtype == np.float32 else np.float64)
        key = (S, dt, groups)
        buf = self._buffers.get(key)
        if reuse and buf is not None and self.halo.comm.size == 1 and self._written.get(F) == (key, self._writes[key]):
            return buf
        (own, own_q), (gh, gh_q) = self._group_rows(groups)
        if buf is None:
            if len(self._buffers) >= 4:  # minibatches: a few batch sizes at a time
                self._buffers.clear()
            buf = self._buffers[key] = np.zeros((self.n_pad // groups, S), dtype=dt)
        buf[own_q] = F[own]
        if self.halo.comm.size > 1:
            ghosts = np.empty((self.ghost_pad.size, S), dtype=dt)
            self.halo.forward(F, ghosts)
            buf[gh_q] = ghosts[gh]
        self._writes[key] = self._writes.get(key, 0) + 1
        self._written.put(F, (key, self._writes[key]))
        return buf

    def apply(self, kappa, F, groups=1, keep=False):
        """``B f`` for this rank's rows F ``(n_local, S)``: a fresh Fortran ``(n_local, S)``.
        With ``groups`` = m > 1, F is constant on consecutive groups of m channels (a state
        a slab boundary copied to more channels, the input copied to every channel): B f
        is then the GEMMs of the groups' summed kernel on one channel of each group, 1/m
        of the multiply-adds, the same values to round-off. ``keep``: the outer product
        with F follows (a gradient), so a shallow product's im2col is kept for it."""
        if groups > 1:
            buf = self._padded(F, groups)
            Kmat, S, Cin = self._K(kappa, buf.dtype, groups=groups), F.shape[1], self.C // groups
            if Kmat.shape[0] * Kmat.shape[2] <= self.IM2COL_DEPTH:  # a shallow GEMM: one im2col GEMM
                return self._im2col_conv(Kmat, buf.reshape(-1), S, Cin, F, keep)
            return self._conv(Kmat, buf.reshape(-1), S, Cin)
        buf = self._padded(F)
        return self._conv(self._K(kappa, buf.dtype), buf.reshape(-1), F.shape[1])

    def apply_transpose(self, kappa, V, scale=1.0, groups=1):
        """``scale B^T v`` (a fresh Fortran ``(n_local, S)``): ``(B^T v)(q) = sum_o K_o^T
        v(q + o)`` reads v at the owned rows' support, owned or ghost (the support is
        symmetric), so B^T takes a forward exchange of v's ghost rows instead of the CSR
        path's reverse one. With ``groups`` = m > 1 only the sums of B^T v over each group
        of m consecutive channels are formed (the GEMMs of the groups' summed kernel,
        1/m of the multiply-adds), in each group's first channel, the others zero: the
        dual a transfer that copied the groups reads back (its transpose sums them)."""
        buf = self._padded(V)
        return self._conv(self._K(kappa, buf.dtype, True, scale, groups), buf.reshape(-1), V.shape[1],
                          groups_out=groups)

    def outer(self, Z, F, scale=1.0, groups=1):
        """``scale d<Z, B F>/d kappa``: ``G_o = sum_(p, s) Z[p, :, s] F[p - o, :, s]^T``, one
        batched GEMM per offset of the leading axes, then kappa's part ``Q^T G`` (this
        rank's). Z enters per pixel as a contiguous ``(S, C)`` block (its box pixels the
        rank does not own: zero): 1.6 times the GEMM rate of a transposed view at C = 16
        in float32 (measured), for one copy of Z. With ``groups`` = m > 1 (F constant on
        groups of m channels, :meth:`apply`) the products are formed with one channel of
        each group and copied to the group's m channels."""
        S, C = F.shape[1], self.C
        Cin = C // groups
        buf = self._padded(F, groups, reuse=True).reshape(-1)
        depth = (2 * int(self.R[-1]) + 1) * Cin
        if groups > 1 and len(self.rest) * depth <= self.IM2COL_DEPTH:  # one GEMM over every pixel and sample
            G = self._im2col(buf, S, Cin, F) @ self._box_rows(Z, "channel", buf.dtype).reshape(C, -1).T
            return self._outer_kappa(G.reshape(len(self.rest), depth, C), groups, scale)
        # per pixel (S, C): Z's rows in box order, each pixel's (C, S) block transposed
        ZT = np.ascontiguousarray(self._box_rows(Z, "pixel", buf.dtype).reshape(self.n_box, C, S).transpose(0, 2, 1))
        ZT = ZT.reshape(*self.box, S, C)
        views = list(self._views(buf, self.pad1, self.box, S, Cin))
        slabs = [(Ellipsis,)] if len(self.box) == 1 else [(i,) for i in range(self.box[0])]
        axes = tuple(range(len(self.box) - (len(self.box) > 1)))
        # per pixel ((2R+1) C x S) @ (S x C), accumulated per pixel of a slab of the first
        # axis over the slabs and summed over those pixels once at the end (a reduction a
        # GEMM call cost 0.9 ms a step at 14x14 x 32, S = 32)
        acc = np.zeros((len(views),) + views[0][slabs[0]].shape[:-1] + (C,), dtype=buf.dtype)
        tmp = np.empty(acc.shape[1:], dtype=buf.dtype)
        for i in slabs:
            for r, v in enumerate(views):
                np.matmul(v[i], ZT[i], out=tmp)
                acc[r] += tmp
        G = acc.sum(axis=tuple(a + 1 for a in axes))
        return self._outer_kappa(G, groups, scale)

    def _outer_kappa(self, G, groups, scale):
        """kappa's part ``Q^T G`` of the offsets' products ``G[r, (j, c'), c]`` (c' over
        the groups: copied to each group's m channels)."""
        C = self.C
        G = G.reshape(len(self.rest), -1, C // groups, C)
        if groups > 1:  # d<Z, B F>/dK_o[c, c'] reads F's channel c' = its group's
            G = np.repeat(G, groups, axis=2)
        G = G[::-1, ::-1].transpose(0, 3, 1, 2)  # [o_rest + R, c_i, o_last + R, c_j]
        nr, no, Ms = self.Q.shape
        G = np.ascontiguousarray(G.transpose(1, 3, 0, 2)).reshape(C * C, nr * no)  # [(c_i, c_j), (r, o)]
        return scale * (G @ self.Q.reshape(nr * no, Ms)).reshape(-1)
