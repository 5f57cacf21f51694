"""The local kernel's geometry: kappa's Q1 basis at the pairs' offsets (nodal rule), its
exact averages over pairs of box cells (exact rule), the cells' widths and extent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.core.kernel.base import _mpi

if TYPE_CHECKING:
    from fem_dnn.core.nodes import NodeSpace

__all__ = ["box_basis", "box_widths", "cell_extent", "q1_basis"]


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


def trapezoid_factors(points: np.ndarray, radius: float) -> np.ndarray:
    """``(p,)``: the composite trapezoid rule's weight factor of an offset on the support
    box ``[-radius, radius]^d``: 1/2 for each axis on which the offset lies on the box's
    face, 1 inside. The nodal rule with these factors (``quadrature="trapezoid"``) weighs
    kappa's jump to zero at the support's edge by its average, as the trapezoid rule
    does, so that the sum over the pairs approximates ``int kappa(y - z) f(z) dz`` to
    second order on every mesh: the same kappa is the same operator at any resolution."""
    on_face = np.abs(np.abs(points) - radius) <= 1e-9 * radius
    return np.prod(np.where(on_face, 0.5, 1.0), axis=1)


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
