"""Depth slabs: a network whose node domain changes along depth (the continuum pooling).

The depth interval ``[0, T]`` is split into slabs ``[t_i, t_{i+1}]``; slab i is a uniform
network (:class:`~fem_dnn.network.Network`) on its own node space ``Y_i`` (an image x
channels mesh of DG0 box cells: 28x28x8, then 14x14x16, ...), with its own layers,
kernel and controls. At a slab boundary the state is carried to the next node space by
the L2 projection

    f_{i+1}(t_{i+1}) = P_i f_i(t_{i+1}),   (P_i f)|_c = (1/|c|) sum_e |c ∩ e| f_e,

for the DG0 cells c of ``Y_{i+1}`` and e of ``Y_i`` (on nested image meshes: the average
over a coarse pixel's fine pixels, the continuum average pooling; a channel axis with
more cells copies a channel's value to its sub-channels). The readout acts on the last
slab's state. The discrete adjoint of the composition is the composition of the
adjoints: the costate of slab i+1 at its first depth point, a dual vector (``M r``),
goes back through the exact matrix transpose ``P_i^T`` as the terminal dual of slab i,
and the same for the tangent (``dF = P_i dF``) and the second-order costate. So the
gradient and the Hessian actions stay exact (Taylor tests in tests/test_slabs.py).
A one-slab network is the uniform network. See docs/model.md §4.14.
"""

import numpy as np

from fem_dnn.core.batch import ArrayMemo, fortran
from fem_dnn.core.depth import Depth
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.kernel import Halo, box_widths
from fem_dnn.errors import InputError
from fem_dnn.network.continuum import Network, batch_inputs, is_batch
from fem_dnn.network.readout import (Readout, classes_adjoint, classes_output, classes_readout, classes_second,
                                     classes_tangent, softmax)

__all__ = ["SLAB_POOLINGS", "SlabControls", "SlabMaxPooling", "SlabNetwork", "SlabProjection", "SlabTrajectory"]


def _channels(net) -> int:
    """A slab's channel count (1 for a kernel without channels)."""
    return int(getattr(net.kernel, "channels", 1))


class SlabProjection:
    """The L2 projection ``P`` from one DG0 box-cell node space to another on the same
    domain, and its exact transpose, on any partitions of the two meshes.

    ``P[c, e] = |c ∩ e| / |c|`` (the overlap of the axis-aligned boxes over the target
    cell's volume): with the lumped DG0 mass, ``M_c P = A`` and ``P^T`` maps a dual vector
    on the target (``M r``) to the dual on the source. Each rank holds the rows of its
    target cells and the source values they read: its own and, from other ranks, the
    ghosts (one Alltoallv, :class:`~fem_dnn.core.kernel.Halo`).

    Args:
        source: the node space the state leaves (DG0 on box cells).
        target: the node space it enters (DG0 on box cells, the same domain).
    """

    def __init__(self, source: NodeSpace, target: NodeSpace):
        from scipy import sparse
        from scipy.spatial import cKDTree

        ws, wt = box_widths(source), box_widths(target)
        if ws is None or wt is None:
            raise InputError("depth slabs need DG0 node spaces of axis-aligned box cells in every slab")
        xs, xt = source.x_all[: ws.shape[0]], target.x_all[: wt.shape[0]]
        # an image mesh of one channel (no channel axis) is the image x [0, 1] of one cell
        d = max(ws.shape[0], wt.shape[0])
        if abs(ws.shape[0] - wt.shape[0]) > 1:
            raise InputError(f"a slab's node mesh is {wt.shape[0]}-D after a {ws.shape[0]}-D one: the slabs' node "
                             "domains must be the same image (x channels)")
        if ws.shape[0] < d:
            xs, ws = np.vstack([xs, np.full((1, xs.shape[1]), 0.5)]), np.vstack([ws, np.ones((1, ws.shape[1]))])
        if wt.shape[0] < d:
            xt, wt = np.vstack([xt, np.full((1, xt.shape[1]), 0.5)]), np.vstack([wt, np.ones((1, wt.shape[1]))])
        lo_s, hi_s = xs - 0.5 * ws, xs + 0.5 * ws
        lo_t, hi_t = xt - 0.5 * wt, xt + 0.5 * wt
        span = np.maximum(hi_s.max(axis=1), hi_t.max(axis=1)) - np.minimum(lo_s.min(axis=1), lo_t.min(axis=1))
        if np.any(np.abs(lo_s.min(axis=1) - lo_t.min(axis=1)) > 1e-9 * span) or np.any(
                np.abs(hi_s.max(axis=1) - hi_t.max(axis=1)) > 1e-9 * span):
            raise InputError("the slabs' node meshes must cover the same domain (the image x channels box)")
        # the owned target cells and every source cell that overlaps them
        own = slice(target.offset, target.offset + target.n_local)
        # a source cell overlaps a target cell only if their centres are closer than the
        # half-widths' sum on every axis: in coordinates scaled by that bound per axis, a
        # box search of radius 1 (one scalar radius over all axes took every cell of a
        # one-channel image for each of the 16 channels' cells: 1.6 s a transfer)
        reach = np.maximum(0.5 * (ws.max(axis=1) + wt.max(axis=1)), 1e-300)[:, None]
        tree = cKDTree(np.ascontiguousarray((xs / reach).T))
        cand = tree.query_ball_point(np.ascontiguousarray((xt[:, own] / reach).T), r=1 + 1e-9, p=np.inf)
        counts = np.array([len(c) for c in cand], dtype=np.int64)
        rows = np.repeat(np.arange(target.n_local), counts)
        cols = np.concatenate([np.asarray(c, dtype=np.int64) for c in cand]) if len(cand) else np.zeros(0, np.int64)
        t = target.offset + rows
        overlap = np.prod(np.clip(np.minimum(hi_t[:, t], hi_s[:, cols]) - np.maximum(lo_t[:, t], lo_s[:, cols]),
                                  0.0, None), axis=0)
        keep = overlap > 1e-12 * np.prod(wt[:, t], axis=0)
        rows, cols, overlap, t = rows[keep], cols[keep], overlap[keep], t[keep]
        vals = overlap / np.prod(wt[:, t], axis=0)
        # every target cell is covered: the rows sum to one (P reproduces constants)
        sums = np.bincount(rows, weights=vals, minlength=target.n_local)
        if target.n_local and np.abs(sums - 1).max() > 1e-9:
            raise InputError("a slab's node cells are not covered by the previous slab's cells")
        owned = (cols >= source.offset) & (cols < source.offset + source.n_local)
        self.source, self.target = source, target
        self.halo = Halo(source.comm, source.offsets, np.unique(cols[~owned]))
        lcol = np.where(owned, cols - source.offset, source.n_local + np.searchsorted(self.halo.ghosts, cols))
        self.n_ext = source.n_local + self.halo.ghosts.size
        #: ``(target n_local, source owned + ghosts)``: this rank's rows of P
        self.P = sparse.csr_array((vals, (rows, lcol)), shape=(target.n_local, self.n_ext))
        self.P.sort_indices()
        self._PT = self.P.T.tocsr()
        self._cast = {}  # (P, P^T) in another precision, made once
        #: no rank reads ghosts (one rank, or nested pixel blocks): the halo exchange is skipped
        self._local = source.comm.allreduce(int(self.halo.ghosts.size)) == 0

    def _matrices(self, dtype):
        if dtype == np.float64:
            return self.P, self._PT
        if dtype not in self._cast:
            self._cast[dtype] = (self.P.astype(dtype), self._PT.astype(dtype))
        return self._cast[dtype]

    def apply(self, F: np.ndarray) -> np.ndarray:
        """``P f`` for the source's owned rows ``(n_local, S)``: Fortran ``(target n_local, S)``."""
        return fortran(self._matrices(F.dtype)[0] @ self._extended(F))

    def apply_transpose(self, D: np.ndarray) -> np.ndarray:
        """``P^T d`` for the target's owned rows ``(n_local, S)`` (a dual vector):
        Fortran ``(source n_local, S)``, the ghost rows' parts summed on their owners."""
        return self._sum_ghosts(self._matrices(D.dtype)[1] @ np.ascontiguousarray(D))

    def _sum_ghosts(self, Y: np.ndarray) -> np.ndarray:
        """The owned rows of ``Y`` (source owned + ghosts, S), the ghost rows added on their
        owners (a fresh Fortran array: Y itself when it is one and has no ghost rows)."""
        if Y.shape[0] == self.source.n_local and Y.flags.f_contiguous and self._local:
            return Y
        out = fortran(Y[: self.source.n_local])
        if not self._local:
            self.halo.reverse(Y[self.source.n_local:], out)
        return out

    def _extended(self, F: np.ndarray) -> np.ndarray:
        """The source's owned rows and the ghosts P reads (``n_ext`` rows)."""
        if self._local:
            return F
        X = np.empty((self.n_ext, F.shape[1]), dtype=F.dtype)
        X[: self.source.n_local] = F
        self.halo.forward(F, X[self.source.n_local:])
        return X

    # the slab transfer's interface (:class:`SlabMaxPooling` has the same): P is linear, so
    # its derivative at any state F is P and the transpose of the derivative is P^T
    def tangent(self, F: np.ndarray, dF: np.ndarray) -> np.ndarray:
        """The derivative at ``F`` applied to ``dF``: ``P dF``."""
        return self.apply(dF)

    def transpose(self, F: np.ndarray, D: np.ndarray) -> np.ndarray:
        """The transposed derivative at ``F`` applied to a dual vector: ``P^T D``."""
        return self.apply_transpose(D)


class SlabMaxPooling:
    """The continuum max pooling between two DG0 box-cell node spaces: the state on a
    target cell c is the essential supremum of the source state over c,

        (Q f)|_c = max { f_e : |c ∩ e| > 0 },

    over the source cells e that overlap c (on nested image meshes: the largest of the
    fine pixels under a coarse pixel, in the coarse channel's source channel; the
    CNN's max pooling). Q is piecewise linear: away from ties its derivative at a state F
    routes each target cell to its maximising source cell, ``(dQ(F) dF)_c = dF_{e*(c)}``,
    its transpose adds a target dual value to that source cell, and its second derivative
    is zero. So the gradient is exact and the Hessian action is the exact one wherever the
    maximiser is unique (docs/model.md §4.14).

    Args:
        source: the node space the state leaves (DG0 on box cells).
        target: the node space it enters (the same domain).
    """

    def __init__(self, source: NodeSpace, target: NodeSpace):
        from scipy import sparse

        #: the overlap pattern and the halo of the L2 projection between the same spaces
        self.cells = SlabProjection(source, target)
        self.source, self.target = source, target
        P = self.cells.P
        counts = np.diff(P.indptr)
        width = int(counts.max()) if counts.size else 1
        # (target n_local, width): the overlapping source cells (a row's first repeated to the width)
        pad = np.arange(width)[None, :] < counts[:, None]
        pos = np.where(pad, P.indptr[:-1, None] + np.arange(width)[None, :], P.indptr[:-1, None])
        self.index = P.indices[pos] if P.nnz else np.zeros((0, width), dtype=np.int64)
        # target cells over the same source cells (a channel's copies in a slab of more
        # channels) pool once: the distinct windows, and each target cell's window
        if self.index.shape[0]:
            self.windows, copy = np.unique(self.index, axis=0, return_inverse=True)
        else:
            self.windows, copy = self.index, np.zeros(0, dtype=np.int64)
        self._copy = np.asarray(copy).ravel()
        n_w, n_t = self.windows.shape[0], self.index.shape[0]
        self._sum_copies = sparse.csr_array((np.ones(n_t), (self._copy, np.arange(n_t))), shape=(n_w, n_t))
        self._sums = {}  # the same in a batch's precision
        # no source cell in two windows (a pooling of nested pixels): the transpose is a scatter
        cells = np.unique(np.stack([np.repeat(np.arange(n_w), width), self.windows.ravel()]), axis=1)[1]
        self._disjoint = cells.size == 0 or int(np.bincount(cells).max()) <= 1
        small = self.cells.n_ext < 2**31
        self._flat_index = np.ascontiguousarray(self.windows, dtype=np.int32 if small else np.int64).ravel()
        self._row_base = (np.arange(n_w, dtype=np.intp) * width)[:, None]
        self._position = np.dtype(np.int8 if width < 128 else np.int32)  # the winner's position among the cells
        self._known = ArrayMemo(4)  # the maximisers of the states pooled last (a slab boundary, the readout)

    def _argmax(self, X: np.ndarray, values: bool = False):
        """``(windows, S)``: the source row (of the extended rows) where each window's
        maximum of each sample is, the first of ties (and, with ``values``, the maxima;
        a target cell takes its window's, ``[self._copy]``). A running maximum over the
        few overlapping cells on the C-ordered rows, the winner's position kept by
        integer arithmetic (``j += (k - j) [v > best]``) and the rows gathered once at the
        end: a boolean-masked copy costs 0.9 ms a pass where these cost 0.02-0.1 ms
        (measured, 28x28 x 16 -> 14x14 x 16, S = 64, float32: 1.4 ms a call against 6.8 ms)."""
        idx = self.windows
        Xc = np.ascontiguousarray(X)
        best = Xc[idx[:, 0]]
        j = np.zeros(best.shape, dtype=self._position)
        for k in range(1, idx.shape[1]):
            v = Xc[idx[:, k]]
            better = v > best
            np.maximum(best, v, out=best)
            d = self._position.type(k) - j
            d *= better
            j += d
        rows = np.take(self._flat_index, self._row_base + j)
        return (rows, best) if values else rows

    def _rows(self, F: np.ndarray) -> np.ndarray:
        """The maximisers under the state F: the ones :meth:`apply` found for F if it was
        among the last states pooled (the costate and the tangent pool the forward's
        states again; :class:`~fem_dnn.core.batch.ArrayMemo`: the solves never write into
        a state they have pooled), else computed."""
        hit = self._known.get(F)
        return hit if hit is not None else self._argmax(self.cells._extended(F))

    def apply(self, F: np.ndarray) -> np.ndarray:
        """``Q f`` for the source's owned rows ``(n_local, S)``: Fortran ``(target n_local, S)``."""
        rows, best = self._argmax(self.cells._extended(F), values=True)
        self._known.put(F, rows)
        return self._to_targets(best)

    def _to_targets(self, W: np.ndarray) -> np.ndarray:
        """Each target cell's row of a windows' ``(windows, S)`` array, in one gather into a
        Fortran ``(target n_local, S)``."""
        out = np.empty((self._copy.size, W.shape[1]), dtype=W.dtype, order="F")
        np.take(W, self._copy, axis=0, out=out)
        return out

    def tangent(self, F: np.ndarray, dF: np.ndarray) -> np.ndarray:
        """``dQ(F) dF``: each target cell takes ``dF`` at its maximiser under ``F``."""
        rows = self._rows(F)
        return self._to_targets(np.take_along_axis(self.cells._extended(dF), rows, axis=0))

    def transpose(self, F: np.ndarray, D: np.ndarray) -> np.ndarray:
        """``dQ(F)^T D`` for a dual vector on the target's owned rows: each value added to
        its maximiser's source row (ghost rows summed on their owners): the copies of a
        window summed first, then one scatter when the windows are disjoint."""
        rows = self._rows(F)
        S = D.shape[1]
        if D.dtype not in self._sums:
            self._sums[D.dtype] = self._sum_copies.astype(D.dtype)
        Dw = np.asarray(self._sums[D.dtype] @ D)  # each window's copies summed
        if self._disjoint:  # every source row takes at most one window's value
            Y = np.zeros((self.cells.n_ext, S), dtype=D.dtype, order="F")
            Y[rows, np.arange(S)[None, :]] = Dw
        else:
            flat = (rows.astype(np.intp) * S + np.arange(S)[None, :]).ravel()
            Y = np.bincount(flat, weights=np.ascontiguousarray(Dw).ravel(), minlength=self.cells.n_ext * S)
            Y = Y.reshape(self.cells.n_ext, S).astype(D.dtype, copy=False)
        return self.cells._sum_ghosts(Y)


#: the slabs' transfers (``network.slab_pooling``): the L2 projection (average pooling) or the max pooling
SLAB_POOLINGS = {"average": SlabProjection, "max": SlabMaxPooling}


class SlabControls(list):
    """The layer controls of a slab network: one :class:`~fem_dnn.network.Controls` a slab."""


class SlabTrajectory:
    """The slabs' trajectories (each a :class:`~fem_dnn.network.Trajectory` on its node
    space); ``final`` is the last slab's final state, the one the readout reads."""

    def __init__(self, trajectories: list, controls: SlabControls):
        self.slabs = trajectories
        self.controls = controls

    @property
    def final(self) -> np.ndarray:
        return self.slabs[-1].final

    @property
    def tape(self):
        """None unless every slab carries its tape (what the functional checks)."""
        return None if any(t.tape is None for t in self.slabs) else [t.tape for t in self.slabs]

    @property
    def levels(self):
        return None


class SlabNetwork:
    """Uniform networks in sequence along depth, each on its own node space, joined by
    :class:`SlabProjection` (see the module docstring).

    It offers the solves a :class:`~fem_dnn.learning.ReducedFunctional` uses (forward,
    costate, tangent, second-order costate, readout and its derivatives), so the
    functional, its Taylor tests and the optimisers run on it as on one network.

    Args:
        slabs: the networks, in depth order (the same layout and precision; depth
            checkpointing and node diffusion are not supported across slabs).
        input_space: the node space of the input data when it is not the first slab's
            (an image of one channel before a first slab of C channels): the input is
            carried onto the first slab by the L2 projection, which copies it to every
            channel (docs/model.md §4.14). None: the data live on the first slab.
        readout_space: a coarser image x channels space (the last slab's channels) that
            the classes readout reads the last state on, carried there by the L2
            projection: a pooled readout (one pixel: the channels' averages over the
            image, the continuum global average pooling). None: the last slab's space.
        pooling: how the state crosses a slab boundary, a key of :data:`SLAB_POOLINGS`:
            ``"average"`` the L2 projection, ``"max"`` the max pooling.
        readout_pooling: how the last state reaches ``readout_space`` (the same keys).
    """

    def __init__(self, slabs: list[Network], input_space: NodeSpace | None = None,
                 readout_space: NodeSpace | None = None, pooling: str = "average", readout_pooling: str = "average"):
        if len(slabs) < 1:
            raise InputError("a slab network needs at least one slab")
        self.slabs = list(slabs)
        first = self.slabs[0]
        for net in self.slabs[1:]:
            if net.dtype != first.dtype:
                raise InputError("every slab must have the same precision (network.dtype)")
            if net.layout.world.size != first.layout.world.size:
                raise InputError("every slab must use the same parallel layout")
        self.layout, self.dtype = first.layout, first.dtype
        for name in (pooling, readout_pooling):
            if name not in SLAB_POOLINGS:
                raise InputError(f"slab pooling {name!r}: one of {', '.join(SLAB_POOLINGS)}")
        self.pooling = pooling
        #: the transfers at the slab boundaries (:data:`SLAB_POOLINGS`)
        self.projections = [SLAB_POOLINGS[pooling](a.space, b.space) for a, b in zip(self.slabs, self.slabs[1:])]
        #: the projection of the input data onto the first slab (None: the data live there)
        self.lift = None if input_space is None else SlabProjection(input_space, first.space)
        #: the transfer of the last state onto the pooled readout's space (None: no pooling)
        self.pool = None if readout_space is None else SLAB_POOLINGS[readout_pooling](self.slabs[-1].space,
                                                                                      readout_space)
        #: the node space of the readout (the last slab's, or the pooled readout's)
        self.space = self.slabs[-1].space if readout_space is None else readout_space
        #: per slab, the channel groups its initial state is constant on (1: none), which its
        #: first stage's kernel product uses (:meth:`Network.forward`)
        self.groups = [self._groups(self.lift, first, 1)] + [
            self._groups(t, b, _channels(a)) for t, a, b in zip(self.projections, self.slabs, self.slabs[1:])]
        self.T = float(sum(net.depth.T for net in self.slabs))
        #: every slab's layers in one depth mesh of [0, T] (for reports and figures)
        self.depth = Depth(points=np.concatenate([[0.0]] + [
            t0 + net.depth.points[1:] for t0, net in zip(np.cumsum([0.0] + [n.depth.T for n in self.slabs]), self.slabs)]))
        self.scheme = first.scheme

    @staticmethod
    def _groups(transfer, net, C_src: int) -> int:
        """m when the transfer into ``net`` makes states constant on consecutive groups of
        m of its channels: a source of ``C_src`` channels nested in the slab's C = m C_src,
        each source channel copied to its m sub-channels (the input's one channel to all
        C). Taken from the channel counts and confirmed on a random state (the grouped
        kernel product equals the plain one to round-off; collective), else 1."""
        C = _channels(net)
        if transfer is None or C <= C_src or C % C_src:
            return 1
        m = C // C_src
        rng = np.random.default_rng(0)  # the same kernel on every rank
        b = rng.standard_normal(net.kernel.shape())
        X = transfer.apply(rng.standard_normal((transfer.source.n_local, 2)))
        plain, grouped = net.kernel.apply(b, X), net.kernel.apply_grouped(b, X, m)
        ok = np.abs(plain - grouped).max(initial=0.0) <= 1e-10 * max(np.abs(plain).max(initial=0.0), 1e-300)
        return m if net.layout.world.allreduce(int(not ok)) == 0 else 1  # every rank agrees

    # ---- controls and inputs
    def make_controls(self, slabs=None) -> SlabControls:
        """Zero controls (or ``(a, b)`` pairs per slab, as :meth:`Network.make_controls` takes)."""
        if slabs is None:
            return SlabControls(net.zero_controls() for net in self.slabs)
        return SlabControls(net.make_controls(a, b) for net, (a, b) in zip(self.slabs, slabs))

    def zero_controls(self) -> SlabControls:
        return self.make_controls()

    def inputs(self, f_I, split: bool = True) -> np.ndarray:
        """The initial data as :meth:`forward` takes them (:meth:`Network.inputs`): on the
        input space if there is one, else on the first slab's node space. The lift to the
        first slab is the forward's, a batch at a time: lifted, every sample's data would
        be C times as large (12,544 x 4,000 float32 rows for the recipe's images)."""
        if self.lift is None:
            return self.slabs[0].inputs(f_I, split)
        return batch_inputs(self.lift.source, self.layout, self.dtype, f_I, split)

    # ---- solves
    def forward(self, f_I, controls: SlabControls, tape: bool = False, store_every: int | None = None) -> SlabTrajectory:
        """The slabs' forward solves in turn, the state projected at each slab boundary;
        ``f_I`` as :meth:`inputs` gives them (on the input space, lifted here)."""
        if store_every is not None:
            raise InputError("depth checkpointing (store_every) is not supported across depth slabs")
        F = f_I
        if self.lift is not None:  # a batch on the input space (as the functional keeps them), or data
            F = self.lift.apply(np.asarray(f_I, dtype=self.dtype) if is_batch(f_I, self.lift.source) else self.inputs(f_I))
        trajs = []
        for i, (net, c) in enumerate(zip(self.slabs, controls)):
            traj = net.forward(F, c, tape=tape, groups=self.groups[i])
            trajs.append(traj)
            if i < len(self.projections):
                F = self.projections[i].apply(traj.final)
        return SlabTrajectory(trajs, controls)

    def costate(self, traj: SlabTrajectory, dual_T: np.ndarray, keep: bool = True):
        """Backward through the slabs: each slab's costate solve from the transposed
        projection of the next slab's costate at its first depth point."""
        costates, grads = [None] * len(self.slabs), [None] * len(self.slabs)
        dual = dual_T
        for i in reversed(range(len(self.slabs))):
            # the first slab's costate at depth 0 is not needed (the data are not controls);
            # a later slab's is read through the transfer's transpose, which sums the
            # channel groups the transfer copied: their sums suffice
            initial = (True if keep else "groups") if i > 0 else False
            solved = self.slabs[i].costate(traj.slabs[i], dual, keep=keep, initial=initial)
            costates[i], grads[i] = solved[:2]
            if i > 0:
                dual = self.projections[i - 1].transpose(traj.slabs[i - 1].final, solved[2])
        return (costates if keep else None), SlabControls(grads)

    def tangent(self, traj: SlabTrajectory, dc: SlabControls | None, dF0: np.ndarray | None = None) -> SlabTrajectory:
        """The linearised forward solves in turn, the increment projected at each boundary."""
        out, dF = [], dF0
        for i, net in enumerate(self.slabs):
            tan = net.tangent(traj.slabs[i], None if dc is None else dc[i], dF)
            out.append(tan)
            if i < len(self.projections):
                dF = self.projections[i].tangent(traj.slabs[i].final, tan.final)
        return SlabTrajectory(out, dc)

    def costate_incremental(self, traj: SlabTrajectory, costate: list, tangent: SlabTrajectory, d_dual_T: np.ndarray,
                            gauss_newton: bool = False):
        """The second-order costate solves backward through the slabs (the transfers are
        linear or piecewise linear: their second derivative is zero, so only the
        transposed derivative at the forward state joins them)."""
        hess = [None] * len(self.slabs)
        d_dual = d_dual_T
        for i in reversed(range(len(self.slabs))):
            d_dual, hess[i] = self.slabs[i].costate_incremental(traj.slabs[i], costate[i], tangent.slabs[i], d_dual,
                                                                gauss_newton)
            if i > 0:
                d_dual = self.projections[i - 1].transpose(traj.slabs[i - 1].final, d_dual)
        return d_dual, SlabControls(hess)

    def reduce(self, c: SlabControls):
        """Sum the shared kernels' gradient parts over the node ranks (every slab's)."""
        for net, ci in zip(self.slabs, c):
            net.kernel.reduce(ci.b)

    # ---- the readout: the last slab's, or the classes readout of the pooled state
    def readout(self, F, readout: Readout):
        if self.pool is None:
            return self.slabs[-1].readout(F, readout)
        return classes_output(self.space, self.pool.apply(F), readout.W, readout.mu)

    def readout_tangent(self, F, dF, readout, d_readout):
        if self.pool is None:
            return self.slabs[-1].readout_tangent(F, dF, readout, d_readout)
        return classes_tangent(self.space, self.pool.apply(F), self.pool.tangent(F, dF), readout, d_readout)

    def readout_adjoint(self, F, readout, gO):
        if self.pool is None:
            return self.slabs[-1].readout_adjoint(F, readout, gO)
        dual, dr = classes_adjoint(self.space, self.pool.apply(F), readout, gO)
        return self.pool.transpose(F, dual), dr

    def readout_second(self, F, dF, readout, d_readout, gO):
        if self.pool is None:
            return self.slabs[-1].readout_second(F, dF, readout, d_readout, gO)
        dual, dW = classes_second(self.space, self.pool.tangent(F, dF), d_readout, gO)
        return self.pool.transpose(F, dual), dW

    def predict(self, F, readout):
        if self.pool is None:
            return self.slabs[-1].predict(F, readout)
        return softmax(self.readout(F, readout), axis=0)

    def make_readout(self, kind: str = "classes", W=0.0, mu=0.0, K: int | None = None) -> Readout:
        if self.pool is None:
            return self.slabs[-1].make_readout(kind, W, mu, K)
        if kind != "classes":
            raise InputError(f"a pooled readout is a classes readout, not {kind!r}")
        return classes_readout(self.space, W, mu, K)

    def destroy(self):
        for net in self.slabs:
            net.destroy()

